"""Regenerate the Python code in gateway/proto from the .proto files beside this script.

    python schema/generate.py gateway/proto

protoc comes from grpcio-tools (pinned in pyproject.toml, so the output is reproducible);
type stubs come from mypy-protobuf. Generated modules import each other as
``gateway.proto.<name>_pb2`` so the package needs no sys.path tricks.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCHEMA = Path(__file__).resolve().parent
PACKAGE = "gateway.proto"
_IMPORT = re.compile(r"^from osmium\.client import (\w+_pb2)", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    protos = sorted((SCHEMA / "osmium" / "client").glob("*.proto"))
    plugin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{SCHEMA}",
            f"--python_out={tmp}", f"--mypy_out={tmp}",
            f"--plugin=protoc-gen-mypy={plugin_dir / 'protoc-gen-mypy'}",
            *[str(p.relative_to(SCHEMA)) for p in protos],
        ]
        subprocess.run(cmd, check=True, cwd=SCHEMA, capture_output=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        written = []
        for src in sorted((Path(tmp) / "osmium" / "client").iterdir()):
            text = _IMPORT.sub(rf"from {PACKAGE} import \1", src.read_text())
            dst = out_dir / src.name
            dst.write_text(text)
            written.append(dst)
    init = out_dir / "__init__.py"
    init.write_text('"""Generated from schema/ by schema/generate.py; never edit by hand."""\n')
    written.append(init)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: generate.py OUT_DIR")
    target = Path(sys.argv[1])
    for stale in target.glob("*_pb2.py*"):
        stale.unlink()
    for path in generate(target):
        print(path)
    shutil.rmtree(target / "__pycache__", ignore_errors=True)
