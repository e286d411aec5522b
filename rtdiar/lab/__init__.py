"""The lab: training, evaluation on unseen people, composite meetings and benchmarks; not on the live path."""
