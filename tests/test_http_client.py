"""The guarded HTTP client: address rules, redirects, caps and timeouts."""

from __future__ import annotations

import ipaddress
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from broker.config import NetworkConfig
from stages.http_client import (
    BlockedAddressError,
    FetchError,
    FetchTimeoutError,
    HttpStatusError,
    ResponseTooLargeError,
    SafeHttpClient,
    parse_ipv4_literal,
)
from tests.conftest import CASES

TEST_MODE = NetworkConfig(allow_private_addresses=True, timeout_secs=5.0)
PRODUCTION = NetworkConfig(timeout_secs=5.0)


class RecordingResolver:
    """A resolver that returns fixed addresses and records every call."""

    def __init__(self, answers: dict[str, list[str]] | None = None):
        self.answers = answers or {}
        self.calls: list[str] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append(host)
        return self.answers.get(host, ["93.184.215.14"])


class Server:
    """A loopback server whose responses come from a path -> handler table."""

    def __init__(self, routes):
        self.seen_hosts: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (name fixed by http.server)
                outer.seen_hosts.append(self.headers.get("Host", ""))
                routes[self.path](self)

            def log_message(self, format, *args):  # noqa: A002
                return

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def reply(status=200, body=b"ok", headers=None, length=True):
    def handler(request):
        request.send_response(status)
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        if length:
            request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
    return handler


def redirect(location):
    return reply(302, b"", {"Location": location})


@pytest.fixture
def no_sockets(monkeypatch):
    """Record DNS look-ups and connections instead of making them."""
    attempts = []

    def fake_getaddrinfo(host, *args, **kwargs):
        attempts.append(("dns", host))
        raise OSError("DNS is disabled in this test")

    def fake_connect(self, address):
        attempts.append(("connect", address))
        raise OSError("connections are disabled in this test")

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", fake_connect)
    return attempts


def must_reject_cases():
    cases = json.loads((CASES / "b17_urls_must_reject.json").read_text("utf-8"))
    long_url = (CASES / "b17_url_100k_chars.txt").read_text("utf-8")
    return [case["input"] for case in cases] + [long_url]


@pytest.mark.parametrize("url", must_reject_cases(), ids=lambda url: repr(url[:50]))
def test_rejects_before_dns_or_connect(url, no_sockets):
    resolver = RecordingResolver()
    client = SafeHttpClient(PRODUCTION, resolver=resolver)
    with pytest.raises(BlockedAddressError) as caught:
        client.get(url)
    assert caught.value.rule in str(caught.value)
    assert resolver.calls == []
    assert no_sockets == []


def test_rejected_message_names_rule():
    client = SafeHttpClient(PRODUCTION, resolver=RecordingResolver())
    with pytest.raises(BlockedAddressError, match="link-local address"):
        client.get("http://169.254.169.254/latest/meta-data/")


def test_resolved_private_address_rejected(no_sockets):
    resolver = RecordingResolver({"art.example": ["93.184.215.14", "10.1.2.3"]})
    client = SafeHttpClient(PRODUCTION, resolver=resolver)
    with pytest.raises(BlockedAddressError, match="private address"):
        client.get("https://art.example/image.png")
    assert resolver.calls == ["art.example"]
    assert no_sockets == []


def test_test_mode_rejects_names_without_dns(no_sockets):
    resolver = RecordingResolver()
    client = SafeHttpClient(TEST_MODE, resolver=resolver)
    with pytest.raises(BlockedAddressError, match="IP literals"):
        client.get("https://www.pixiv.net/")
    assert resolver.calls == []


def test_test_mode_rejects_private_literal(no_sockets):
    client = SafeHttpClient(TEST_MODE)
    with pytest.raises(BlockedAddressError, match="loopback"):
        client.get("http://192.168.1.1/")
    assert no_sockets == []


def test_test_mode_fetches_loopback():
    server = Server({"/a": reply(body=b"hello")})
    try:
        response = SafeHttpClient(TEST_MODE).get(server.url + "/a")
    finally:
        server.close()
    assert response.status == 200
    assert response.content == b"hello"


def test_connects_to_checked_address():
    server = Server({"/a": reply(body=b"pinned")})
    resolver = RecordingResolver({"art.example": ["127.0.0.1"]})
    client = SafeHttpClient(
        PRODUCTION, resolver=resolver, allowed_endpoints=[("127.0.0.1", server.port)]
    )
    try:
        response = client.get(f"http://art.example:{server.port}/a")
    finally:
        server.close()
    assert response.content == b"pinned"
    assert resolver.calls == ["art.example"]
    assert server.seen_hosts == [f"art.example:{server.port}"]


