#!/usr/bin/env bash
# The asv suite's cost per vLLM commit on one GPU: Mixtral, the full default grid (18 batch sizes x
# 3 dtypes x 6 implementations x warm/cold L2 x 4 tracks = 2592 parameter combinations), vllm-ops
# timed from vLLM 0.33.0's kernel library (the device has no vLLM), in this environment.
#   1. launch_method forkserver (asv.conf.json's): the whole suite, one commit, wall time, and per
#      class the grid measurement (setup_cache, once) and the cost per combination (asv's records);
#   2. launch_method spawn: the same grid, one track (324 combinations), for its per-combination cost;
#   3. the design this suite replaces, where every combination does its own GPU work: the start-up
#      of such a process (spawn) and of such a fork (scripts/asv_cost.py probe).
# Writes $OUT/asv.tgz (logs, asv results, cost reports) and prints the summary.
#
# The device has no asv: carry these 8 wheels (~0.7 MB: what asv run/publish/check/machine need
# there beyond its own packages; its own folder, so that other carried wheels don't come along).
# On this machine, in the repo root:
#   echo /.whl-asv/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl-asv asv==0.6.6 asv_runner==0.3.2 json5==0.17.3 tabulate==0.10.0 \
#     importlib_metadata==10.2.0 zipp==4.1.2 lazy_importer==0.1.0 packaging==26.4
# Then: run(command="bash scripts/gpu_asv.sh", carry=[".whl-asv", ".vllm-ops/0.33.0"], timeout_s=600)
set -uo pipefail
source scripts/device_asv_env.sh
export MOEBENCH_VLLM_OPS_LIBRARY=$PWD/.vllm-ops/0.33.0/_moe_C_stable_libtorch.abi3.so
FINAL=${OUT:-out}
W=$(mktemp -d)/asv
mkdir -p "$W" "$FINAL"
{ python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv
  nproc; python3 -m asv --version; } 2>&1 | tee "$W/device.txt"

timed() {  # timed NAME CMD...: run, log to $W/NAME.log, append the wall seconds to $W/wall.txt
  local name=$1; shift
  local t0=$EPOCHREALTIME
  "$@" > "$W/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc wall_s=$(awk "BEGIN {print $EPOCHREALTIME - $t0}")" | tee -a "$W/wall.txt"
}

timed forkserver python3 -m moebench.asvlocal --work "$W/forkserver" --machine gpu --no-publish \
  --launch-method forkserver
python3 scripts/asv_cost.py report "$W/forkserver/results" | tee "$W/forkserver-cost.txt"

timed spawn env MOEBENCH_L2=warm timeout 300 python3 -m moebench.asvlocal --work "$W/spawn" \
  --machine gpu --no-publish --launch-method spawn --bench 'WarmL2\.track_permute\('
python3 scripts/asv_cost.py report "$W/spawn/results" | tee "$W/spawn-cost.txt"

python3 scripts/asv_cost.py probe --n 6 --device cuda | tee "$W/probe.json"

# What was measured: the warm permute table of the forkserver run (measured rows only).
sed -n '/moe.WarmL2.track_permute  /,/moe.WarmL2.track_permute_vs_floor/p' "$W/forkserver.log" |
  grep -v -e "n/a" -e "For parameters" -e "asv: skipped" -e "^ *$" | head -70
rm -rf "$W"/*/env
tar -czf "$FINAL/asv.tgz" -C "$(dirname "$W")" asv
cat "$W/wall.txt"
