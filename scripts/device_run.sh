#!/usr/bin/env bash
# The device kit's run.sh (scripts/device_kit.sh copies it into .device-kit/): install geomlab
# from the kit on a lent GPU machine (no network) and run the λ-control checks of issue 20,
# each step under its own time limit, everything logged under $OUT.
#
#   bash .device-kit/run.sh [TOTAL_SECONDS]      # device tool: carry [".device-kit"], timeout 600
#
# Steps (each one's exit status goes to $OUT/steps.tsv; a failure never stops the later steps,
# a step whose time is gone is recorded as SKIP):
#   verify   the kit's SHA256SUMS
#   install  kit wheels + geomlab into $WORK/site (--no-index --no-deps), PYTHONPATH to it;
#            fallback wheels only for requirements the image does not satisfy
#   env      python, torch, CUDA, GPU
#   a-help   geomlab --help, geomlab list, an import check
#   b-*      quick preset of every experiment on $DEVICE, and on cpu for those whose random
#            draws are made on the CPU (all but lambda-control, whose dropout masks come from the
#            device's generator); compare.txt: max abs/rel difference per column
#   c-paper  lambda-control --preset paper on $DEVICE (most of the time)
#   d-seeds5 the same with seeds 0-4, only if time is left
#
# Why not a venv: the image's python3 is itself a venv (/opt/torch/.venv); a venv made from it
# with --system-site-packages sees the *base* interpreter's site-packages, not torch. The kit
# installs with pip --target and puts that folder first on PYTHONPATH instead.
#
# Back in $OUT (at most 8 files come back): steps.tsv, kit.log, compare.txt, quick.tar.gz,
# paper.tar.gz, paper-models.csv, seeds5.tar.gz (run directories without checkpoints).
#
# Run directories live in $WORK (default <repo>/.device-work, ignored by git): a second call on
# the still-warm machine resumes an interrupted paper run (geomlab resumes by config hash).
#
# Environment: GEOMLAB_KIT_LOCAL=1 tests the script on a CPU machine (python from
# GEOMLAB_KIT_PYTHON, only pure-python kit wheels, --device cpu, small budgets);
# KIT_PAPER_SET extra `--set` values for c/d (e.g. "epochs=1 train_limit=2000");
# KIT_QUICK_S (default 150) the budget of the quick presets together; KIT_STEPS the steps to
# run (default "a b c d"); KIT_SEEDS5_MIN_S (default 120) time needed to start step d.
set -u

KIT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$KIT")
BUDGET=${1:-${KIT_BUDGET:-560}}
START=$(date +%s)
LOCAL=${GEOMLAB_KIT_LOCAL:-0}
OUT=${OUT:-/tmp/kit-out}
WORK=${KIT_WORK:-$ROOT/.device-work}
SITE=$WORK/site
STEPS=${KIT_STEPS:-a b c d}
QUICK_S=${KIT_QUICK_S:-150}
SEEDS5_MIN_S=${KIT_SEEDS5_MIN_S:-120}
RESERVE_S=15  # kept back for packing the results
read -r -a PAPER_SET <<<"${KIT_PAPER_SET:-}"

if [ "$LOCAL" = 1 ]; then
  PY=${GEOMLAB_KIT_PYTHON:-python3}
  DEVICE=cpu
  DEVLABEL=dev-cpu  # the "device" runs of step b, told apart from the cpu ones
else
  PY=python3
  DEVICE=cuda
  DEVLABEL=cuda
fi
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/kit.log") 2>&1
# PIP_CONFIG_FILE=/dev/null: no pip configuration of the machine (indexes, constraints) applies
export PIP_CONFIG_FILE=/dev/null PYTHONUNBUFFERED=1 MPLBACKEND=Agg MPLCONFIGDIR=$WORK/mpl GEOMLAB_DATA=$KIT
GEOMLAB=("$PY" -m geomlab.cli)
printf 'step\trc\tseconds\tlimit_s\tnote\n' >"$OUT/steps.tsv"

