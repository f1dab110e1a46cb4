"""resnet50 benchmark: img/s and latency per backend and batch, as % of the measured matmul peak; or, with
--loadgen, an MLPerf LoadGen scenario against one backend (resnet50.bench)."""

from ..backends import BACKENDS
from ..bench import LOADGEN_SCENARIOS, benchmark, format_loadgen, format_report, loadgen_benchmark, parse_list
from ..errors import UserError
from . import add_model_options, model_options, print_json


def register(sub) -> None:
    p = sub.add_parser("benchmark", help="inference throughput/latency of each backend vs the measured peak")
    p.add_argument("--weights", help="checkpoint to time; without it, --arch with random weights (same speed)")
    add_model_options(p)
    p.add_argument("--backend", default=None,
                   help=f"comma-separated backends; default: every installed one of {', '.join(BACKENDS)}")
    p.add_argument("--batch", default="1,16", help="comma-separated batch sizes; 1 is SingleStream, more is Offline")
    p.add_argument("--warmup", type=int, default=5,
                   help="untimed calls before each turn of timed calls (a backend needs a few after another ran); "
                        "default 5")
    p.add_argument("--runs", type=int, default=20, help="timed calls per backend and batch; default 20")
    p.add_argument("--turn", type=int, default=5,
                   help="timed calls per backend and batch in each round of the interleaving; default 5")
    p.add_argument("--threads", type=int, default=None, help="threads; default: physical cores")
    p.add_argument("--int8", default=None, help="INT8 .onnx model from 'resnet50 quantize' for the INT8 backends; "
                   "default: quantise the model on random inputs (speed only)")
    p.add_argument("--peak-size", type=int, default=2048, help="n of the n x n x n matmul timed for the peak")
    g = p.add_argument_group("MLPerf LoadGen (needs the extra resnet50[loadgen])")
    g.add_argument("--loadgen", choices=LOADGEN_SCENARIOS, default=None,
                   help="run this LoadGen scenario (performance mode) against one backend (--backend, default auto) "
                        "and report LoadGen's verdict; Offline and Server batch up to the largest --batch")
    g.add_argument("--loadgen-duration", type=float, default=10.0, metavar="S",
                   help="LoadGen's minimum duration in seconds; default 10 (MLPerf submissions: 600)")
    g.add_argument("--loadgen-target-latency-ms", type=float, default=None, metavar="MS",
                   help="Server: the 99th-percentile latency bound; default 10 x the calibrated batch-1 latency")
    g.add_argument("--loadgen-target-qps", type=float, default=None, metavar="QPS",
                   help="Server: the Poisson arrival rate; default half the calibrated batch-1 rate")
    g.add_argument("--loadgen-out", default=None, metavar="DIR", help="keep LoadGen's logs in DIR")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    options = model_options(args)
    if args.loadgen:
        backends = parse_list(args.backend, "backend") if args.backend else ["auto"]
        if len(backends) != 1:
            raise UserError(f"--loadgen drives one backend; give one --backend, not {', '.join(backends)}")
        report = loadgen_benchmark(args.loadgen, args.weights, args.arch, backends[0], args.size, args.threads,
                                   max(parse_list(args.batch, "batch", int)), args.loadgen_duration,
                                   args.loadgen_target_latency_ms, args.loadgen_target_qps,
                                   out=args.loadgen_out, **options)
        if args.json:
            print_json(report)
        else:
            print(format_loadgen(report))
        return 0
    backends = parse_list(args.backend, "backend") if args.backend else None
    report = benchmark(args.weights, args.arch, backends, parse_list(args.batch, "batch", int), args.warmup,
                       args.runs, args.size, args.threads, args.int8, progress=True, peak_n=args.peak_size,
                       turn=args.turn, **options)
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 0
