#!/usr/bin/env bash
# Issue 5's GPU must-show: `moebench alerts` over real asv runs of the real suite on one GPU: no
# alarm over same-code runs, an alarm on a kernel slowed by ~5 % (scripts/gpu_alerts.py says how).
# Carry the asv wheels and vLLM 0.24.0's kernel library with its moe_permute_unpermute.py:
#   run(command="bash scripts/gpu_alerts.sh", carry=[".whl-asv", ".vllm-ops/0.24.0"], timeout_s=600)
# Writes $OUT/summary.json and $OUT/alerts-gpu.tgz.
set -uo pipefail
source scripts/device_asv_env.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
python3 scripts/gpu_alerts.py --release .vllm-ops/0.24.0 --out "${OUT:-out}" "$@"
