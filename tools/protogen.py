"""Regenerate flowpipe/api from proto/ (run by `make protos`; a test checks for drift)."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
API_DIR = ROOT / "flowpipe" / "api"
PACKAGES = ("flow", "relay", "peer", "observer")

# protoc emits absolute imports (`from flow import flow_pb2`) that only work with proto/ on
# sys.path; rewriting them to package imports keeps the generated code inside flowpipe.api.
_IMPORT_RE = re.compile(r"^from (" + "|".join(PACKAGES) + r")([. ])", re.MULTILINE)

HEADER = "# Generated from proto/ by `make protos` (tools/protogen.py). Do not edit.\n"


def proto_files(proto_dir: Path = PROTO_DIR) -> list[Path]:
    """All .proto files under proto_dir, in a stable order."""
    return sorted(proto_dir.glob("*/*.proto"))


def generate(out_dir: Path, proto_dir: Path = PROTO_DIR) -> list[Path]:
    """Compile every proto into out_dir as importable flowpipe.api modules; return written files."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = Path(protoc.__file__).parent / "_proto"
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            "protoc",
            f"-I{proto_dir}",
            f"-I{include}",
            f"--python_out={tmp}",
            f"--pyi_out={tmp}",
            f"--grpc_python_out={tmp}",
            *[str(p.relative_to(proto_dir)) for p in proto_files(proto_dir)],
        ]
        rc = protoc.main(args)
        if rc != 0:
            raise RuntimeError(f"protoc failed with exit code {rc}")
        written = []
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "__init__.py").write_text(
            HEADER + '"""Generated Hubble API v1 protobuf modules."""\n'
        )
        written.append(out_dir / "__init__.py")
        for src in sorted(Path(tmp).rglob("*.py*")):
            rel = src.relative_to(tmp)
            dst = out_dir / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            pkg_init = dst.parent / "__init__.py"
            if not pkg_init.exists():
                pkg_init.write_text(HEADER)
                written.append(pkg_init)
            text = _IMPORT_RE.sub(r"from flowpipe.api.\1\2", src.read_text())
            dst.write_text(HEADER + text)
            written.append(dst)
        return written


def regenerate() -> list[Path]:
    """Replace flowpipe/api with freshly generated code."""
    if API_DIR.exists():
        shutil.rmtree(API_DIR)
    return generate(API_DIR)


if __name__ == "__main__":
    for path in regenerate():
        print(path.relative_to(ROOT))
