"""Rebuild the usearch index from the LMDB store (ops): the same as `neardup index rebuild`.

  python -m tools.rebuild_index --data-dir DIR [--dtype i8] [--keep 2] [--nice 10] [--quiet]

Safe while the service serves and enrols; see service/storage/snapshots.py for how.
"""

import sys

from service.cli import main

if __name__ == "__main__":
    main(["index", "rebuild", *sys.argv[1:]])
