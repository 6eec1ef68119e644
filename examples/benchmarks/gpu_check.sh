#!/usr/bin/env bash
# A GPU check in at most 5 minutes: on a CUDA device, bf16 (autocast) utilisation of each base-size training step
# against the device's bf16 matmul ceiling measured in the same run, FLOPs per step, peak memory with and without
# gradient checkpointing, then 100 base-size steps per model that must lower its loss. Without CUDA it runs the
# same checks at tiny size in fp32 on CPU (what the test suite runs), so the script is known to work before a GPU
# is lent.
#
#   bash examples/benchmarks/gpu_check.sh                    # cuda if present, else cpu
#   DEVICE=cpu STEPS=20 bash examples/benchmarks/gpu_check.sh --models e2 --batch 8
#
# Extra arguments go to bench_throughput.py. Exit status: non-zero if a loss did not fall or the run failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON="${PYTHON:-python}"
DEVICE="${DEVICE:-$("$PYTHON" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")')}"
if [ "$DEVICE" = "cuda" ]; then
    SIZE=base DTYPE=bf16 STEPS="${STEPS:-100}" BATCH="${BATCH:-64}"
    "$PYTHON" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"{p.name}, {p.total_memory / 2**30:.0f} GiB")'
else
    SIZE=tiny DTYPE=fp32 STEPS="${STEPS:-60}" BATCH="${BATCH:-16}"
fi
echo "gpu_check: device $DEVICE, size $SIZE, $DTYPE, $STEPS steps per model"
timeout "${GPU_CHECK_TIMEOUT:-300}" "$PYTHON" examples/benchmarks/bench_throughput.py \
    --sizes "$SIZE" --device "$DEVICE" --dtype "$DTYPE" --batch "$BATCH" --batch-base "$BATCH" \
    --repeats 3 --base-repeats 3 --utilisation --loss_steps "$STEPS" "$@"
