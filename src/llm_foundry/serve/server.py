"""Running the app: a listening socket, a uvicorn server with a graceful stop, a server in a thread."""

from __future__ import annotations

import socket
import time

from ..utils.errors import FoundryError


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); a clear error when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        reason = e.strerror or e
        raise FoundryError(f"cannot listen on {host}:{port}: {reason}; pick another --port or --host") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def make_server(app, sock: socket.socket, *, log_level: str = "info", graceful_timeout: float | None = 60.0):
    """A uvicorn server for ``app`` on an already bound socket (run it with ``server.run(sockets=[sock])``).

    On Ctrl-C / SIGTERM uvicorn stops accepting connections, lets the responses in
    flight finish (up to ``graceful_timeout`` seconds), then the app stops its worker.
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, so the process would die of it
            # (exit -15, or a KeyboardInterrupt); a server stopped on purpose exits normally instead.
            getattr(self, "_captured_signals", []).clear()

    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=graceful_timeout,
                            lifespan="on", log_config=None)
    return Server(config)


class ServerThread:
    """Run the server in a background thread of this process (notebooks, tests, benchmarks).

    ``with ServerThread(app) as s: httpx.get(s.url + "/health")``; leaving the block
    stops it gracefully. Port 0 (the default) picks a free port.
    """

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30.0):
        import threading

        self.sock = bind_socket(host, port)
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = make_server(app, self.sock, log_level="warning")
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="foundry-serve-http")
        self.thread.start()
        deadline = time.monotonic() + startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise FoundryError(f"the server did not start on {host}:{self.port}")
            time.sleep(0.02)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def stop(self, timeout: float = 60.0) -> None:
        """Stop accepting connections, let in-flight requests finish, then stop."""
        self.server.should_exit = True
        self.thread.join(timeout)

    def __enter__(self) -> "ServerThread":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
