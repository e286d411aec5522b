"""`python -m rtdiar` is the `rtdiar` command."""

import sys

from rtdiar.cli import main

sys.exit(main())
