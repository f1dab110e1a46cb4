"""resnet50 train: a named recipe, any field overridden by a flag (resnet50.recipes, resnet50.train)."""

from ..engine import main_process
from ..errors import UserError
from ..lr_find import auto_lr
from ..recipes import RECIPES, resolve
from ..train import elastic_restart, resume_config, train
from . import add_config_flags, config_overrides, print_json


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model (default: ResNet-50 on the embedded Fashion-MNIST subset)",
                       description="Train with a named recipe; every config field is a flag (--lr, --epochs, "
                                   "--data, ...). With no --data, trains on the embedded Fashion-MNIST subset.")
    p.add_argument("--recipe", default="demo", choices=list(RECIPES), help="named recipe (default: demo)")
    p.add_argument("--resume", default=None, metavar="RUN", help="a run folder or last.pt to continue exactly")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    p.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard events to RUN/tensorboard (needs the extra resnet50[tensorboard])")
    add_config_flags(p)
    p.set_defaults(func=run)
    for action in p._actions:  # --lr also takes "auto": the learning-rate range test's suggestion
        if action.dest == "lr":
            action.help = "peak learning rate per 256 images, or auto (resnet50 lr-find's suggestion)"


def run(args) -> int:
    overrides = config_overrides(args)
    auto = str(overrides.get("lr", "")).lower() == "auto"  # the range test's suggestion (resnet50.lr_find)
    if auto and args.resume:
        raise UserError("--lr auto picks the rate of a new run; a resumed run keeps its checkpoint's: drop --lr")
    if auto:
        overrides["lr"] = auto_lr(resolve(args.recipe, {k: v for k, v in overrides.items() if k != "lr"}),
                                  progress=not args.no_progress, log=(lambda *a: None) if args.json else print)
    # a worker that torchrun --max-restarts restarted continues its run's last checkpoint by itself
    resume = args.resume or elastic_restart(resolve(args.recipe, overrides))
    if resume:
        cfg, checkpoint = resume_config(resume, overrides)
    else:
        cfg, checkpoint = resolve(args.recipe, overrides), None
    result = train(cfg, resume=checkpoint, progress=not args.no_progress, tensorboard=args.tensorboard)
    if not main_process():  # torchrun's other ranks: rank 0 reports the run
        return 0
    if args.json:
        print_json({k: v for k, v in result.items() if k != "history"})
    else:
        print(f"done: {result['run_dir']}  best val top-1 {result['best_val_top1']:.2%}")
    return 0

