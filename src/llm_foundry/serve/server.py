"""Running the app: a listening socket, a uvicorn server with a graceful stop, a server in a thread."""

from __future__ import annotations

import functools
import logging
import socket
import time

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..utils.errors import FoundryError
from .guard import HttpPolicy, over_capacity_app

log = logging.getLogger("llm_foundry.serve")
LINGER_MAX_BYTES = 64 << 20  # what a gentle close reads and drops at most before it resets anyway


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
    The connection limits come from the app's :class:`~.guard.HttpPolicy` (``app.policy``;
    the defaults for an app without one).
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal after its graceful shutdown, so the process would die of it
            # (exit -15, or a KeyboardInterrupt); a server stopped on purpose exits normally instead.
            getattr(self, "_captured_signals", []).clear()

    policy = getattr(app, "policy", None) or HttpPolicy()
    # proxy_headers off: uvicorn would otherwise take X-Forwarded-For from any local client as its address
    # (the guard reads it only with --behind-proxy).
    config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_graceful_shutdown=graceful_timeout,
                            lifespan="on", log_config=None, proxy_headers=False,
                            http=functools.partial(GuardedH11Protocol, policy=policy))
    return Server(config)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 connection with the two limits uvicorn lacks: a header deadline and a connection cap.

    - A connection must deliver complete request headers within ``policy.header_timeout`` seconds of
      opening (or of its first byte after a keep-alive pause); a silent or trickling client is closed
      then. uvicorn's own keep-alive timer covers only the pause between requests.
    - A connection closed while the client is still sending its body (a refused 413 or 408) is
      closed gently: the answer is sent, our side shut for writing, and what still arrives is read
      and dropped for up to ``policy.linger_seconds`` (or ``LINGER_MAX_BYTES``). Closing at once
      would make the kernel reset the connection over the unread bytes, and a reset throws away
      the answer the client had not read yet: it would see "connection reset", not the 413.
    - Past ``policy.max_connections`` open connections, a new one is answered 503 (OpenAI's shape) and
      closed. uvicorn's ``limit_concurrency`` is not used: it counts the new connection itself and every
      running task together, answers in plain text, and accepts one connection fewer than it says.
    """

    def __init__(self, *args, policy: HttpPolicy, **kwargs):
        super().__init__(*args, **kwargs)
        self.policy, self.header_timer = policy, None
        self.lingering, self.dropped = None, 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn closes the transport itself once a response says "Connection: close"; route that close
        # through the gentle one (an instance attribute: the request cycle holds the same transport).
        self._close_now = transport.close
        transport.close = self._close_gently
        if len(self.connections) > self.policy.max_connections:
            self.app = over_capacity_app(self.policy.max_connections)  # this connection's requests get the 503
        self._watch_headers()

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:  # the rest of a refused body: dropped unread
            self.dropped += len(data)
            if self.dropped > LINGER_MAX_BYTES:
                self._close_now()
            return
        super().data_received(data)
        self._watch_headers()

    def eof_received(self):
        if self.lingering is not None:  # the client finished sending: the gentle close is complete
            self._close_now()
            return None
        return super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        if self.lingering is not None:
            self.lingering.cancel()
        super().connection_lost(exc)

    def _close_gently(self) -> None:
        transport = self.transport
        if self.conn.their_state is not h11.SEND_BODY or transport.is_closing() or not transport.can_write_eof():
            self._close_now()
            return
        if self.lingering is None:
            transport.write_eof()  # sends what is buffered (the answer) first, then shuts our side
            transport.resume_reading()  # uvicorn may have paused it while the body was not being consumed
            self.lingering = self.loop.call_later(self.policy.linger_seconds, self._close_now)

    def _watch_headers(self) -> None:
        # IDLE on their side: a request's headers have not (all) arrived. The deadline is not moved by
        # further bytes, so a client trickling one byte a second cannot keep the connection forever.
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.header_timer is None:
                self.header_timer = self.loop.call_later(self.policy.header_timeout, self._headers_too_slow)
        else:
            self._stop_header_timer()

    def _stop_header_timer(self) -> None:
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None

    def _headers_too_slow(self) -> None:
        self.header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("%s closed: no complete request headers within %gs", (self.client or ("-",))[0],
                     self.policy.header_timeout)
            self.transport.close()

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
