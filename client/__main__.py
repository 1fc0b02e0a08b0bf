"""``python -m client``: see ``python -m client --help``."""

import sys

from client.cli import main

if __name__ == "__main__":
    sys.exit(main())
