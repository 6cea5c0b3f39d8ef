"""`foundry serve`: an OpenAI-compatible API and a web chat page for a model."""

from __future__ import annotations

import argparse
import os
import sys
from urllib.parse import urlsplit

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
    p.add_argument("--api-key-file", metavar="PATH",
                   help="read the API key from this file (surrounding whitespace stripped): unlike --api-key, "
                        "it does not show in the process list")
    p.add_argument("--max-concurrency", type=int, default=8, metavar="N",
                   help="sequences (prompts x n) decoded at the same time; more wait in a queue (default: 8)")
    p.add_argument("--max-queue", type=int, default=64, metavar="N",
                   help="sequences that may wait for a slot; a request needing more room gets HTTP 429 (default: 64)")
    p.add_argument("--model-name", metavar="NAME", help="the model id clients use (default: the folder's name)")
    p.add_argument("--memory", metavar="MEM",
                   help="answer every request from this memory folder (built for MODEL by `foundry memory init`), "
                        "as `foundry chat MODEL --memory MEM` does: the request's question, greedy, the entries "
                        "retrieved from the store's live entries at that moment (see docs/en/memory.md)")
    g = p.add_argument_group("security and limits")
    g.add_argument("--max-body-bytes", type=int, metavar="N",
                   help="largest request body; a bigger one gets HTTP 413 unread (default: 4194304, 4 MiB)")
    g.add_argument("--max-connections", type=int, metavar="N",
                   help="open connections at most; more get HTTP 503 (default: 256)")
    g.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="a Host name to answer besides localhost, 127.0.0.1 and [::1] (repeatable)")
    g.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="a web origin (e.g. http://localhost:3000; '*' for any) whose pages may call the API "
                        "(repeatable; default: only the server's own page)")
    g.add_argument("--behind-proxy", action="store_true",
                   help="trust X-Forwarded-For: log its last hop as the client (only behind your own proxy)")
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
    from ..serve.guard import is_loopback
    from ..utils.errors import FoundryError

    if args.max_concurrency < 1 or args.max_queue < 0:
        raise FoundryError("--max-concurrency must be >= 1 and --max-queue >= 0")
    if not 0 <= args.port <= 65535:
        raise FoundryError("--port must be in 0..65535")
    check_sampling(seed=args.seed, as_flags=True)
    policy = http_policy(args)
    if args.api_key and args.api_key_file:
        raise FoundryError("give --api-key or --api-key-file, not both")
    api_key = (read_api_key(args.api_key_file) if args.api_key_file else args.api_key
               or os.environ.get("FOUNDRY_API_KEY") or None)
    name = args.model_name or Path(args.model).resolve().name
    if not Path(args.model).is_dir():
        raise FoundryError(f"model folder not found: {args.model}")
    if args.memory is not None and args.compile:
        raise FoundryError("--compile does not apply with --memory (the memory's hooks need the live model)")
    # Take the port first: a busy port is reported before a big model is loaded for nothing.
    sock = bind_socket(args.host, args.port)
    engine, memory = None, None
    if args.memory is not None:
        from ..memory.pipeline import open_memory
        from ..serve.memory import MemoryService

        # Refused in one line unless MODEL is the backbone MEM was built for.
        opened = open_memory(args.memory, device=None if args.device == "auto" else args.device, backbone=args.model)
        try:
            memory = MemoryService(opened, args.max_queue)
        except BaseException:
            opened.close()
            raise
    else:
        engine = Engine.from_pretrained(args.model, device=args.device, precision=args.precision,
                                        tools=not args.no_tools, compile=args.compile)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    app = create_app(engine, name, api_key=api_key, max_concurrency=args.max_concurrency, max_queue=args.max_queue,
                     default_seed=args.seed, policy=policy, memory=memory)
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    with_memory = f" with memory {args.memory} ({len(memory.memory.store)} entries)" if memory else ""
    print(f"serving '{name}'{with_memory} on http://{host}:{port}  (chat page: /   API: /v1   "
          f"{'API key required' if api_key else 'no API key'})", flush=True)
    if not api_key and not is_loopback(args.host):
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this port can use the model",
              file=sys.stderr)
    make_server(app, sock).run(sockets=[sock])
    print("server stopped", file=sys.stderr)
    return 0


def http_policy(args: argparse.Namespace):
    """The transport limits (:class:`~llm_foundry.serve.guard.HttpPolicy`) of the command line, each checked."""
    from ..serve.guard import HttpPolicy
    from ..utils.errors import FoundryError

    limits = {name: getattr(args, name) for name in ("max_body_bytes", "max_connections")
              if getattr(args, name) is not None}
    if any(v < 1 for v in limits.values()):
        raise FoundryError("--max-body-bytes and --max-connections must be >= 1")
    hosts = tuple(h.strip().lower().rstrip(".") for h in args.allowed_host)
    if any(not h or any(c in h for c in "/ :@[]") for h in hosts):
        raise FoundryError(f"--allowed-host takes a bare host name like 'myhost.lan' (no scheme, port or path), "
                           f"got {args.allowed_host}")
    origins = tuple(o.strip().rstrip("/").lower() for o in args.cors_origin)
    for o in origins:
        if o != "*" and not (urlsplit(o).scheme in ("http", "https") and urlsplit(o).netloc
                             and urlsplit(o).path == "" and "?" not in o and "#" not in o):
            raise FoundryError(f"--cors-origin takes an origin like 'http://localhost:3000' (scheme, host, "
                               f"optional port; no path) or '*', got '{o}'")
    return HttpPolicy(**limits, allowed_hosts=hosts, cors_origins=origins, behind_proxy=args.behind_proxy)


def read_api_key(path: str) -> str:
    """The API key in ``path``, stripped; a one-line error when the file is missing, unreadable or empty."""
    from ..utils.errors import FoundryError

    try:
        with open(path, encoding="utf-8") as f:
            key = f.read(64 * 1024).strip()
    except (OSError, UnicodeDecodeError) as e:
        raise FoundryError(f"--api-key-file {path}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
    if not key or "\n" in key:
        raise FoundryError(f"--api-key-file {path}: the file must hold one key on one line"
                           f"{' (it is empty)' if not key else ''}")
    return key

