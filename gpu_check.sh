#!/usr/bin/env bash
# The GPU check, one call on a lent machine (one NVIDIA H200 there: python3 with torch and transformers, no tinygrad,
# no network): installs the carried tinygrad wheel when tinygrad is missing, runs bench_generate.py (TinyLlama-1.1B's
# shape, fp16, against transformers: prefill chunk sizes, decode kernels on and off), bench_train.py (134M parameters,
# bf16, batch 8x1024, against transformers with autocast and fused AdamW) and the model tests on the GPU, each under a
# time cap taken from one overall budget, then prints ONE table (workload | ours | anchor | ratio), a row per step
# even when it failed. Logs and the table go to $OUT (or /tmp/gpu_check).
#   ./gpu_check.sh --wheels     here, once: download the tinygrad wheel (requirements.txt's pin) into .whl/
#   ./gpu_check.sh              on the GPU machine (DEV=CUDA by default: DEV=NV does not start on Hopper in 0.14)
#   DEV=CPU ./gpu_check.sh --tiny --budget 1500 --python ../gpuvenv/bin/python    the same steps, CPU-sized
set -uo pipefail
cd "$(dirname "$0")"
tiny=0 budget=470 py=python3
while [ $# -gt 0 ]; do
  case "$1" in
    --tiny) tiny=1 ;;
    --budget) budget="$2"; shift ;;
    --python) py="$2"; shift ;;
    --wheels) exec python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
                -d .whl "$(grep -m1 '^tinygrad==' requirements.txt)" ;;
    *) echo "gpu_check.sh: unknown option $1 (--tiny, --budget SECONDS, --python PATH, --wheels)" >&2; exit 2 ;;
  esac
  shift
done
export DEV="${DEV:-CUDA}" PYTHONUNBUFFERED=1
out="${OUT:-/tmp/gpu_check}"
mkdir -p "$out"
end=$((SECONDS + budget))

if ! "$py" -c "import tinygrad" 2>/dev/null; then
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || {
    echo "gpu_check.sh: no tinygrad here and no wheel in .whl/ that installs (./gpu_check.sh --wheels; carry .whl)"
    exit 1; }
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
echo "== $(date -u +%FT%TZ) DEV=$DEV, budget ${budget} s $(command -v nvidia-smi >/dev/null && nvidia-smi -L | head -1)"
"$py" -c "import sys, numpy, tinygrad, torch, transformers
print('python', sys.version.split()[0], '| tinygrad', tinygrad.__file__, '| numpy', numpy.__version__,
      '| torch', torch.__version__, '| transformers', transformers.__version__)" 2>&1 | tail -1

rows=()   # the table's rows, in step order
# step NAME CAP COMMAND...: COMMAND under min(CAP, what is left of the budget), its output on the screen and in
# $out/NAME.log; its table rows (lines starting '| ', headers left out), or one row saying how it ended
step() {
  local name="$1" cap="$2" left=$((end - SECONDS)); shift 2
  [ "$cap" -gt "$left" ] && cap=$left
  if [ "$cap" -lt 20 ]; then rows+=("| $name | skipped: the budget was spent | - | - |"); return; fi
  echo "== $name (at most $cap s): $*"
  timeout -k 10 "$cap" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]} found last
  found=$(grep '^| ' "$out/$name.log" | grep -v -e '^| workload |' -e '^|---')
  [ -n "$found" ] && while IFS= read -r line; do rows+=("$line"); done <<< "$found"
  last=$(grep -v '^\s*$' "$out/$name.log" | tail -1 | cut -c1-150 | tr '|' '/')
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then rows+=("| $name | timed out after $cap s (see $name.log) | - | - |")
  elif [ "$rc" -ne 0 ]; then rows+=("| $name | failed, exit $rc: $last | - | - |")
  elif [ -z "$found" ]; then rows+=("| $name on $DEV | $(echo "$last" | tr -d '=' | xargs) | - | - |"); fi
}

if [ "$tiny" -eq 1 ]; then
  step generate 900 "$py" bench_generate.py --shape tiny --prompt-tokens 64 -n 8 --runs 3 --chunks 16,64 \
    --decode-kernels both --time-limit 600
  step train 600 "$py" bench_train.py --torch --preset tiny --vocab-size 512 --batch-size 4 --seq-len 64 --steps 3 \
    --time-limit 400
  step tests 600 "$py" -m pytest -q -x tests/test_model.py -k "rope or rmsnorm"
else
  step generate 250 "$py" bench_generate.py --shape tinyllama --prompt-tokens 512 -n 64 --runs 5 --chunks 32,512 \
    --decode-kernels both --time-limit 170
  step train 140 "$py" bench_train.py --torch --dim 768 --n-layers 12 --n-heads 12 --vocab-size 32000 \
    --dtype bfloat16 --batch-size 8 --seq-len 1024 --steps 10 --time-limit 100
  step tests 240 "$py" -m pytest -q -x tests/test_model.py
fi

{ echo "== summary: DEV=$DEV, $(date -u +%FT%TZ), $SECONDS s of the ${budget} s budget"
  echo "| workload | ours | anchor | ratio |"
  echo "|---|---|---|---|"
  printf '%s\n' "${rows[@]}"; } | tee "$out/summary.md"
