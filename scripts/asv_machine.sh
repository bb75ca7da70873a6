#!/usr/bin/env bash
# Register this runner as an asv machine and print its name (the nightly workflow's first step).
#
# The name is what keeps histories apart: results are compared only within one machine, so it
# says which runner and which GPUs measured them: "<runner>-<count>x<gpu>", e.g.
# "gpu-box-1-1xNVIDIA-H100-80GB-HBM3". Pass a name to override it (the workflow's `machine` input).
# Usage: scripts/asv_machine.sh [NAME]   (asv from $ASV, default .venv/bin/asv)
set -euo pipefail
ASV=${ASV:-.venv/bin/asv}

gpus=$(nvidia-smi --query-gpu=name --format=csv,noheader)
count=$(printf '%s\n' "$gpus" | wc -l)
gpu=$(printf '%s\n' "$gpus" | head -n 1)
name=${1:-}
if [ -z "$name" ]; then
  name="${RUNNER_NAME:-$(hostname)}-${count}x${gpu}"
fi
# asv uses the name as a directory under results/: keep it to one path-safe word.
name=$(printf '%s' "$name" | tr -cs 'A-Za-z0-9._-' '-' | sed 's/^-*//; s/-*$//')

cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n 1)
ram=$(awk '/^MemTotal:/ {printf "%d GB", $2 / 1048576}' /proc/meminfo)
"$ASV" machine --yes --machine "$name" --os "$(uname -sr)" --arch "$(uname -m)" \
  --cpu "$cpu; GPU: $count x $gpu" --num_cpu "$(nproc)" --ram "$ram" >&2
echo "$name"
