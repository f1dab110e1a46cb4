# issue 22, BAS reproduced on another CPU kind; one run each, AMD EPYC family 25 model 1 (Zen 3; avx2, fma, no
# AVX-512, no bf16: fp32), 2 cores, torch 2.13.0+cpu; the cores to the job; /tmp/w = OUT. Same steps as the Zen 4
# run of ../bas/ (classifier 345, generator 200 at area weight 1.5, regressor 289), from this machine's demo.
resnet50 demo --out /tmp/w/runs     # t10k 84.93 % (2.3 epochs in 7 min 38 s: ../demo-zen3-avx2/)
python benchmarks/bas.py --init-weights /tmp/w/runs/demo-resnet50-20261207-223606/best.safetensors --out /tmp/w/bas \
  --steps 200 --area-weight 1.5 --classifier-steps 345 --regressor-minutes 6 --regressor-steps 289 \
  --hidden-items /usr/share/datasets/fashion-mnist     # 53 min 36 s wall, peak RSS 2.8 GB