left() { echo $((BUDGET - ($(date +%s) - START))); }

# step NAME LIMIT_S CMD...: run CMD under `timeout` (at most the time left), record its status.
step() {
  local name=$1 want=$2 limit t0 rc note=""
  shift 2
  limit=$(($(left) - RESERVE_S))
  [ "$want" -lt "$limit" ] && limit=$want
  if [ "$limit" -lt 5 ]; then
    printf '%s\tSKIP\t0\t%s\tno time left\n' "$name" "$limit" >>"$OUT/steps.tsv"
    echo "=== $name: SKIP (no time left)"
    return 0
  fi
  echo "=== $name (limit ${limit}s, $(left)s left in all): $*"
  t0=$(date +%s)
  # through bash -c: the kit's own steps are shell functions (exported below)
  timeout --signal=TERM --kill-after=10 "$limit" bash -c '"$@"' step "$@"
  rc=$?
  [ "$rc" = 124 ] || [ "$rc" = 137 ] && note="timed out"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" "$note" \
    >>"$OUT/steps.tsv"
  echo "=== $name: exit $rc after $(($(date +%s) - t0))s"
}

# pack NAME DIR: DIR's run directories (no checkpoints) as $OUT/NAME.tar.gz
pack() {
  [ -d "$2" ] || return 0
  tar -czf "$OUT/$1.tar.gz" --exclude='*.pt' --exclude=checkpoints -C "$(dirname "$2")" \
    "$(basename "$2")" || echo "packing $1 failed"
}

has() { case " $STEPS " in *" $1 "*) return 0 ;; esac; return 1; }

verify() { (cd "$KIT" && sha256sum --quiet -c SHA256SUMS); }

