"""resnet50 serve: an HTTP inference server with dynamic batching (resnet50.serve)."""

import sys

from ..backends import BACKENDS
from ..infer import create_backend, load_model
from ..serve import ServeConfig, is_loopback, read_token, require_server, serve
from . import print_json


def register(sub) -> None:
    d = ServeConfig()
    p = sub.add_parser("serve", help="HTTP server: POST /predict, GET /health, GET /metrics (Prometheus), "
                                     "the Open Inference Protocol (KServe v2) under /v2")
    p.add_argument("--weights", required=True,
                   help="checkpoint (.safetensors/.pth/.h5), published weights (tv:resnet50.v2) or .onnx from "
                        "export/quantize")
    p.add_argument("--backend", default="auto", help=f"auto or one of: {', '.join(BACKENDS)}; default auto")
    p.add_argument("--host", default=d.host, help=f"address to bind; default {d.host} (this machine only)")
    p.add_argument("--port", type=int, default=d.port, help=f"default {d.port}")
    p.add_argument("--max-batch", type=int, default=d.max_batch, help=f"largest dynamic batch; default {d.max_batch}")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help=f"how long the first image of a batch waits for others; default {d.max_wait_ms}")
    p.add_argument("--max-concurrency", type=int, default=d.max_concurrency,
                   help=f"requests in flight before 503; default {d.max_concurrency}")
    p.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help=f"413 past this; default {d.max_body_mb}")
    p.add_argument("--max-pixels", type=int, default=d.max_pixels,
                   help=f"refuse larger images before decoding (413); default {d.max_pixels}")
    p.add_argument("--topk", type=int, default=d.topk, help=f"classes per answer; default {d.topk}")
    p.add_argument("--model-name", default=d.model_name,
                   help="the model's name on the v2 routes (/v2/models/NAME); default: the architecture")
    p.add_argument("--max-request-images", type=int, default=d.max_request_images,
                   help=f"images in one v2 infer request; default {d.max_request_images}")
    p.add_argument("--body-timeout-s", type=float, default=d.body_timeout_s,
                   help=f"a request body must arrive within this (else 408); default {d.body_timeout_s:g}")
    p.add_argument("--token-file", default=None,
                   help="file holding a bearer token: every route but /v2/health/* then needs 'Authorization: "
                        "Bearer <token>' (needed to bind beyond 127.0.0.1, unless --no-auth)")
    p.add_argument("--no-auth", action="store_true",
                   help="bind beyond 127.0.0.1 without a token, on purpose (a trusted network, or a proxy that "
                        "authenticates)")
    p.add_argument("--tls-cert", default="", help="PEM certificate: serve HTTPS (with --tls-key)")
    p.add_argument("--tls-key", default="", help="PEM private key of --tls-cert")
    p.add_argument("--threads", type=int, default=None, help="inference threads; default: physical cores")
    p.add_argument("--json", action="store_true", help="print the startup settings as JSON, then serve")
    p.set_defaults(func=run)


def run(args) -> int:
    token = read_token(args.token_file) if args.token_file else ""
    cfg = ServeConfig(args.host, args.port, args.max_batch, args.max_wait_ms, args.max_concurrency, args.max_body_mb,
                      args.max_pixels, args.topk, model_name=args.model_name,
                      max_request_images=args.max_request_images, body_timeout_s=args.body_timeout_s, token=token,
                      no_auth=args.no_auth, tls_cert=args.tls_cert, tls_key=args.tls_key)
    loopback = is_loopback(args.host)
    auth = ("bearer token (--token-file; /v2/health/* open)" if token else
            "none (--no-auth: anyone who can reach the port may call it)" if args.no_auth else
            "none (this machine only)")
    require_server()
    loaded = load_model(args.weights)
    backend = create_backend(args.backend, loaded, args.threads)
    info = {"url": f"{cfg.scheme}://{args.host}:{args.port}", "backend": backend.name, "arch": loaded.arch,
            "weights": args.weights, "loopback_only": loopback, "auth": auth.split(" (")[0], "tls": bool(args.tls_cert)}
    if args.json:
        print_json(info)
        sys.stdout.flush()
    else:
        print(f"serving {loaded.arch} ({backend.name}) on {info['url']}: POST /predict, /v2 (KServe v2), "
              f"GET /health, GET /metrics; auth: {auth}", file=sys.stderr)
    if not loopback:
        print(f"resnet50 serve: warning: listening on {args.host}, reachable from other machines"
              + ("" if token else " with no authentication (--no-auth)"), file=sys.stderr)
    serve(loaded, backend, cfg)
    return 0
