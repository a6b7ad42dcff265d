"""The connection guard of a real `edgerules serve`, driven with raw sockets: header caps (431),
header and body timeouts (408, then closed), idle keep-alive connections closed, the connection cap
(503), and the gateway's memory under a header flood."""
from __future__ import annotations

import json
import select
import socket
import time

import pytest

from gw import start_gateway

POLICY = 'provider demo { format echo }\nrule all { route demo/echo }\n'
CHAT = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 20_000}]}).encode()
DEADLINE = 30.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    gw = start_gateway(POLICY, tmp_path_factory.mktemp("limits"), "--no-watch", "--log-level", "warning",
                       "--header-timeout", "1s", "--body-timeout", "1s", "--keep-alive-timeout", "1s")
    yield gw
    gw.stop()


def connect(gw) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=DEADLINE)
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def status_and_error(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"connection: close" in head.lower()
    return int(head.split()[1]), json.loads(body)["error"]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_server_connections(port: int) -> int:
    """Established TCP connections whose local end is the gateway's port (server side)."""
    local = f":{port:04X}"
    with open("/proc/net/tcp") as table:
        next(table)
        return sum(1 for line in table if line.split()[1].endswith(local) and line.split()[3] == "01")


def wait_for(condition, what: str):
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"{what} within {DEADLINE:g}s"
        time.sleep(0.05)


def flood(gw, line: bytes, limit_bytes: int) -> bytes:
    """Send header lines until the server answers (or limit_bytes were sent); return its answer."""
    sock = connect(gw)
    try:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        sent = 0
        while sent < limit_bytes:
            try:
                sock.sendall(line)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(line)
            if select.select([sock], [], [], 0)[0]:
                break
        return read_answer(sock)
    finally:
        sock.close()


def test_normal_requests_pass_the_guard(gateway):
    # A 20 kB single-line body read with the head, and 60 headers, are under every cap.
    sock = connect(gateway)
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(60))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                 + headers + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(CHAT) + CHAT)
    answer = read_answer(sock)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("line, code", [(b"x-small: v\r\n", "too_many_headers"),
                                        (b"x-big: " + b"v" * 2000 + b"\r\n", "headers_too_large"),
                                        (b"v" * 4096, "header_line_too_large")],
                         ids=["many headers", "many bytes", "one endless line"])
def test_header_floods_get_431(gateway, line, code):
    status, error = status_and_error(flood(gateway, line, 64 << 20))
    assert status == 431 and error["code"] == code and error["type"] == "invalid_request_error"
    assert error["message"].startswith(("the request has more than 100 headers", "the request headers are larger",
                                        "a request header line is longer"))


def test_a_long_request_line_gets_414(gateway):
    sock = connect(gateway)
    sock.sendall(b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nhost: x\r\n\r\n")
    status, error = status_and_error(read_answer(sock))
    sock.close()
    assert status == 414 and error["code"] == "request_line_too_large"


def test_header_flood_keeps_memory_bounded(gateway):
    before = rss_kib(gateway.pid)
    floods = 0
    for i in range(20):    # 20 connections, up to 8 MB each, small headers then one endless line
        line = b"x-flood: 0123456789\r\n" if i % 2 else b"y" * 65536
        status, _ = status_and_error(flood(gateway, line, 8 << 20))
        assert status == 431
        floods += 1
    after = rss_kib(gateway.pid)
    print(f"\nRSS under a header flood of {floods} connections: {before} KiB before, {after} KiB after")
    assert after - before < 20 * 1024
    assert gateway.http.get("/healthz").status_code == 200


def test_slow_idle_and_slowloris_connections_are_closed(gateway):
    """Connections that never finish their head or body, or sit idle, are closed by the server."""
    port = gateway.port
    # Earlier keep-alive connections (the fixture's own client) close after the 1 s idle timeout.
    wait_for(lambda: open_server_connections(port) == 0, "earlier connections to close")
    baseline = 0
    socks = {"idle before a request": [], "slow header": [], "slowloris": [], "slow body": [], "idle after a request": []}
    for _ in range(10):
        socks["idle before a request"].append(connect(gateway))
        s = connect(gateway)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        socks["slow header"].append(s)
        s = connect(gateway)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\n")
        socks["slowloris"].append(s)
        s = connect(gateway)
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                  b"content-length: 1000\r\n\r\n{")
        socks["slow body"].append(s)
        s = connect(gateway)
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        socks["idle after a request"].append(s)
    opened = open_server_connections(port) - baseline
    assert opened == 50

    # The slowloris ones keep sending a header byte by byte, faster than any per-read timeout.
    def all_closed_by_server():
        for s in socks["slowloris"]:
            try:
                s.send(b"x")
            except OSError:
                pass
        return open_server_connections(port) - baseline <= 0

    deadline = time.monotonic() + DEADLINE
    while not all_closed_by_server():
        assert time.monotonic() < deadline, "the gateway kept slow or idle connections open"
        time.sleep(0.2)
    left = max(0, open_server_connections(port) - baseline)
    print(f"\nconnections left open after the timeouts: {left} of {opened}")
    for kind, group in socks.items():
        for s in group:
            answer = read_answer(s)
            s.close()
            if kind in ("slow header", "slowloris"):
                assert status_and_error(answer)[1]["code"] == "header_timeout"
            elif kind == "slow body":
                assert status_and_error(answer)[1]["code"] == "body_timeout"
            elif kind == "idle after a request":
                assert answer.startswith(b"HTTP/1.1 200 ")   # its answer, then the close
    assert gateway.http.get("/healthz").status_code == 200


def test_the_connection_cap_refuses_clearly(tmp_path):
    gw = start_gateway(POLICY, tmp_path, "--no-watch", "--max-connections", "5", "--header-timeout", "60s")
    try:
        held = [connect(gw) for _ in range(5)]
        wait_for(lambda: open_server_connections(gw.port) >= 5, "5 connections established")
        extra = connect(gw)
        extra.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        answer = read_answer(extra)
        extra.close()
        status, error = status_and_error(answer)
        assert status == 503 and error["code"] == "too_many_connections" and error["type"] == "server_error"
        assert b"retry-after: 1" in answer.lower()
        for s in held:
            s.close()
        wait_for(lambda: open_server_connections(gw.port) == 0, "the held connections to close")
        with socket.create_connection(("127.0.0.1", gw.port), timeout=DEADLINE) as again:
            again.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            assert read_answer(again).startswith(b"HTTP/1.1 200 ")
    finally:
        gw.stop()
