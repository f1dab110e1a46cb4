# issue 22, BAS; one run each, AMD EPYC family 25 model 17 (Zen 4), 2 cores, torch 2.13.0+cpu, bf16; /tmp/w22 = OUT
# note: the chosen generator (/tmp/w22/a1.5, 200 steps) was trained before generator files recorded their steps, so bas.json, which scores it again, reports "steps": 0
resnet50 demo                                              # classifier demo: t10k 88.69 %, runs/demo-resnet50-20261204-030558
# scenes + labels-only classifier (benchmarks/psol.py's steps 0-1) + BAS at area 1.0, 200 steps:
python benchmarks/bas.py --init-weights runs/demo-resnet50-20261204-030558/best.safetensors --out /tmp/w22/a10 --steps 200 --area-weight 1.0
for a in 0.6 1.5; do   # the area-weight sweep, same classifier and scenes
  python benchmarks/bas.py --weights /tmp/w22/a10/classifier.safetensors --scenes /tmp/w22/a10/scenes --out /tmp/w22/a$a --steps 200 --area-weight $a
done
# 800 steps at the chosen 1.5, + PSOL regressor, + hidden t10k-item scenes (steps_800/):
python benchmarks/bas.py --weights /tmp/w22/a10/classifier.safetensors --scenes /tmp/w22/a10/scenes --out /tmp/w22/final --steps 800 --area-weight 1.5 --regressor-minutes 6 --hidden-items /usr/share/datasets/fashion-mnist
# the chosen generator (200 steps, area 1.5) scored again, + PSOL regressor, + hidden scenes (bas_psol.json, bas.json):
python benchmarks/bas.py --weights /tmp/w22/a10/classifier.safetensors --scenes /tmp/w22/a10/scenes --generator /tmp/w22/a1.5/bas/generator.safetensors --out /tmp/w22/sel --regressor-minutes 6 --hidden-items /usr/share/datasets/fashion-mnist
python benchmarks/bas_erasing.py --weights /tmp/w22/a10/classifier.safetensors --scenes /tmp/w22/a10/scenes --out /tmp/w22/erasing.json
