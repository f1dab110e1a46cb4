#!/bin/bash
# run.sh NAME EPOCHS [flags...]
name=$1; ep=$2; shift 2
cd /tmp/exp
resnet50 train --recipe demo --data /tmp/fashion-tune --epochs $ep --eval-every $ep --threads 1 --no-progress --out /tmp/exp/runs --name $name "$@" > /tmp/exp/$name.log 2>&1
python - "$name" <<'PY'
import json,sys
rows=[json.loads(l) for l in open(f"/tmp/exp/runs/{sys.argv[1]}/metrics.jsonl")]
print(sys.argv[1], "val", rows[-1].get("val_top1"), "train", round(rows[-1]["train_top1"],4), "img_s", round(rows[-1]["img_s"],1), "s", round(sum(r["epoch_s"] for r in rows)))
PY
