"""resnet50 lr-find: the learning-rate range test on a recipe and the user's data (resnet50.lr_find)."""

from ..lr_find import DEFAULT_RULE, RULES, range_test
from ..recipes import RECIPES, resolve
from . import add_config_flags, config_overrides, print_json


def register(sub) -> None:
    p = sub.add_parser("lr-find", help="learning-rate range test: loss against lr, a suggested --lr, a plot",
                       description="Smith's learning-rate range test (fastai's lr_find): train briefly while the "
                                   "learning rate grows from --start to --end, plot the loss, suggest a rate "
                                   "(default quarter-min; fastai's valley, minimum, steep, slide too). Every "
                                   "config field is a flag, as for train.")
    p.add_argument("--recipe", default="demo", choices=list(RECIPES), help="named recipe (default: demo)")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (actual, not per 256)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (the test stops earlier on divergence)")
    p.add_argument("--steps", type=int, default=100, help="optimiser steps (default 100)")
    p.add_argument("--rule", default=DEFAULT_RULE, choices=list(RULES),
                   help=f"the suggestion rule reported (default {DEFAULT_RULE}; every rule's is in lr_find.json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    cfg = resolve(args.recipe, config_overrides(args))
    r = range_test(cfg, args.start, args.end, args.steps, progress=not args.no_progress,
                   log=(lambda *a: None) if args.json else print, rule=args.rule)
    if args.json:
        print_json({k: v for k, v in r.items() if k not in ("lrs", "losses", "raw_losses")})
    else:
        print(f"suggested ({r['rule']}): --lr {r['lr_per_256']:.3g} (per 256 images; {r['lr']:.3g} at batch "
              f"{r['batch_size']}); other rules: " + ", ".join(f"{k} {v:.3g}" for k, v in r["suggestions"].items()
                                                             if k != r["rule"]))
    return 0
