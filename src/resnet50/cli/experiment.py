"""resnet50 experiment degradation|transfer: plain vs residual nets of two depths, as in the paper's Figures 1 and 6;
what pretrained weights buy on few images of new classes (resnet50.experiments, resnet50.transfer)."""

from ..experiments import degradation
from ..transfer import METHODS, transfer
from ..errors import UserError
from . import add_config_flags, config_overrides, print_json

# the fields this command sets with its own flags (and defaults); every other TrainConfig field is a flag too
OWN = ("data", "epochs", "batch_size", "lr", "warmup_epochs", "max_steps", "out")


def register(sub) -> None:
    p = sub.add_parser("experiment", help="experiments: 'degradation' (plain vs residual, Fig. 1 and 6), 'transfer' "
                                          "(fine-tuning vs linear probe vs k-NN vs scratch on few images)")
    p.add_argument("experiment", metavar="NAME", choices=("degradation", "transfer"), help="degradation or transfer")
    t = p.add_argument_group("transfer options")
    t.add_argument("--ks", default="10,50,250", help="labelled images per new class (default 10,50,250)")
    t.add_argument("--seeds", type=int, default=3, help="seeds per k; figures are medians (default 3)")
    t.add_argument("--steps", type=int, default=300, help="optimiser steps of every trained run (default 300)")
    t.add_argument("--pretrained", default=None, help="start from these weights instead of pretraining on the five "
                                                      "source classes (ours, torchvision/timm, tv:resnet50.v2)")
    t.add_argument("--pretrain-epochs", type=int, default=4)
    t.add_argument("--methods", default=",".join(METHODS), help=f"default {','.join(METHODS)}")
    t.add_argument("--lr-find", action="store_true", help="each trained run takes its peak rate from the "
                   "learning-rate range test on its own k images (resnet50 lr-find's rule), not its recipe's")
    p.add_argument("--data", default="embedded", help="dataset (default: the embedded Fashion-MNIST subset)")
    p.add_argument("--depths", default="20,56", help="CIFAR-style depths 6n+2 to compare (default 20,56)")
    p.add_argument("--only", default="", help="train just these of the nets, e.g. plain56,resnet20 (default: all); "
                   "a net whose folder in --out holds a run of the same settings is continued or reused, so nets "
                   "trained apart, say in two processes, are drawn together by a last run without --only")
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
    if args.experiment == "transfer":
        return run_transfer(args)
    depths = [int(x) for x in args.depths.split(",") if x.strip()]
    result = degradation(args.data, depths, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         warmup_epochs=args.warmup_epochs, out=args.out, max_steps=args.max_steps,
                         progress=not args.no_progress, overrides=config_overrides(args, skip=OWN),
                         tensorboard=args.tensorboard, only=tuple(n.strip() for n in args.only.split(",")
                                                                  if n.strip()))
    if args.json:
        print_json(result)
    else:
        for r in result["runs"]:
            found = f"  ({r['epochs_found']} epochs found done)" if r["epochs_found"] else ""
            print(f"{r['arch']:<18} final train error {r['train_error']:.2%}  val error {r['val_error']:.2%}{found}")
        print(f"wrote {result['plot']}")
    return 0


# the degradation experiment's own flags and defaults: transfer refuses them rather than ignore them
DEGRADATION_ONLY = {"data": "embedded", "depths": "20,56", "only": "", "epochs": 8, "batch_size": 128, "lr": 0.2,
                    "warmup_epochs": 0.5, "max_steps": 0}


def run_transfer(args) -> int:
    given = [k for k, default in DEGRADATION_ONLY.items() if getattr(args, k) != default]
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag} is a degradation option; transfer runs take --steps, their recipe's rates (or "
                        "--lr-find) and the embedded data: drop it")
    out = args.out if args.out != "runs/degradation" else "runs/transfer"
    r = transfer(out, [int(k) for k in args.ks.split(",") if k.strip()], args.seeds, args.pretrained, args.steps,
                 args.pretrain_epochs, [m for m in args.methods.split(",") if m.strip()], not args.no_progress,
                 (lambda *a: None) if args.json else print,
                 {k: v for k, v in config_overrides(args, skip=OWN).items() if k != "arch"}, args.lr_find)
    if args.json:
        print_json(r)
        return 0
    print("median top-1 " + "  ".join(f"k={k:<4}" for k in r["ks"]))
    for method, row in r["median_top1"].items():
        print(f"{method:<12} " + "  ".join(f"{row[k]:6.2%}" for k in r["ks"]))
    print(f"wrote {r['plot']}")
    return 0
