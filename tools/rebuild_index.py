"""Rebuild the usearch index from the LMDB store (ops): the same as `neardup index rebuild`.

  python tools/rebuild_index.py --data-dir DIR [--dtype i8] [--keep 2] [--nice 10] [--quiet]

Safe while the service serves and enrols; see service/storage/snapshots.py for how.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.cli import main  # noqa: E402

if __name__ == "__main__":
    main(["index", "rebuild", *sys.argv[1:]])
