"""Generate the Python modules for packcache's containerd .proto files (run by ``make``).

    python tests/generate_containerd_api.py

A build tool, outside the package: packcache itself never imports grpc_tools.

Generated at build time rather than committed so the code always matches the installed
protobuf runtime (generated code refuses to import with a protobuf older than its protoc).
"""

from __future__ import annotations

import sys
from pathlib import Path

# The repository root: protos import each other by their path from here, so the generated
# modules import each other as ``packcache.transports.containerd_api.*``.
ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "packcache/transports/containerd_api"
PROTOS = (
    "descriptor.proto",
    "content.proto",
    "images.proto",
    "leases.proto",
    "namespaces.proto",
)


def generate() -> None:
    import importlib.resources

    from grpc_tools import protoc

    well_known = importlib.resources.files("grpc_tools") / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *(str((HERE / name).relative_to(ROOT)) for name in PROTOS),
    ]
    if protoc.main(args) != 0:
        sys.exit("packcache: error: protoc failed on the containerd .proto files")


if __name__ == "__main__":
    generate()
