#!/usr/bin/env bash
# GPU check, prepared to finish in under ten minutes on one NVIDIA machine: the model, loader and parallel tests on
# the GPU, the training benchmark, decode/prefill speed, and a 2-device dp/tp step when there are two GPUs.
#   ./gpu_check.sh            (DEV=NV by default; DEV=CUDA ./gpu_check.sh for the CUDA backend)
set -uo pipefail
cd "$(dirname "$0")"
export DEV="${DEV:-NV}"
PY="${PY:-python3}"
F=../shared/fixtures
n=$("$PY" -c "from tinygrad import Device; import itertools
c=0
for i in range(8):
  try: Device[f'$DEV:{i}']; c+=1
  except Exception: break
print(c)")
echo "== $DEV: $n device(s)"
timeout 240 "$PY" -m pytest -q -x tests/test_model.py tests/test_load.py -k "not fuzz" 2>&1 | tail -3
timeout 120 "$PY" bench_train.py --steps 5
timeout 120 "$PY" bench_train.py --preset 15M --batch-size 16 --seq-len 256 --steps 3
timeout 90 "$PY" generate.py $F/smollm2-135m-instruct-q4_1.gguf -n 64 -t 0 --benchmark 2>&1 | tail -3
if [ "$n" -ge 2 ]; then
  for mode in dp tp; do timeout 90 "$PY" train.py --preset tiny --max-steps 3 --sample-tokens 0 --devices "$DEV:0,$DEV:1" --parallel $mode --out /tmp/gpu_$mode 2>&1 | tail -1; done
fi
