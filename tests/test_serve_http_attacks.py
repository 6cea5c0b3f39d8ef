"""`foundry serve` under hostile HTTP: oversized, slow and cross-site requests against a real server.

Every case talks to a real uvicorn server on 127.0.0.1 (a small random model behind it): a raw
socket where the attack is in the bytes on the wire (sizes, chunking, stalls, half-sent
requests), httpx for the rest. Each refusal is asserted with its exact status and OpenAI's error
shape ``{"error": {"message", "type", "param", "code"}}``. The limits are the defaults'
shapes at test scale (a 4 KiB body cap, deadlines of a few seconds).
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers import one_line_error, run_cli
from test_serve import _start_cli, chatty_model, wait_until

CAP = 4096  # the test servers' body cap
DEADLINE = 3.0  # their header and body deadlines, seconds
PATIENCE = 60.0  # how long a client waits before calling the server hung (never reached when it works)
JSON = {"Content-Type": "application/json"}
FOREIGN = "http://evil.example"
APP_ORIGIN = "http://app.example:3000"


# ---------------------------------------------------------------------------- servers
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return chatty_model(tmp_path_factory.mktemp("attacks") / "m", dim=32, n_layers=1, max_seq_len=128)


def start(model_dir: Path, **limits):
    from llm_foundry.inference.engine import Engine
    from llm_foundry.serve import ServerThread, create_app
    from llm_foundry.serve.guard import HttpPolicy

    policy = HttpPolicy(**{"max_body_bytes": CAP, "body_timeout": DEADLINE, "header_timeout": DEADLINE, **limits})
    engine = Engine.from_pretrained(model_dir, device="cpu", precision="fp32")
    return ServerThread(create_app(engine, "m", policy=policy))


@pytest.fixture(scope="module")
def server(model_dir):
    """Keyless, on loopback: the default that a web page in the user's browser can reach."""
    with start(model_dir) as s:
        yield s


@pytest.fixture(scope="module")
def open_server(model_dir):
    """One extra host name, one allowed web origin, behind a proxy."""
    with start(model_dir, allowed_hosts=("myhost.lan",), cors_origins=(APP_ORIGIN,), behind_proxy=True) as s:
        yield s


@pytest.fixture()
def logs(caplog):
    caplog.set_level(logging.INFO)
    return caplog


def completion(**extra) -> dict:
    return {"model": "m", "prompt": "hi", "max_tokens": 1, **extra}


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    """``r`` is a ``status`` in OpenAI's error shape with ``code``; returns the error."""
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == code and err["message"], err
    return err


# ---------------------------------------------------------------------------- raw HTTP
def connect(server) -> socket.socket:
    sock = socket.create_connection((server.host, server.port))
    sock.settimeout(PATIENCE)
    return sock


