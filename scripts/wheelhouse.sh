#!/usr/bin/env bash
# Wheels of what `crucible train` needs beyond a PyTorch image, for a GPU node that has its own
# PyTorch but no package index (a container on an offline cluster). The versions are the ones this
# checkout's .venv runs, so the node trains with what the tests ran.
#
#   scripts/wheelhouse.sh DIR [PYTHON_VERSION]      # e.g. scripts/wheelhouse.sh wheels 3.12
#   EXTRA="pyarrow rich" scripts/wheelhouse.sh ...  # more packages the image lacks
#
# On the node: pip install --no-index --no-deps --target SITE DIR/*.whl, then PYTHONPATH=SITE
# (bench/gpu_suite.sh does this when WHEELS=DIR is set).
set -euo pipefail
dir=${1:?usage: scripts/wheelhouse.sh DIR [PYTHON_VERSION]}
python_version=${2:-3.12}
root=$(cd "$(dirname "$0")/.." && pwd)
py="$root/.venv/bin/python"
[ -x "$py" ] || { echo "wheelhouse: no .venv here; run make setup first" >&2; exit 1; }
# Not in a PyTorch image: the config schema, the parallel layers, the ZeRO optimizer, FP8, the shard
# readers' MinHash and zstd imports.
packages="pydantic pydantic-core annotated-types typing-inspection megatron-core torchao datasketch zstandard hjson"
packages+=" ${EXTRA:-}"
pins=$("$py" - $packages <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}=={version(name)}")
    except PackageNotFoundError:
        sys.exit(f"wheelhouse: {name} is not installed in .venv; run make setup first")
EOF
)
mkdir -p "$dir"
platforms=""
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
    platforms+=" --platform ${tag}_x86_64"
done
# shellcheck disable=SC2086
"$py" -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" $platforms --dest "$dir" $pins
# DeepSpeed is published as source only; its wheel is pure Python (kernels build on first use).
"$py" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$dir" \
    "deepspeed==$("$py" -c 'from importlib.metadata import version; print(version("deepspeed"))')"
echo "wheelhouse: $(ls "$dir"/*.whl | wc -l) wheels for Python $python_version in $dir ($(du -sh "$dir" | cut -f1))"