@pytest.mark.parametrize(
    "target",
    ["http://127.0.0.1:{other}/", "http://10.0.0.5/", "http://[::ffff:127.0.0.1]/",
     "http://2130706433/", "file:///etc/passwd"],
)
def test_redirect_hop_checked(target):
    other = Server({"/": reply(body=b"secret")})
    first = Server({"/start": redirect(target.format(other=other.port))})
    resolver = RecordingResolver()
    client = SafeHttpClient(
        PRODUCTION, resolver=resolver, allowed_endpoints=[("127.0.0.1", first.port)]
    )
    try:
        with pytest.raises(BlockedAddressError):
            client.get(first.url + "/start")
    finally:
        first.close()
        other.close()
    assert other.seen_hosts == []
    assert resolver.calls == []


def test_redirect_followed_when_allowed():
    server = Server({"/start": redirect("/end"), "/end": reply(body=b"arrived")})
    try:
        response = SafeHttpClient(TEST_MODE).get(server.url + "/start")
    finally:
        server.close()
    assert response.content == b"arrived"
    assert response.url == server.url + "/end"


def test_redirect_loop_capped():
    server = Server({"/loop": redirect("/loop")})
    network = NetworkConfig(allow_private_addresses=True, max_redirects=3)
    client = SafeHttpClient(network)
    try:
        with pytest.raises(FetchError, match="too many redirects"):
            client.get(server.url + "/loop")
    finally:
        server.close()
    assert len(server.seen_hosts) == 4


def test_declared_size_over_cap():
    server = Server({"/big": reply(body=b"x" * 100_000)})
    try:
        with pytest.raises(ResponseTooLargeError, match="10000"):
            SafeHttpClient(TEST_MODE).get(server.url + "/big", max_bytes=10_000)
    finally:
        server.close()


def test_streamed_size_over_cap():
    server = Server({"/big": reply(body=b"x" * 300_000, length=False)})
    try:
        with pytest.raises(ResponseTooLargeError):
            SafeHttpClient(TEST_MODE).get(server.url + "/big", max_bytes=100_000)
    finally:
        server.close()


def slow(request):
    time.sleep(2)
    reply()(request)


def test_slow_server_times_out():
    server = Server({"/slow": slow})
    network = NetworkConfig(allow_private_addresses=True, timeout_secs=0.5)
    client = SafeHttpClient(network)
    started = time.monotonic()
    try:
        with pytest.raises(FetchTimeoutError, match="timed out"):
            client.get(server.url + "/slow")
    finally:
        server.close()
    assert time.monotonic() - started < 1.9


def test_error_status_keeps_body():
    server = Server({"/missing": reply(404, b'{"error": "Not found"}')})
    try:
        with pytest.raises(HttpStatusError) as caught:
            SafeHttpClient(TEST_MODE).get(server.url + "/missing")
    finally:
        server.close()
    assert caught.value.status == 404
    assert caught.value.content == b'{"error": "Not found"}'


def test_get_json_invalid_body():
    server = Server({"/page": reply(body=b"<html>")})
    try:
        with pytest.raises(FetchError, match="invalid JSON"):
            SafeHttpClient(TEST_MODE).get_json(server.url + "/page")
    finally:
        server.close()


def test_sends_referer_and_agent():
    seen = {}

    def record(request):
        seen.update(request.headers)
        reply()(request)

    server = Server({"/img": record})
    try:
        client = SafeHttpClient(TEST_MODE)
        client.get(server.url + "/img", referer="https://www.pixiv.net/")
    finally:
        server.close()
    assert seen["Referer"] == "https://www.pixiv.net/"
    assert seen["User-Agent"] == TEST_MODE.user_agent


@pytest.mark.parametrize(
    ("host", "address"),
    [("2130706433", "127.0.0.1"), ("0x7f000001", "127.0.0.1"),
     ("017700000001", "127.0.0.1"),
     ("127.1", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("0", "0.0.0.0"),
     ("10.1", "10.0.0.1"), ("192.168.257", "192.168.1.1"), ("8.8.8.8.", "8.8.8.8")],
)
def test_ipv4_notations(host, address):
    assert parse_ipv4_literal(host) == ipaddress.IPv4Address(address)


@pytest.mark.parametrize("host", ["1.2.3.4.5", "256.1.1.1", "1.2.3.256", "0x1g.1.1.1"])
def test_invalid_ipv4_notations(host):
    with pytest.raises(ValueError):
        parse_ipv4_literal(host)


def test_names_are_not_ipv4():
    assert parse_ipv4_literal("example.org") is None


@pytest.mark.parametrize(
    "address",
    ["2002:7f00:1::1", "64:ff9b::a00:1", "::", "ff02::1", "224.0.0.1", "100.64.0.1",
     "fe80::1", "fd00:ec2::254"],
)
def test_non_public_addresses_rejected(address, no_sockets):
    resolver = RecordingResolver({"art.example": [address]})
    client = SafeHttpClient(PRODUCTION, resolver=resolver)
    with pytest.raises(BlockedAddressError):
        client.get("https://art.example/")
    assert no_sockets == []
