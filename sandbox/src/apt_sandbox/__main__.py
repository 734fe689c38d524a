"""``python -m apt_sandbox`` runs the same command line as ``apt sandbox``."""

import sys

from apt_sandbox.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
