"""Serving the web lab: bind, say where, run uvicorn until Ctrl-C; and adding accounts."""

from __future__ import annotations

import ipaddress
import socket
import sys

from ...utils.errors import FoundryError
from .app import Settings, create_app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(host: str, port: int, settings: Settings) -> None:
    """Serve the lab on ``host:port`` (port 0: a free one) until interrupted; prints the address first."""
    import uvicorn

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, reuse_port=False)
    except OSError as e:
        raise FoundryError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    bound = sock.getsockname()[1]
    app = create_app(settings)
    shown = f"[{host}]" if ":" in host else host
    mode = "classroom (accounts)" if settings.classroom else "single learner"
    print(f"foundry lab web: http://{shown}:{bound}/ ({mode}, {settings.workers} test runs at once; Ctrl-C stops)",
          flush=True)
    config = uvicorn.Config(app, log_level="warning", proxy_headers=False, timeout_graceful_shutdown=5)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()


def read_password(name: str) -> str:
    """A password from the terminal (asked twice) or the first line of stdin (scripts)."""
    import getpass

    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise FoundryError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")
