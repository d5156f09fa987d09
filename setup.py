"""Generates the gRPC Python modules from protos/ whenever the package is built or installed."""

import pathlib

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = pathlib.Path(__file__).parent
PROTO_ROOT = ROOT / "protos"
OUTPUT = ROOT / "service" / "proto"


def generate_grpc_modules() -> None:
    """protoc into service/proto/, then make the generated imports point inside the package."""
    from grpc_tools import protoc

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    OUTPUT.mkdir(exist_ok=True)
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
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


setup(cmdclass={"build_py": BuildPyWithProtos})
