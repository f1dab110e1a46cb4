#!/usr/bin/env bash
# The degradation experiment long enough for the paper's second finding (issue 24, item 3), on a 2-core CPU:
# the four nets in two one-thread processes side by side (each pair about the same work: a 56-layer net and a
# 20-layer one), then a last run that finds all four finished and draws them together.
#
#   bash benchmarks/degradation_long.sh [EPOCHS] [OUT]     (defaults: 24 epochs, runs/degradation-long)
#
# Every net: the experiment's defaults (embedded Fashion-MNIST at 32 px, batch 128, SGD 0.9, lr 0.1 per 128
# images divided by 10 at 50 % and 75 % of the epochs, weight decay 1e-4, 0.5-epoch warmup). Writes OUT/<net>/
# (each run), OUT/degradation.json and OUT/degradation.png, and the machine's description in OUT/machine.txt.
set -euo pipefail
EPOCHS=${1:-24}
OUT=${2:-runs/degradation-long}
mkdir -p "$OUT"
{ date -u; lscpu | grep -E 'Model name|CPU family|^Model:|^CPU\(s\)|Flags'; python -c "import torch; print('torch', torch.__version__)"; } > "$OUT/machine.txt"
run() { resnet50 experiment degradation --epochs "$EPOCHS" --out "$OUT" --threads 1 --no-progress --only "$1"; }
start=$(date +%s)
run resnet56,plain20 > "$OUT/log-a.txt" 2>&1 &
a=$!
run plain56,resnet20 > "$OUT/log-b.txt" 2>&1 &
b=$!
wait $a
wait $b
resnet50 experiment degradation --epochs "$EPOCHS" --out "$OUT" --no-progress | tee "$OUT/log.txt"
echo "wall $(( $(date +%s) - start )) s for both processes and the drawing" | tee -a "$OUT/log.txt"
