cd /tmp/fresh2 && . .venv/bin/activate && pip install -q torch==2.13.0 && pip install -q -e . && resnet50 demo --no-progress --out /tmp/fresh2-runs
