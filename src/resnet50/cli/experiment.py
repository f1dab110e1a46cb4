"""resnet50 experiment degradation: plain vs residual nets of two depths, as in the paper's Figures 1 and 6."""

from ..experiments import degradation
from . import add_config_flags, config_overrides, print_json

# the fields this command sets with its own flags (and defaults); every other TrainConfig field is a flag too
OWN = ("data", "epochs", "batch_size", "lr", "warmup_epochs", "max_steps", "out")


def register(sub) -> None:
    p = sub.add_parser("experiment", help="paper experiments: 'degradation' (plain vs residual, Fig. 1 and 6)")
    p.add_argument("experiment", metavar="NAME", choices=("degradation",), help="degradation")
    p.add_argument("--data", default="embedded", help="dataset (default: the embedded Fashion-MNIST subset)")
    p.add_argument("--depths", default="20,56", help="CIFAR-style depths 6n+2 to compare (default 20,56)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2, help="per 256 images (the paper: 0.1 at batch 128)")
    p.add_argument("--warmup-epochs", type=float, default=0.5, help="linear warmup, the same for every net")
    p.add_argument("--max-steps", type=int, default=0, help="stop each run after this many steps (smoke tests)")
    p.add_argument("--out", default="runs/degradation")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard events into each run's "
                   "folder (needs the extra resnet50[tensorboard])")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true")
    add_config_flags(p, skip=OWN)
    p.set_defaults(func=run)


def run(args) -> int:
    depths = [int(x) for x in args.depths.split(",") if x.strip()]
    result = degradation(args.data, depths, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         warmup_epochs=args.warmup_epochs, out=args.out, max_steps=args.max_steps,
                         progress=not args.no_progress, overrides=config_overrides(args, skip=OWN),
                         tensorboard=args.tensorboard)
    if args.json:
        print_json(result)
    else:
        for r in result["runs"]:
            print(f"{r['arch']:<18} final train error {r['train_error']:.2%}  val error {r['val_error']:.2%}")
        print(f"wrote {result['plot']}")
    return 0
