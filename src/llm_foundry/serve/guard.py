"""The server's transport guards: one ASGI middleware in front of the app, and the policy it applies.

Every request passes, in this order:

    Host       on a loopback address only loopback names (and --allowed-host): stops DNS rebinding
    Origin     a browser's foreign Origin is refused unless --cors-origin allows it (CSRF, cross-site reads)
    API key    the constant-time key check, before a byte of the body is read
    type       a POST must say Content-Type: application/json (a cross-site form or text/plain POST cannot)
    body       read here, whole, under a size cap (413) and a deadline (408), before the app sees it

and leaves one log line (request id, client, escaped path, status, seconds); the id is also sent back
as ``X-Request-Id``. The limits that live below ASGI (header deadline, connection cap) are applied by
:func:`.server.make_server` from the same :class:`HttpPolicy`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import time
import uuid
from dataclasses import dataclass
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse, Response

from . import builders
from .schemas import ApiError

log = logging.getLogger("llm_foundry.serve")

LOG_PATH_CHARS = 200  # a path longer than this is cut in the log (the request still runs)
BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class HttpPolicy:
    """The transport limits of one server (``foundry serve``'s options; the defaults are its defaults).

    Attributes:
        max_body_bytes: largest request body; a bigger one is answered 413 without being read.
        body_timeout: seconds a client has to send a whole body once its headers arrived (then 408).
        header_timeout: seconds a connection has to send complete request headers (then it is closed).
        max_connections: open connections at most; the ones past it are answered 503 and closed.
        linger_seconds: after refusing a body still arriving (413, 408), how long the connection keeps
            reading and dropping it, so the client reads the answer instead of a connection reset.
        allowed_hosts: Host names accepted besides the loopback ones (``--allowed-host``).
        cors_origins: browser origins allowed to call the API from their pages (``--cors-origin``; ``*``: any).
        behind_proxy: trust ``X-Forwarded-For`` (its last hop is the client in the log).
    """

    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout: float = 30.0
    header_timeout: float = 10.0
    max_connections: int = 256
    linger_seconds: float = 2.0
    allowed_hosts: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    behind_proxy: bool = False


# ---------------------------------------------------------------------------- pure checks
def escape_for_log(text: str, limit: int = LOG_PATH_CHARS) -> str:
    """``text`` as one printable ASCII line: control, non-ASCII, quote and backslash escaped, cut at ``limit``."""
    out = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return out if len(out) <= limit else out[:limit] + "..."


def host_name(host_header: str) -> str:
    """The name in a ``Host`` header, without port or IPv6 brackets, lower case: ``[::1]:80`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return (host.rsplit(":", 1)[0] if host.count(":") == 1 else host).rstrip(".")


def is_loopback(name: str) -> bool:
    """Whether a host name or address means this machine only (``localhost``, 127.x.y.z, ``::1``)."""
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    # ::ffff:127.0.0.1 is how a dual-stack (--host ::) socket sees an IPv4 loopback client.
    return address.is_loopback or bool(getattr(address, "ipv4_mapped", None) and address.ipv4_mapped.is_loopback)


def host_error(host_header: str | None, server_addr: str | None, policy: HttpPolicy) -> ApiError | None:
    """The refusal of a ``Host`` a browser tricked by DNS rebinding would send; None when it may pass.

    Checked on connections that arrived at a loopback address (there a page in the user's browser is
    the only stranger that can reach the server) and wherever ``--allowed-host`` names the valid hosts.
    """
    if host_header is None or not (policy.allowed_hosts or (server_addr and is_loopback(server_addr))):
        return None  # no Host (HTTP/1.0: not a browser), or a public bind without a list of names
    name = host_name(host_header)
    if is_loopback(name) or name in policy.allowed_hosts:
        return None
    return ApiError(400, f"Host '{escape_for_log(host_header, 100)}' is not served here; a server on a loopback "
                         "address answers only to localhost, 127.0.0.1 and [::1] (add names with --allowed-host)",
                    code="invalid_host")


def same_origin(origin: str, host_header: str | None) -> bool:
    """Whether ``Origin`` names this server as the browser reached it (the chat page's own requests)."""
    if not host_header:
        return False
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host_header.strip().lower()


def origin_allowed(origin: str, policy: HttpPolicy) -> bool:
    return "*" in policy.cors_origins or origin.rstrip("/").lower() in policy.cors_origins


def content_type_error(method: str, content_type: str | None) -> ApiError | None:
    """The 415 of a body that is not declared JSON: forms and text/plain are what cross-site pages can send."""
    if method not in BODY_METHODS:
        return None
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == "application/json":
        return None
    return ApiError(415, f"Content-Type must be application/json, not '{escape_for_log(media or 'none', 100)}'",
                    code="unsupported_media_type")


def too_large(policy: HttpPolicy) -> ApiError:
    return ApiError(413, f"request body larger than {policy.max_body_bytes} bytes (the server's --max-body-bytes)",
                    code="request_too_large")


def client_address(scope: dict, headers: dict[bytes, bytes], policy: HttpPolicy) -> str:
    """The client for the log: the peer, or with ``behind_proxy`` the last hop of ``X-Forwarded-For``."""
    forwarded = headers.get(b"x-forwarded-for", b"").decode("latin-1")
    if policy.behind_proxy and forwarded.strip():
        return escape_for_log(forwarded.split(",")[-1].strip(), 60)
    return (scope.get("client") or ("-", 0))[0]


def cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


PREFLIGHT_HEADERS = "Authorization, Content-Type"
HEADER_LIST = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(\s*,\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+)*")


def preflight(requested: str = "") -> Response:
    """The answer to a browser's CORS preflight from an allowed origin (its Allow-Origin is added as to all).

    The headers the page asks to send are allowed as asked: the origin is trusted already, and client
    libraries send their own (the OpenAI SDK's ``X-Stainless-*``), which a fixed list would refuse.
    """
    requested = requested.strip()
    allowed = requested if HEADER_LIST.fullmatch(requested) else PREFLIGHT_HEADERS
    return Response(status_code=204, headers={"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                                              "Access-Control-Allow-Headers": allowed,
                                              "Access-Control-Max-Age": "600"})


# ---------------------------------------------------------------------------- the middleware
class _ClientLeft(Exception):
    """The client closed the connection before its body ended: nobody to answer, one log line."""


class Guard:
    """ASGI middleware: the checks of :class:`HttpPolicy` and the API key, and one log line per request.

    Plain ASGI rather than ``@app.middleware`` so streamed responses and client disconnects pass
    through untouched. Only what passes every check reaches ``app``, with its body already read.
    """

    def __init__(self, app, api_key: str | None, policy: HttpPolicy | None = None):
        self.app, self.api_key, self.policy = app, api_key, policy or HttpPolicy()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status, note = time.monotonic(), [0], ""
        rid = uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = rid  # request.state.request_id, for the app's own lines
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1") or None
        extra = [(b"x-request-id", rid.encode())]
        if origin and origin_allowed(origin, self.policy):
            extra += cors_headers(origin)

        async def send_logged(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            response = self.refusal(scope, headers, origin)
            if response is None:
                try:
                    receive = await self.read_body(headers, receive)
                except ApiError as err:  # 408 or 413: the rest of the body is never read, so the connection closes
                    response = self.error(err, close=True)
                except _ClientLeft as e:
                    status[0], note = 499, f" {e}"
                    return
            if response is not None:
                return await response(scope, receive, send_logged)
            try:
                await self.app(scope, receive, send_logged)
            except Exception:
                # The app's handler already answered this 500 and logged it under the request id;
                # re-raised further, uvicorn would log the same traceback a second time, without the id.
                if status[0] != 500:
                    raise
        finally:
            method, path = escape_for_log(scope["method"], 20), escape_for_log(scope["path"])
            log.info('%s %s "%s %s" %d %.3fs%s', rid, client_address(scope, headers, self.policy), method, path,
                     status[0], time.monotonic() - start, note)

    def refusal(self, scope: dict, headers: dict[bytes, bytes], origin: str | None) -> Response | None:
        """The answer to a request refused on its headers alone (or a CORS preflight); None if it passes."""
        host = headers[b"host"].decode("latin-1") if b"host" in headers else None
        server = (scope.get("server") or (None,))[0]
        has_body = _declared_length(headers) != 0
        if err := host_error(host, server, self.policy):
            return self.error(err, close=has_body)
        if origin and not same_origin(origin, host):
            if not origin_allowed(origin, self.policy):
                return self.error(ApiError(403, f"cross-origin requests from '{escape_for_log(origin, 100)}' are "
                                                "refused (allow an origin with --cors-origin)",
                                           code="origin_not_allowed"), close=has_body)
            if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
                return preflight(headers.get(b"access-control-request-headers", b"").decode("latin-1"))
        auth = headers.get(b"authorization", b"").decode("latin-1")
        if err := builders.api_key_error(scope["method"], scope["path"], auth, self.api_key):
            return self.error(err, close=has_body)
        if err := content_type_error(scope["method"], headers.get(b"content-type", b"").decode("latin-1") or None):
            return self.error(err, close=has_body)
        if (_declared_length(headers) or 0) > self.policy.max_body_bytes:
            return self.error(too_large(self.policy), close=True)  # at once: not one byte of it is read
        return None

    @staticmethod
    def error(err: ApiError, *, close: bool) -> Response:
        # With the body still unsent or unread the connection cannot carry another request: close it.
        return JSONResponse(err.body(), status_code=err.status, headers={"Connection": "close"} if close else None)

    async def read_body(self, headers: dict[bytes, bytes], receive):
        """Read the whole body under the size cap and the deadline; a ``receive`` that hands it to the app.

        Raises:
            ApiError: 413 past the cap (chunked bodies are counted as they come), 408 past the deadline.
            _ClientLeft: the client closed the connection before the end.
        """
        if _declared_length(headers) == 0:
            return receive
        chunks, size, deadline = [], 0, time.monotonic() + self.policy.body_timeout
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except asyncio.TimeoutError:
                raise ApiError(408, f"request body not received within {self.policy.body_timeout:g}s",
                               code="request_timeout") from None
            if message["type"] == "http.disconnect":
                raise _ClientLeft(f"client left after {size} bytes of the body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.policy.max_body_bytes:
                raise too_large(self.policy)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, when it comes

        return replay


def _declared_length(headers: dict[bytes, bytes]) -> int | None:
    """Content-Length as declared (0 without one); None for a chunked body (length unknown until the end)."""
    if b"transfer-encoding" in headers:
        return None
    try:
        return int(headers.get(b"content-length", b"0"))
    except ValueError:
        return None  # h11 refuses such a request before it gets here


def over_capacity_app(max_connections: int):
    """The ASGI app that answers a connection past the cap: 503 in OpenAI's shape, then close."""
    err = ApiError(503, f"server busy: more than {max_connections} open connections; retry later",
                   type="server_error", code="too_many_connections")

    async def app(scope, receive, send):
        if scope["type"] == "http":
            log.warning('- %s "%s %s" 503 (connection cap)', (scope.get("client") or ("-",))[0],
                        escape_for_log(scope["method"], 20), escape_for_log(scope["path"]))
            await JSONResponse(err.body(), status_code=503, headers={"Connection": "close", "Retry-After": "1"})(
                scope, receive, send)

    return app
