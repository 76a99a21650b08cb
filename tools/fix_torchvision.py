"""Make torchvision importable when its compiled ops do not match the installed torch.

PyPI's torchvision 0.28.0 is a CUDA build; on a CPU-only torch its extension does not load and
``import torchvision`` dies in ``_meta_registrations.py`` because two fake-kernel registrations
(``nms``, ``qnms``) are unguarded. timm imports torchvision unconditionally (and mmseg imports
timm), so this would break both. When -- and only when -- the import fails that way, this turns
those two registrations into the guarded ``@register_meta`` form already used for every other op
in that file. pvt_mm itself never uses torchvision's ops.
"""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

FAILING_IMPORT = "import torchvision"
PATTERN = re.compile(r'@torch\.library\.register_fake\("torchvision::(nms|qnms)"\)')


def _imports() -> tuple[bool, str]:
    proc = subprocess.run([sys.executable, "-c", FAILING_IMPORT], capture_output=True, text=True)
    return proc.returncode == 0, proc.stderr


def main() -> int:
    ok, err = _imports()
    if ok:
        print("torchvision imports cleanly; nothing to do")
        return 0
    if "torchvision::nms" not in err and "torchvision::qnms" not in err:
        print(err, file=sys.stderr)
        print("torchvision fails to import for an unknown reason (see above)", file=sys.stderr)
        return 1
    spec = importlib.util.find_spec("torchvision")
    assert spec is not None and spec.origin is not None
    path = Path(spec.origin).parent / "_meta_registrations.py"
    text = path.read_text()
    patched, count = PATTERN.subn(r'@register_meta("\1")', text)
    if count == 0:
        print(err, file=sys.stderr)
        print(f"{path}: expected nms/qnms fake registrations not found", file=sys.stderr)
        return 1
    path.write_text(patched)
    ok, err = _imports()
    if not ok:
        print(err, file=sys.stderr)
        return 1
    print(f"patched {count} registrations in {path}; torchvision imports now")
    return 0


if __name__ == "__main__":
    sys.exit(main())