def head(path: str, **headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: localhost", "Content-Type: application/json",
             *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of the one response on ``sock`` (a hang fails after PATIENCE seconds)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed without a response: {data!r}"
        data += chunk
    top, body = data.split(b"\r\n\r\n", 1)
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    return int(status_line.split()[1]), headers, body


def raw_error(sock: socket.socket, status: int, code: str) -> dict[str, str]:
    got, headers, body = read_response(sock)
    assert_error(httpx.Response(got, content=body), status, code)
    return headers


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed the connection (a hang fails after PATIENCE seconds)."""
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def trickle(sock: socket.socket, data: bytes, every: float = 0.25) -> threading.Thread:
    """Send ``data`` a byte at a time in the background, as a slow-loris client does, until refused."""
    def run():
        for byte in data:
            try:
                sock.send(bytes([byte]))
            except OSError:
                return
            time.sleep(every)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------------------- bodies
def test_declared_body_over_cap_is_refused_before_it_is_sent(server):
    """Content-Length 64 MB: the 413 arrives while not one byte of the body has been sent."""
    with connect(server) as sock:
        sock.sendall(head("/v1/completions", Content_Length=str(64 * 1024 * 1024)))
        headers = raw_error(sock, 413, "request_too_large")
        assert headers["connection"] == "close" and closed_by_server(sock)


def test_chunked_body_over_cap_is_refused_as_it_passes(server):
    """A chunked body has no declared length: it is counted as it comes, 413 once past the cap."""
    with connect(server) as sock:
        sock.sendall(head("/v1/completions", Transfer_Encoding="chunked") + b"%x\r\n" % (CAP + 1) + b"x" * (CAP + 1))
        raw_error(sock, 413, "request_too_large")  # the final chunk is never sent
        assert closed_by_server(sock)
    with connect(server) as sock:  # a chunked body under the cap is served
        body = b'{"model": "m", "prompt": "hi", "max_tokens": 1}'
        sock.sendall(head("/v1/completions", Transfer_Encoding="chunked") +
                     b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:])) + b"0\r\n\r\n")
        assert read_response(sock)[0] == 200


@pytest.mark.parametrize("framing", ["declared", "chunked"])
def test_a_client_that_sends_its_whole_oversized_body_reads_the_413(server, framing):
    """Most clients send the body right after the headers without waiting for an answer. The server
    must not close over the bytes still arriving: the kernel would answer them with a reset, and a
    client reading to the end of the connection gets "connection reset" instead of the 413."""
    body = b"x" * (8 << 20)  # more than the socket buffers hold: sending outlasts the answer
    if framing == "declared":
        request = head("/v1/completions", Content_Length=str(len(body))) + body
    else:
        request = head("/v1/completions", Transfer_Encoding="chunked") + b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n"
    with connect(server) as sock:
        sent = threading.Event()

        def send_all():
            try:
                sock.sendall(request)
            except OSError:
                pass
            sent.set()

        threading.Thread(target=send_all, daemon=True).start()
        data = b""  # read while the body is still going out, to the end: a reset fails the test
        while chunk := sock.recv(65536):
            data += chunk
        assert sent.wait(PATIENCE)
    top, body = data.split(b"\r\n\r\n", 1)
    assert top.startswith(b"HTTP/1.1 413 ")
    assert_error(httpx.Response(413, content=body), 413, "request_too_large")


def test_stalled_body_gets_408_and_is_closed(server):
    with connect(server) as sock:
        sock.sendall(head("/v1/completions", Content_Length="100") + b'{"model":')
        headers = raw_error(sock, 408, "request_timeout")
        assert headers["connection"] == "close" and closed_by_server(sock)


def test_trickled_body_gets_408_at_the_deadline(server):
    """The deadline covers the whole body: a byte every quarter second does not extend it."""
    with connect(server) as sock:
        sock.sendall(head("/v1/completions", Content_Length="1000"))
        trickle(sock, b"x" * 1000)
        raw_error(sock, 408, "request_timeout")
        assert closed_by_server(sock)


def test_client_leaving_mid_body_logs_one_line(server, logs):
    """No traceback, no 500: one line, the request's own, says the client left."""
    with connect(server) as sock:
        sock.sendall(head("/v1/chat/completions", Content_Length="1000") + b'{"model": "m", "mess')
    wait_until(lambda: any("client left" in r.getMessage() for r in logs.records))
    lines = [r for r in logs.records if "/v1/chat/completions" in r.getMessage() or r.levelno >= logging.WARNING]
    assert len(lines) == 1 and " 499 " in lines[0].getMessage(), [r.getMessage() for r in lines]
    assert all(r.exc_info is None for r in logs.records), "a traceback was logged"


# ---------------------------------------------------------------------------- slow clients and connections
def test_silent_connection_is_closed_after_the_header_deadline(server):
    with connect(server) as sock:
        assert closed_by_server(sock)


def test_trickled_headers_are_closed_after_the_header_deadline(server):
    """Slow loris: headers that never end, a byte at a time, are cut off at the deadline."""
    with connect(server) as sock:
        trickle(sock, b"GET /health HTTP/1.1\r\nHost: localhost\r\n" + b"X-Slow: " + b"a" * 1000)
        assert closed_by_server(sock)


def test_connections_past_the_cap_get_503(model_dir):
    with start(model_dir, max_connections=2, header_timeout=PATIENCE) as s:
        idle = [connect(s), connect(s)]  # two clients that connect and say nothing hold both places
        try:
            r = httpx.get(s.url + "/health", timeout=PATIENCE)
            assert_error(r, 503, "too_many_connections")
            assert r.headers["retry-after"] and r.headers["connection"] == "close"
        finally:
            for sock in idle:
                sock.close()
        wait_until(lambda: httpx.get(s.url + "/health", timeout=PATIENCE).status_code == 200)


# ---------------------------------------------------------------------------- browsers: Host, Origin, Content-Type
@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "localhost.evil"])
def test_foreign_host_is_refused(server, host):
    """DNS rebinding: a page at evil.example whose name now points at 127.0.0.1 sends its own Host."""
    assert_error(httpx.get(server.url + "/v1/models", headers={"Host": host}), 400, "invalid_host")
    r = httpx.post(server.url + "/v1/completions", json=completion(), headers={"Host": host})
    assert_error(r, 400, "invalid_host")


