"""Generate Python stubs from protos/ into the package that owns each proto.

`protos/llmserve/<svc>/.../v1/x.proto` becomes `llmserve.<svc>....v1.x_pb2`, which the
package layout (pyproject's package-dir) maps to `services/<svc>/.../v1/` (or
`libs/common/v1/` for llmserve.common), so generated imports work without path tricks.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OWNERS = {
    "common": ROOT / "libs" / "common",
    "gateway": ROOT / "services" / "gateway",
    "scheduler": ROOT / "services" / "scheduler",
    "worker": ROOT / "services" / "worker",
    "monitor": ROOT / "services" / "monitor",
}


def main() -> int:
    files = sorted(str(p.relative_to(PROTOS)) for p in PROTOS.rglob("*.proto"))
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as tmp:
        args = ["protoc", f"-I{PROTOS}", f"-I{well_known}", f"--python_out={tmp}",
                f"--pyi_out={tmp}", f"--grpc_python_out={tmp}", *files]
        if protoc.main(args) != 0:
            print("protoc failed", file=sys.stderr)
            return 1
        for generated in Path(tmp, "llmserve").rglob("*.py*"):
            rel = generated.relative_to(Path(tmp, "llmserve"))
            dest = OWNERS[rel.parts[0]].joinpath(*rel.parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(generated, dest)
            # Every directory between the owner and the stub must be a package.
            for parent in dest.parents:
                if parent == OWNERS[rel.parts[0]]:
                    break
                (parent / "__init__.py").touch()
    print(f"generated stubs for {len(files)} protos")
    return 0


if __name__ == "__main__":
    sys.exit(main())
