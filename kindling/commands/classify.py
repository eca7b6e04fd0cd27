"""kindling classify --server HOST:PORT --model NAME image.jpg ...: ask a kindling server."""
from __future__ import annotations

from pathlib import Path

HELP = "classify images with a model on a kindling server; prints label and score per image"


def add_arguments(p):
    p.add_argument("images", nargs="+", type=Path, help="image files (JPEG, PNG, ...)")
    p.add_argument("--server", default="127.0.0.1:8500", help="HOST:PORT (default 127.0.0.1:8500)")
    p.add_argument("--model", required=True, help="the model's name (its folder in the server's repository)")
    p.add_argument("--version", type=int, default=0, help="a version number (default: the one the server serves)")
    p.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds (default 30)")
    p.add_argument("--token-file", type=Path, help="a file holding the bearer token")
    p.add_argument("--tls-ca", type=Path, help="the server's CA certificate: connect with TLS")
    p.add_argument("--tls-cert", type=Path, help="client certificate for mutual TLS")
    p.add_argument("--tls-key", type=Path, help="client key for mutual TLS")


def run(args) -> int:
    from kindling.serving import Client, ServingError
    missing = [str(p) for p in args.images if not p.is_file()]
    if missing:
        raise ValueError(f"no such file: {', '.join(missing)}")
    token = args.token_file.read_text(encoding="utf-8").strip().splitlines()[0] if args.token_file else None
    with Client(args.server, token=token, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                timeout=args.timeout) as client:
        try:
            answer = client.classify(args.model, args.images, top_k=args.top_k, version=args.version)
        except ServingError as e:
            raise ValueError(f"{args.server}: {e}") from None
    for path, c in zip(args.images, answer.results):
        print(f"{path}: " + ", ".join(f"{label or i} {score:.4f}" for i, label, score in
                                      zip(c.indices, c.labels, c.scores)))
    print(f"(model {answer.model} version {answer.version})")
    return 0
