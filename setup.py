"""Generates the gRPC Python modules from protos/ whenever the package is built or installed, and
puts model_repository/ inside the built package (service/model_repository/), so that an
installed wheel can start the bundled Triton with no checkout beside it."""

import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent
PROTO_ROOT = ROOT / "protos"
OUTPUT = ROOT / "service" / "proto"


def generate_grpc_modules() -> None:
    """protoc into service/proto/, then make the generated imports point inside the package."""
    import grpc_tools
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    OUTPUT.mkdir(exist_ok=True)
    well_known = pathlib.Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/timestamp.proto
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={OUTPUT}",
        f"--pyi_out={OUTPUT}",
        f"--grpc_python_out={OUTPUT}",
    ]
    if protoc.main(args + protos) != 0:
        raise RuntimeError(f"protoc failed on {protos}")
    for generated in OUTPUT.rglob("*.py"):
        text = generated.read_text()
        generated.write_text(text.replace("from neardup.v1 import", "from service.proto.neardup.v1 import"))
    for folder in [OUTPUT, *[p for p in OUTPUT.rglob("*") if p.is_dir()]]:
        (folder / "__init__.py").touch()


class BuildPyWithProtos(build_py):
    def run(self) -> None:
        generate_grpc_modules()
        super().run()
        if not self.editable_mode:  # an editable install reads the checkout's model_repository/
            target = pathlib.Path(self.build_lib) / "service" / "model_repository"
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(ROOT / "model_repository", target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithProtos})
