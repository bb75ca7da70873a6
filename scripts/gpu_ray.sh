#!/usr/bin/env bash
# The 2-GPU must-show for the Ray fan-out: the default sweep of one model on 1 GPU and on 2 GPUs
# through Ray; the same points in the same order, per-point medians within noise, and the speedup.
#
# Run on a device machine with 2 GPUs (nvidia-h100-x2), in the repository root, carrying .whl/ray
# (made here by scripts/ray_wheels.sh: Ray is not installed there):
#     scripts/gpu_ray.sh [more moebench flags, e.g. --model ... --vllm-ops-library PATH]
# Three runs, in this order (the first also caches the card's bandwidth ceiling for the others):
#   single  plain moebench on GPU 0, no Ray           -> the reference for points and medians
#   ray1    moebench --ray --ray-workers 1            -> the fan-out's own 1-GPU baseline
#   ray2    moebench --ray (one worker per GPU: 2)
# Speedup = ray1's sweep seconds / ray2's (meta.ray.sweep_s: Ray and worker start-up left out);
# whole-command wall times are printed next to it. Files go to $OUT (else out/gpu_ray): the three
# results files and log.txt with every command's output. Exit 1 if a run or a check failed.
set -uo pipefail
dir=${OUT:-out/gpu_ray}
mkdir -p "$dir"
log=$dir/log.txt
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/ray/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
{
    nvidia-smi -L
    python3 -c 'import ray, torch; print("ray", ray.__version__, "torch", torch.__version__, "cuda devices", torch.cuda.device_count())'
} 2>&1 | tee "$log"

declare -A wall
status=0
run() {  # NAME COMMAND...: time one whole command; its output goes to the log
    local name=$1 t0 t1 rc
    shift
    t0=$(date +%s.%N)
    echo "=== $name: $*" >>"$log"
    "$@" >>"$log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    wall[$name]=$(python3 -c "print(round($t1 - $t0, 2))")
    echo "$name: exit $rc, ${wall[$name]} s wall" | tee -a "$log"
    [ "$rc" = 0 ] || status=1
}
run single env CUDA_VISIBLE_DEVICES=0 python3 -m moebench "$@" --json "$dir/single.json"
run ray1 python3 -m moebench "$@" --ray --ray-workers 1 --json "$dir/ray1.json"
run ray2 python3 -m moebench "$@" --ray --json "$dir/ray2.json"

python3 - "$dir/ray2.json" <<'PY' 2>&1 | tee -a "$log"
import json, sys
ray = json.load(open(sys.argv[1]))["meta"]["ray"]
for w in ray["workers"]:
    print(f"ray2 worker: {w['device']} gpu {','.join(w['gpu_ids']) or '-'} pid {w['pid']} on {w['node']}")
print(f"ray2: startup {ray['startup_s']} s, sweep {ray['sweep_s']} s, died {ray['died']}")
PY
echo "--- single (no Ray, GPU 0) vs ray2: points, order and medians" | tee -a "$log"
python3 scripts/compare_runs.py "$dir/single.json" "$dir/ray2.json" \
    --wall "${wall[single]}" "${wall[ray2]}" 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "--- ray1 vs ray2: speedup of the fan-out (goal >= 1.8x)" | tee -a "$log"
python3 scripts/compare_runs.py "$dir/ray1.json" "$dir/ray2.json" \
    --wall "${wall[ray1]}" "${wall[ray2]}" --min-speedup 1.8 2>&1 | tee -a "$log"
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
