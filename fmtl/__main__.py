"""``python -m fmtl ...``: the same as the ``fmtl`` command."""

import sys

from .train.cli import main

if __name__ == "__main__":
    sys.exit(main())
