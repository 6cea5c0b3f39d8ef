"""`foundry serve`: an OpenAI-compatible API and a web chat page for a model."""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys

from . import add_compile_option, add_no_tools_option, add_run_options


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve a model: OpenAI-compatible API and a web chat page",
                       description="Serve a model over HTTP: the OpenAI API (/v1/chat/completions, /v1/completions, "
                                   "/v1/models) and a chat page at /. Ctrl-C stops it after the replies in flight.")
    p.add_argument("model", metavar="MODEL", help="a model folder (a run folder works)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument("--api-key", metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every /v1 request (default: $FOUNDRY_API_KEY if set)")
    p.add_argument("--max-concurrency", type=int, default=8, metavar="N",
                   help="sequences (prompts x n) decoded at the same time; more wait in a queue (default: 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences that may wait for a slot; a request needing more room gets HTTP 429 (default: 64)")
    p.add_argument("--model-name", metavar="NAME", help="the model id clients use (default: the folder's name)")
    add_run_options(p, seed_help="sampling seed of the requests that give none; a request's own seed is kept "
                                 "(default: none)")
    add_compile_option(p)
    add_no_tools_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from ..config.sampling import check_sampling
    from ..inference.engine import Engine
    from ..serve import bind_socket, create_app, make_server
    from ..utils.errors import FoundryError

    if args.max_concurrency < 1 or args.max_queue < 0:
        raise FoundryError("--max-concurrency must be >= 1 and --max-queue >= 0")
    if not 0 <= args.port <= 65535:
        raise FoundryError("--port must be in 0..65535")
    check_sampling(seed=args.seed, as_flags=True)
    api_key = args.api_key or os.environ.get("FOUNDRY_API_KEY") or None
    name = args.model_name or Path(args.model).resolve().name
    if not Path(args.model).is_dir():
        raise FoundryError(f"model folder not found: {args.model}")
    # Take the port first: a busy port is reported before a big model is loaded for nothing.
    sock = bind_socket(args.host, args.port)
    engine = Engine.from_pretrained(args.model, device=args.device, precision=args.precision, tools=not args.no_tools,
                                 compile=args.compile)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    app = create_app(engine, name, api_key=api_key, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                     default_seed=args.seed)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving '{name}' on http://{host}:{port}  (chat page: /   API: /v1   "
          f"{'API key required' if api_key else 'no API key'})", flush=True)
    if not api_key and not _is_loopback(args.host):
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    make_server(app, sock).run(sockets=[sock])
    print("server stopped", file=sys.stderr)
    return 0


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
