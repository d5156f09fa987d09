"""Migrate a seed database (hash_database.npz or .h5 plus image_list.txt) into a running service.

  python -m tools.import_seed_db --database hash_database.npz --list image_list.txt [--server HOST:PORT ...]

The seed stored ImageNet ResNet50 features; ours are SSCD descriptors, a different space, so the
stored features cannot be reused: every listed image is re-enrolled from its file, with the path
as listed as its key. The database is read only to check that it matches the list. Prints a
progress bar and a summary of what failed (missing or unreadable files, invalid images).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from service.api.channels import add_client_arguments, stub_from
from service.client import enroll


def seed_rows(database: Path) -> int:
    """Rows of the seed's feature matrix (`feats`, N x D), from .npz or .h5."""
    if database.suffix == ".npz":
        with np.load(database) as data:
            return len(data["feats"])
    if database.suffix in (".h5", ".hdf5"):
        try:
            import h5py
        except ImportError:
            raise SystemExit("reading a .h5 seed database needs h5py: pip install h5py") from None
        with h5py.File(database, "r") as data:
            return len(data["feats"])
    raise SystemExit(f"{database}: expected a .npz or .h5 seed database")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", type=Path, required=True, help="the seed's hash_database.npz or .h5")
    parser.add_argument("--list", type=Path, required=True, help="the seed's image_list.txt, one path a line")
    parser.add_argument("--root", type=Path, help="resolve relative paths here (default: the list's folder)")
    add_client_arguments(parser)
    arguments = parser.parse_args()

    keys = [line.strip() for line in arguments.list.read_text().splitlines() if line.strip()]
    rows = seed_rows(arguments.database)
    if rows != len(keys):
        print(f"warning: {arguments.database} has {rows} rows but {arguments.list} lists {len(keys)} images")
    print(f"re-enrolling {len(keys)} images: the seed's ResNet50 features are not SSCD features and cannot be reused")
    root = arguments.root or arguments.list.parent
    items = [(key, Path(key) if Path(key).is_absolute() else root / key) for key in keys]
    summary = enroll(stub_from(arguments), items, total=len(items))
    for key, why in summary.failures:
        print(f"failed: {key}: {why}")
    print(summary.line())
    sys.exit(1 if summary.failures else 0)


if __name__ == "__main__":
    main()
