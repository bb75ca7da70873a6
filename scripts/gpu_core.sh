#!/usr/bin/env bash
# Issue 2's GPU evidence: the reference implementation with CUDA graphs for Mixtral and
# DeepSeek-V3, warm and cold L2, plus the same-process spread of 5 repeats, plus the GPU tests.
# Runs from the repo root on the device machine (torch+cu130, transformers, rich, matplotlib,
# nvidia-ml-py preinstalled there); writes everything under $OUT.
set -uo pipefail
export PYTHONPATH=src PYTHONUNBUFFERED=1
# The device tool returns at most 8 files: work in a scratch folder, hand back one archive.
FINAL=${OUT:-out}
OUT=$(mktemp -d)/core
mkdir -p "$OUT" "$FINAL"
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$OUT/device.txt"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee -a "$OUT/device.txt"
python3 -m pytest -q -x tests/test_reference.py tests/test_timing.py 2>&1 | tail -3 | tee "$OUT/pytest.txt"
for model in mistralai/Mixtral-8x7B-Instruct-v0.1 deepseek-ai/DeepSeek-V3; do
  tag=$(basename "$model")
  for l2 in warm cold; do
    python3 -m moebench --model "$model" --use-customized-permute --impl reference-custom,reference-standard \
      --batch-size 1 16 256 1024 4096 --l2 "$l2" --json "$OUT/ref-$tag-$l2.json" --plot "$OUT/ref-$tag-$l2.png" \
      > "$OUT/ref-$tag-$l2.txt" 2>&1 || echo "sweep rc=$? for $model $l2"
  done
  python3 scripts/spread.py --model "$model" --impl reference-custom --batch-size 1 256 1024 4096 \
    --l2 warm --json "$OUT/spread-$tag.json" | tee -a "$OUT/spread.txt"
done
tail -n 30 "$OUT"/ref-*-warm.txt
tar -czf "$FINAL/core.tgz" -C "$(dirname "$OUT")" core
