"""`python -m blendrt ...`: the `blendrt` command, for when its script is not on PATH."""

import sys

from blendrt.cli import main

if __name__ == "__main__":
    sys.exit(main())
