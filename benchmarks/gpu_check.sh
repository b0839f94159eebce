#!/usr/bin/env bash
# GPU check (issues 14, 22, 23): train Digits on CUDA for 2 epochs (the pure teacher, and an RKD
# student at alpha 0.95 from it), then run bench_pack.py and bench_kd_step.py on the GPU and
# print their figures. Run from the repository root on a machine with a CUDA device:
#     bash benchmarks/gpu_check.sh [WORKDIR]
# Exit status: non-zero when a run does not complete or a benchmark fails.
set -euo pipefail

workdir="${1:-$(mktemp -d -t kdlab-gpu-check.XXXXXX)}"
python="${PYTHON:-python}"
export PYTHONPATH="${PWD}/src${PYTHONPATH:+:${PYTHONPATH}}"

"$python" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: PyTorch sees no CUDA device here")
print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
      f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}")
PY

common=(--dataset Digits --seed 0 --epochs 2 --batch-size 128 --device cuda
        --experiments-dir "$workdir/experiments" --data-root "$workdir/data" --quiet)
echo "== pure ResNet20 (teacher), 2 epochs, precision auto"
"$python" -m kdlab train --model ResNet20 "${common[@]}"
echo "== rkd ResNet8 from it, alpha 0.95, 2 epochs"
"$python" -m kdlab train --model ResNet8 --distillation rkd --teacher-model ResNet20 \
    --alpha 0.95 "${common[@]}"
"$python" - "$workdir/experiments" <<'PY'
import json, pathlib, sys
for status_path in sorted(pathlib.Path(sys.argv[1]).rglob("status.json")):
    status = json.loads(status_path.read_text())
    metrics = json.loads((status_path.parent / "metrics.json").read_text())
    print(f"{status['run']}: {status['status']}, test_acc {metrics['test_acc']}, "
          f"epoch seconds {[round(s, 2) for s in metrics['epoch_seconds']]}, "
          f"skipped steps {metrics['skipped_steps']}")
PY

echo "== bench_pack.py (ResNet56 students, ResNet110 teacher, B=128)"
"$python" benchmarks/bench_pack.py --device cuda --sizes 1,6,18 --rounds 10
echo "== bench_kd_step.py"
"$python" benchmarks/bench_kd_step.py --device cuda --rounds 10
echo "== bench_models.py (every model: parameters, MACs, one step's time and memory; channels_last, bf16)"
"$python" benchmarks/bench_models.py --device cuda --rounds 5
