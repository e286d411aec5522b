"""The model side: networks, their weights files and the scorers the engine calls (one interface)."""
