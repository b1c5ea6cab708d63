"""``python -m fuseline.worker``: run a worker (see :mod:`fuseline.worker.cli`)."""

import sys

from fuseline.worker.cli import main

if __name__ == "__main__":
    sys.exit(main())
