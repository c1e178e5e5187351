"""Regenerates the Python code for protos/ into imgsim/v1/ (and the protoset ghz can load from
loadtest/imgsim.protoset), or with --check fails when any of it is stale.

    python scripts/gen_protos.py          # regenerate
    python scripts/gen_protos.py --check  # exit 1 if the committed output differs from what protoc makes

The output is committed so that installing the client needs no protoc. Never edit it by hand.
"""

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE_DIR = Path("imgsim") / "v1"
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")
PROTOSET = Path("loadtest") / "imgsim.protoset"


def generate(out_dir: Path) -> list[Path]:
    """Runs protoc on every .proto under protos/imgsim/v1 and returns the files it wrote, relative to out_dir."""
    protos = sorted((PROTO_ROOT / PACKAGE_DIR).glob("*.proto"))
    include = Path(protoc.__file__).parent / "_proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}", f"--pyi_out={out_dir}",
            f"--grpc_python_out={out_dir}"] + [str(p) for p in protos]
    (out_dir / PROTOSET).parent.mkdir(parents=True, exist_ok=True)
    descriptor_set = ["protoc", f"-I{PROTO_ROOT}", f"-I{include}", "--include_imports",
                      f"--descriptor_set_out={out_dir / PROTOSET}"] + [str(p) for p in protos]
    if protoc.main(args) != 0 or protoc.main(descriptor_set) != 0:
        sys.exit("protoc failed")
    code = [p.relative_to(out_dir) for p in (out_dir / PACKAGE_DIR).iterdir() if p.name.endswith(GENERATED_SUFFIXES)]
    return sorted(code) + [PROTOSET]


def committed_files() -> list[Path]:
    code = [p.relative_to(ROOT) for p in (ROOT / PACKAGE_DIR).iterdir() if p.name.endswith(GENERATED_SUFFIXES)]
    return sorted(code) + ([PROTOSET] if (ROOT / PROTOSET).exists() else [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    if not args.check:
        for stale in committed_files():
            (ROOT / stale).unlink()
        print("\n".join(str(p) for p in generate(ROOT)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
        differing = [str(p) for p in fresh if not (ROOT / p).exists() or not filecmp.cmp(Path(tmp) / p, ROOT / p, shallow=False)]
        extra = [str(p) for p in committed_files() if p not in fresh]
    if differing or extra:
        sys.exit(f"generated code is stale: {differing + extra}; run python scripts/gen_protos.py")
    print(f"generated code is up to date ({len(fresh)} files)")


if __name__ == "__main__":
    main()
