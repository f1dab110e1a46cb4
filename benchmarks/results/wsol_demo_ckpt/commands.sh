set -e
cd /tmp/exp/psol2
CK=/tmp/exp/demo2/demo-resnet50-20261203-185605/best.safetensors
VAL=/tmp/exp/loc/localize-demo-20261203-192023/scenes-val
python -c "
from resnet50.scenes import write_mixed_scenes
write_mixed_scenes('train', 'train', 'single', 1000, 0)
write_mixed_scenes('held', 'train', 'single', 50, 99)
"
date
resnet50 localize wsol --weights $CK --train train --held-out held --val $VAL/clutter --out ddt --no-progress --json > wsol.json
date
resnet50 localize train --train ddt/pseudo --regression scr --init-weights $CK --time-budget 6 --name psol --out runs --no-progress --json > train.json
date
for k in plain clutter; do resnet50 localize evaluate --weights runs/psol/final.safetensors --data $VAL/$k --json --no-progress > eval_$k.json; done
date