def test_loopback_and_allowed_hosts_are_served(server, open_server):
    for host in (f"localhost:{server.port}", "localhost", f"127.0.0.1:{server.port}", f"[::1]:{server.port}",
                 "LOCALHOST."):
        assert httpx.get(server.url + "/v1/models", headers={"Host": host}).status_code == 200, host
    assert httpx.get(open_server.url + "/v1/models", headers={"Host": "myhost.lan:80"}).status_code == 200
    assert_error(httpx.get(server.url + "/v1/models", headers={"Host": "myhost.lan"}), 400, "invalid_host")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                                          None])
def test_post_that_is_not_json_gets_415(server, content_type):
    """What a cross-site form or a simple fetch() can send without a preflight is never processed."""
    done = httpx.get(server.url + "/health").json()["completed"]
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(server.url + "/v1/completions", content=httpx.Request("POST", "/", json=completion()).read(),
                   headers=headers)
    assert_error(r, 415, "unsupported_media_type")
    assert httpx.get(server.url + "/health").json()["completed"] == done  # nothing was generated
    assert httpx.post(server.url + "/v1/completions", json=completion(),
                      headers={"Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_foreign_origin_is_refused_and_the_page_origin_served(server):
    r = httpx.post(server.url + "/v1/completions", json=completion(), headers={"Origin": FOREIGN})
    assert_error(r, 403, "origin_not_allowed")
    assert "access-control-allow-origin" not in r.headers
    assert_error(httpx.get(server.url + "/v1/models", headers={"Origin": "null"}), 403, "origin_not_allowed")
    # the chat page's own requests carry the server's origin, as 127.0.0.1 or as localhost
    assert httpx.post(server.url + "/v1/completions", json=completion(),
                      headers={"Origin": server.url}).status_code == 200
    own = f"http://localhost:{server.port}"
    assert httpx.post(server.url + "/v1/completions", json=completion(),
                      headers={"Origin": own, "Host": f"localhost:{server.port}"}).status_code == 200


def test_allowed_cors_origin_gets_preflight_and_header(open_server):
    preflight = httpx.options(open_server.url + "/v1/chat/completions", headers={
        "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"].lower()
    r = httpx.post(open_server.url + "/v1/completions", json=completion(), headers={"Origin": APP_ORIGIN})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == APP_ORIGIN
    r = httpx.post(open_server.url + "/v1/completions", json=completion(), headers={"Origin": FOREIGN})
    assert_error(r, 403, "origin_not_allowed")


@pytest.mark.parametrize("path", ["/", "/static/index.html", "/static/app.js", "/static/style.css"])
def test_every_page_file_has_the_csp(server, path):
    r = httpx.get(server.url + path)
    assert r.status_code == 200
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------- the log
def request_lines(logs, marker: str) -> list[str]:
    """The server's log lines that name ``marker`` (a request id or a unique path), once there is one."""
    def lines():
        return [r.getMessage() for r in logs.records if r.name == "llm_foundry.serve" and marker in r.getMessage()]

    wait_until(lines)
    return lines()


def test_request_log_is_one_escaped_line_with_the_request_id(server, logs):
    r = httpx.get(server.url + "/v1/a%0Ab%0D%1B%5B31m%E4%B8%AD%22" + "x" * 5000)
    assert_error(r, 404, "not_found")
    rid = r.headers["x-request-id"]
    (line,) = request_lines(logs, rid)
    assert line.isprintable() and line.isascii(), line
    assert "/v1/a\\nb\\r\\x1b[31m\\u4e2d\\\"" in line and '" 404 ' in line
    assert len(line) < 400  # the path is cut
    other = httpx.get(server.url + "/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", rid) and other != rid


def test_x_forwarded_for_is_ignored_by_default(server, logs):
    httpx.get(server.url + "/xff-default", headers={"X-Forwarded-For": "6.6.6.6"})
    (line,) = request_lines(logs, "/xff-default")
    assert " 127.0.0.1 " in line and "6.6.6.6" not in line


def test_x_forwarded_for_last_hop_is_the_client_behind_a_proxy(open_server, logs):
    httpx.get(open_server.url + "/xff-proxy", headers={"X-Forwarded-For": "6.6.6.6, 10.1.2.3"})
    (line,) = request_lines(logs, "/xff-proxy")
    assert " 10.1.2.3 " in line and "6.6.6.6" not in line


# ---------------------------------------------------------------------------- the command line
def cli_error(capsys, *args) -> str:
    """Run ``foundry serve ARGS`` in this process; assert exit 1 with one ``error:`` line; return it."""
    from llm_foundry.cli.main import main

    capsys.readouterr()
    assert main(["serve", *map(str, args)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    return err


def test_api_key_file_errors(tmp_path, model_dir, capsys):
    missing, empty = tmp_path / "missing", tmp_path / "empty"
    empty.write_text("  \n")
    # as a user runs it: a separate process, exit status and one line
    proc = run_cli("serve", model_dir, "--api-key-file", missing)
    one_line_error(proc, "--api-key-file", "cannot read")
    assert proc.returncode == 1
    assert "empty" in cli_error(capsys, model_dir, "--api-key-file", empty)
    assert "not both" in cli_error(capsys, model_dir, "--api-key-file", empty, "--api-key", "k")
    assert "cannot read" in cli_error(capsys, model_dir, "--api-key-file", tmp_path)  # a folder


@pytest.mark.parametrize("args, fragment", [(["--cors-origin", "evil.example"], "--cors-origin"),
                                             (["--cors-origin", "http://a.example/path"], "--cors-origin"),
                                             (["--allowed-host", "http://myhost"], "--allowed-host"),
                                             (["--max-body-bytes", "0"], "--max-body-bytes"),
                                             (["--max-connections", "0"], "--max-connections")])
def test_security_options_are_checked(model_dir, capsys, args, fragment):
    assert fragment in cli_error(capsys, model_dir, *args)


def test_api_key_from_a_file(tmp_path, model_dir):
    key = tmp_path / "key"
    key.write_text("sk-from-file\n")
    proc, url = _start_cli(model_dir, "--api-key-file", str(key), "--max-body-bytes", "100")
    try:
        assert_error(httpx.get(url + "/v1/models"), 401, "invalid_api_key")
        auth = {"Authorization": "Bearer sk-from-file"}
        assert httpx.get(url + "/v1/models", headers=auth).status_code == 200
        r = httpx.post(url + "/v1/completions", json=completion(prompt="x" * 200), headers=auth)
        assert_error(r, 413, "request_too_large")
    finally:
        proc.terminate()
        try:
            proc.wait(PATIENCE)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert "sk-from-file" not in proc.stderr.read()
