"""Build the background set for the "normalized" decision rule from images known not to be enrolled.

  python -m tools.build_background --images DIR --data-dir DIR [--server HOST:PORT] [--token ... --tls-ca ...]

Hashes every image through the running service (as a Check would: Stats.views_per_check views)
and writes DATA_DIR/background.npz with the service's model identity. The service reads it at
start-up; restart it after building.
"""

import argparse
from pathlib import Path

import numpy as np
from tqdm import tqdm

from service.api.channels import add_client_arguments, stub_from
from service.client import image_paths
from service.proto.neardup.v1 import neardup_pb2 as pb
from service.storage.background import Background


def build_background(stub, paths: list[Path], data_dir: Path, progress: bool = True) -> Path:
    stats = stub.Stats(pb.StatsRequest(), timeout=10)
    features = []
    for path in tqdm(paths, unit="img", desc="background", disable=not progress):
        reply = stub.Hash(pb.HashRequest(image=path.read_bytes(), views=stats.views_per_check), timeout=120)
        features.append(reply.feature)
    return Background.save(data_dir, np.array(features, np.float32), f"{stats.model}@{stats.input_size}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="a folder, or a file listing image paths")
    parser.add_argument("--data-dir", type=Path, required=True, help="the service's --data-dir")
    add_client_arguments(parser)
    arguments = parser.parse_args()
    paths = image_paths(arguments.images).paths
    written = build_background(stub_from(arguments), paths, arguments.data_dir)
    print(f"{len(paths)} background features -> {written}; restart the service to use them")


if __name__ == "__main__":
    main()