kit_install() {
  rm -rf "$SITE"
  local wheels=("$KIT"/wheels/*.whl) names
  if [ "$LOCAL" = 1 ] && ! "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))'
  then  # the cp312 wheels do not install on this Python
    mapfile -t wheels < <(ls "$KIT"/wheels/*-none-any.whl)
    echo "local mode: installing only ${#wheels[@]} pure-python kit wheels"
  fi
  "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile \
    --target "$SITE" "${wheels[@]}" "$KIT"/geomlab-*.whl || return 1
  local round name wheel done_=" " added
  for round in 1 2 3; do  # a fallback wheel may need another one
    added=0
    mapfile -t names < <(PYTHONPATH=$SITE "$PY" "$KIT/kit_requirements.py" geomlab 2>/dev/null)
    for name in "${names[@]}"; do
      case "$done_" in *" $name "*) continue ;; esac
      wheel=$(ls "$KIT"/fallback/"${name//-/_}"-*.whl "$KIT"/fallback/"$name"-*.whl \
        2>/dev/null | head -1)
      [ -n "$wheel" ] || continue
      echo "the image lacks a recent enough $name: installing $(basename "$wheel")"
      "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --no-compile --upgrade --target "$SITE" "$wheel" || return 1
      done_+="$name "
      added=1
    done
    [ "$added" = 1 ] || break
  done
  # what is still unsatisfied (and has no kit wheel) is printed, and fails this step
  PYTHONPATH=$SITE "$PY" "$KIT/kit_requirements.py" geomlab | grep . && return 1
  return 0
}

env_info() {
  "$PY" - <<'EOF'
import platform, sys
import torch, numpy, pandas, pydantic
import geomlab
print("python", sys.version.split()[0], sys.executable, platform.machine())
print("geomlab", geomlab.__file__)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available",
      torch.cuda.is_available(), "threads", torch.get_num_threads())
print("numpy", numpy.__version__, "pandas", pandas.__version__, "pydantic", pydantic.__version__)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", p.multi_processor_count, "SMs")
EOF
  local rc=$?
  command -v nvidia-smi >/dev/null && nvidia-smi -L
  return "$rc"
}

import_check() {
  "$PY" -m geomlab.cli --help >/dev/null && "$PY" -m geomlab.cli list || return 1
  "$PY" -c "
import torch, curvlinops, backpack, pydantic, typer
from geomlab import experiments
from geomlab.experiments.lambda_control import experiment
assert '$DEVICE' == 'cpu' or torch.cuda.is_available(), 'CUDA not available'
x = torch.randn(4, 4, device='$DEVICE'); print('import check ok;', (x @ x).device)"
}

lambda_check() {  # which derivative path the paper run used (issue 20: it must be fast)
  local csv=$WORK/paper/models.csv
  [ -f "$csv" ] || { echo "no $csv"; return 1; }
  cp "$csv" "$OUT/paper-models.csv"
  "$PY" -c "
import pandas as pd
t = pd.read_csv('$csv')
print(t.to_string())
print('derivative_method:', sorted(set(t['derivative_method'])))
raise SystemExit(0 if set(t['derivative_method']) == {'fast'} else 1)"
}

export KIT OUT WORK SITE PY DEVICE LOCAL
export -f verify kit_install env_info import_check lambda_check
echo "kit $KIT, out $OUT, work $WORK, budget ${BUDGET}s, device $DEVICE, local $LOCAL"
step verify 30 verify
step install 90 kit_install
export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
step env 30 env_info

if has a; then step a-help 60 import_check; fi

if has b; then
  quick_end=$(($(date +%s) + QUICK_S))
  q() { echo $((quick_end - $(date +%s))); }
  for exp in e1 e3 alignment gradient-rank lambda-control; do
    step "b-$DEVLABEL-$exp" "$(q)" "${GEOMLAB[@]}" run "$exp" --preset quick --device "$DEVICE" \
      --out "$WORK/quick/$exp-dev" --force
  done
  for exp in e1 e3 alignment gradient-rank; do
    step "b-cpu-$exp" "$(q)" "${GEOMLAB[@]}" run "$exp" --preset quick --device cpu \
      --out "$WORK/quick/$exp-cpu" --force
  done
  {
    for exp in e1 e3 alignment gradient-rank; do
      [ -d "$WORK/quick/$exp-dev" ] && [ -d "$WORK/quick/$exp-cpu" ] \
        && "$PY" "$KIT/compare_runs.py" "$WORK/quick/$exp-dev" "$WORK/quick/$exp-cpu" \
          --label "$exp $DEVICE-vs-cpu" | tail -n +2
    done
  } >"$OUT/compare.txt" 2>&1
  printf 'b-compare\t0\t0\t0\t%s rows in compare.txt\n' "$(wc -l <"$OUT/compare.txt")" \
    >>"$OUT/steps.tsv"
  pack quick "$WORK/quick"
fi

if has c; then
  step c-paper "$(left)" "${GEOMLAB[@]}" run lambda-control --preset paper --device "$DEVICE" \
    --out "$WORK/paper" "${PAPER_SET[@]/#/--set=}"
  step c-derivative-method 20 lambda_check
  pack paper "$WORK/paper"
fi

if has d; then
  if [ "$(left)" -ge "$SEEDS5_MIN_S" ]; then
    step d-seeds5 "$(left)" "${GEOMLAB[@]}" run lambda-control --preset paper \
      --device "$DEVICE" --out "$WORK/paper-seeds5" --set seeds=0,1,2,3,4 \
      "${PAPER_SET[@]/#/--set=}"
    pack seeds5 "$WORK/paper-seeds5"
  else
    printf 'd-seeds5\tSKIP\t0\t0\tless than %ss left\n' "$SEEDS5_MIN_S" >>"$OUT/steps.tsv"
  fi
fi

echo "=== done after $(($(date +%s) - START))s; steps:"
column -t -s $'\t' "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
ls -l "$OUT"
sleep 1  # let tee write the log out
exit 0
