"""The one outbound HTTP client of the service, with an address guard.

Every page, API call and image that the stages fetch from the internet
goes through ``SafeHttpClient``. Before anything is sent, the URL is
checked (scheme, length, characters, user info, port) and its host is
resolved once. Every resolved address must be globally routable. The
connection then goes to that checked address, so a DNS record that
changes between the check and the connection cannot redirect it. The
same checks run again on every redirect hop.

Exceptions::

    FetchError                 any fetch that did not give a usable response
    +-- BlockedAddressError    the URL or one of its addresses breaks a rule
    +-- ResponseTooLargeError  the body passed the size cap
    +-- HttpStatusError        the server returned 4xx or 5xx (``.status``)
    +-- FetchTimeoutError      connecting or reading took too long

With ``NetworkConfig.allow_private_addresses`` the client runs in test
mode: it connects only to loopback IP literals, so a test can never
resolve or reach a real host.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import idna
import requests
from requests.adapters import HTTPAdapter
from requests.structures import CaseInsensitiveDict

from broker.config import NetworkConfig

logger = logging.getLogger(__name__)

MAX_URL_CHARS = 4096
ALLOWED_SCHEMES = ("http", "https")
DEFAULT_PORTS = {"http": 80, "https": 443}
WEB_PORTS = frozenset({80, 443, 8080, 8443})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
CHUNK_BYTES = 64 * 1024

# Names that point at the local machine or at cloud metadata services, and
# public wildcard-DNS services whose names embed an IP address (for example
# 127-0-0-1.nip.io). They are rejected by name, before any DNS query.
BLOCKED_NAMES = frozenset({"localhost", "metadata.google.internal", "metadata"})
BLOCKED_NAME_SUFFIXES = (
    ".localhost",
    ".local",
    ".localdomain",
    ".internal",
    ".home.arpa",
    ".nip.io",
    ".sslip.io",
    ".xip.io",
    ".traefik.me",
    ".localtest.me",
    ".lvh.me",
)
NAT64_PREFIX = ipaddress.ip_network("64:ff9b::/96")
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")

_CONTROL_CHARS = re.compile(r"[\x00-\x20\x7f]")
_ENCODED_CONTROL = re.compile(r"%(?:[01][0-9a-fA-F]|7[fF])")
_NUMERIC_LABEL = re.compile(r"^(?:0[xX][0-9a-fA-F]*|[0-9]+)$")

Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """A fetch did not give a usable response; the message names the URL."""

    def __init__(self, message: str, url: str):
        super().__init__(message)
        self.url = url


class BlockedAddressError(FetchError):
    """The URL, or an address its host resolves to, breaks a guard rule."""

    def __init__(self, url: str, rule: str):
        super().__init__(f"URL rejected ({rule}): {_shorten(url)}", url)
        self.rule = rule


class ResponseTooLargeError(FetchError):
    """The response body passed the size cap, so the download was aborted."""


class HttpStatusError(FetchError):
    """The server returned a 4xx or 5xx status.

    ``content`` holds the body (within the size cap), because sites send
    their error details there.
    """

    def __init__(self, url: str, status: int, content: bytes = b""):
        super().__init__(f"HTTP status {status} from {_shorten(url)}", url)
        self.status = status
        self.content = content


class FetchTimeoutError(FetchError):
    """Connecting or reading took longer than the configured timeout."""


@dataclass(frozen=True)
class Response:
    """A successful response, after redirects, with the whole body read."""

    url: str
    status: int
    headers: Mapping[str, str] = field(repr=False)
    content: bytes = field(repr=False)

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class _Target:
    """A checked URL: where to connect and what to send as Host."""

    url: str
    scheme: str
    host: str  # ASCII host name or IP literal, without brackets
    port: int
    address: str  # the checked IP address the connection goes to


def _shorten(url: str, limit: int = 200) -> str:
    return url if len(url) <= limit else url[:limit] + f"... ({len(url)} chars)"


def default_resolver(host: str, port: int) -> list[str]:
    """Resolve a host name to its IP addresses with the system resolver."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][0] for info in infos]


def parse_ipv4_literal(host: str) -> ipaddress.IPv4Address | None:
    """Parse the IPv4 notations that browsers and inet_aton accept.

    Accepts one to four dot-separated parts, each decimal, octal (leading
    0) or hex (0x), so ``2130706433``, ``0x7f000001``, ``0177.0.0.1`` and
    ``127.1`` all give 127.0.0.1. Returns None when the host is a name.
    Raises ValueError when it looks numeric but is no valid address.
    """
    labels = host.split(".")
    if labels and labels[-1] == "":
        labels.pop()
    if not labels or not _NUMERIC_LABEL.match(labels[-1]):
        return None
    if len(labels) > 4:
        raise ValueError("more than four parts")
    numbers = []
    for label in labels:
        if not _NUMERIC_LABEL.match(label):
            raise ValueError(f"part {label!r} is not a number")
        if label[:2].lower() == "0x":
            numbers.append(int(label[2:] or "0", 16))
        elif len(label) > 1 and label.startswith("0"):
            numbers.append(int(label, 8))
        else:
            numbers.append(int(label))
    *leading, last = numbers
    if any(number > 255 for number in leading):
        raise ValueError("a part is above 255")
    if last >= 256 ** (5 - len(numbers)):
        raise ValueError("the last part is too large")
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def address_rule(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Return the rule an address breaks, or None for a public address.

    IPv6 addresses that embed an IPv4 address (IPv4-mapped, 6to4, Teredo,
    NAT64) are judged by the embedded address too.
    """
    if address.is_loopback:
        return "loopback address"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if address.version == 4 and address in SHARED_ADDRESS_SPACE:
        return "shared (carrier-grade NAT) address"
    if address.is_private:
        return "private address"
    if address.is_reserved:
        return "reserved address"
    if address.version == 6:
        embedded = [address.ipv4_mapped, address.sixtofour]
        if address.teredo:
            embedded.extend(address.teredo)
        if address in NAT64_PREFIX:
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        for inner in embedded:
            if inner is not None and address_rule(inner) is not None:
                return f"IPv6 address embedding a {address_rule(inner)}"
    if not address.is_global:
        return "address not globally routable"
    return None


class _PinnedAdapter(HTTPAdapter):
    """Send HTTPS to an IP address while checking the certificate's name."""

    def __init__(self, server_hostname: str):
        self._server_hostname = server_hostname
        super().__init__(max_retries=0)

    def init_poolmanager(self, connections, maxsize, block=False, **pool_kwargs):
        pool_kwargs["server_hostname"] = self._server_hostname
        pool_kwargs["assert_hostname"] = self._server_hostname
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


class SafeHttpClient:
    """Fetch public http(s) URLs with timeouts, a size cap and an address guard.

    ``resolver`` replaces the system resolver (tests record its calls).
    ``allowed_endpoints`` is for tests only: (IP, port) pairs that pass
    the address and port rules even outside test mode, so a test can
    serve a first hop on loopback and check that a later hop is refused.
    """

    def __init__(
        self,
        network: NetworkConfig,
        *,
        resolver: Resolver | None = None,
        allowed_endpoints: Iterable[tuple[str, int]] = (),
    ):
        self._network = network
        self._resolver = resolver or default_resolver
        self._allowed_endpoints = {
            (str(ipaddress.ip_address(ip)), int(port)) for ip, port in allowed_endpoints
        }

    def get(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        referer: str | None = None,
    ) -> Response:
        """Fetch ``url``, following checked redirects, and read the body.

        Raises a FetchError subclass naming the URL and the failed rule.
        """
        limit = self._network.max_response_bytes if max_bytes is None else max_bytes
        deadline = time.monotonic() + self._network.timeout_secs
        request_headers = {"User-Agent": self._network.user_agent, "Accept": "*/*"}
        request_headers.update(headers or {})
        if referer:
            request_headers["Referer"] = referer

        current = url
        for _hop in range(self._network.max_redirects + 1):
            target = self.check_url(current)
            location, response = self._send(target, request_headers, limit, deadline)
            if location is None:
                return response
            logger.debug(
                "redirect from %s to %s", _shorten(current), _shorten(location)
            )
            current = urllib.parse.urljoin(target.url, location)
        raise FetchError(
            f"too many redirects (more than {self._network.max_redirects}) "
            f"starting at {_shorten(url)}",
            url,
        )

    def get_json(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        max_bytes: int | None = None,
        referer: str | None = None,
    ) -> object:
        """Fetch ``url`` and decode its body as JSON.

        Raises FetchError when the body is not valid JSON.
        """
        response = self.get(url, headers=headers, max_bytes=max_bytes, referer=referer)
        try:
            return json.loads(response.content)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FetchError(
                f"invalid JSON from {_shorten(response.url)}: {error}", response.url
            ) from error

    def check_url(self, url: str) -> _Target:
        """Check a URL against every rule and resolve its host.

        Every rule that can be judged from the text runs before the
        resolver is called. Raises BlockedAddressError naming the rule.
        """
        scheme, host, port = self._check_text(url)
        literal = self._parse_literal(url, host)
        if literal is not None:
            self._check_address(url, literal, port)
            return _Target(url, scheme, host, port, str(literal))

        if self._network.allow_private_addresses:
            raise BlockedAddressError(url, "test mode connects only to IP literals")
        if host in BLOCKED_NAMES or host.endswith(BLOCKED_NAME_SUFFIXES):
            raise BlockedAddressError(url, "local or metadata host name")
        allowed_ports = {allowed_port for _ip, allowed_port in self._allowed_endpoints}
        if port not in WEB_PORTS and port not in allowed_ports:
            raise BlockedAddressError(url, f"port {port} is not a web port")
        try:
            addresses = self._resolver(host, port)
        except (OSError, UnicodeError) as error:
            raise FetchError(f"cannot resolve host {host!r} of {url}: {error}", url)
        if not addresses:
            raise FetchError(f"host {host!r} of {url} has no address", url)
        checked = [ipaddress.ip_address(a.split("%", 1)[0]) for a in addresses]
        for address in checked:
            self._check_address(url, address, port)
        return _Target(url, scheme, host, port, str(checked[0]))

    def _check_text(self, url: str) -> tuple[str, str, int]:
        if len(url) > MAX_URL_CHARS:
            raise BlockedAddressError(url, f"URL longer than {MAX_URL_CHARS} chars")
        if _CONTROL_CHARS.search(url):
            raise BlockedAddressError(url, "whitespace or control character in URL")
        if _ENCODED_CONTROL.search(url):
            raise BlockedAddressError(url, "percent-encoded control character in URL")
        if "\\" in url:
            raise BlockedAddressError(url, "backslash in URL")
        scheme, separator, rest = url.partition("://")
        scheme = scheme.lower()
        if not separator or scheme not in ALLOWED_SCHEMES:
            raise BlockedAddressError(url, "scheme must be http:// or https://")

        authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
        if "@" in authority:
            raise BlockedAddressError(url, "user info in URL")
        host, port = _split_authority(url, authority, DEFAULT_PORTS[scheme])
        return scheme, host, port

    def _parse_literal(self, url: str, host: str):
        if ":" in host:
            try:
                return ipaddress.IPv6Address(host.split("%", 1)[0])
            except ValueError as error:
                raise BlockedAddressError(url, "invalid IPv6 address") from error
        try:
            return parse_ipv4_literal(host)
        except ValueError as error:
            raise BlockedAddressError(url, f"invalid IPv4 address: {error}") from error

    def _check_address(self, url: str, address, port: int) -> None:
        if (str(address), port) in self._allowed_endpoints:
            return
        if self._network.allow_private_addresses:
            if not address.is_loopback:
                raise BlockedAddressError(url, "test mode connects only to loopback")
            return
        rule = address_rule(address)
        if rule is not None:
            raise BlockedAddressError(url, rule)
        if port not in WEB_PORTS:
            raise BlockedAddressError(url, f"port {port} is not a web port")

    def _send(
        self, target: _Target, headers: dict, limit: int, deadline: float
    ) -> tuple[str | None, Response | None]:
        """Send one request to the checked address and read the response.

        Returns (redirect location, None) or (None, response).
        """
        address = target.address
        if ":" in address:
            address = f"[{address}]"
        split = urllib.parse.urlsplit(target.url)
        pinned_url = urllib.parse.urlunsplit(
            (
                target.scheme,
                f"{address}:{target.port}",
                split.path or "/",
                split.query,
                "",
            )
        )
        host_header = target.host if ":" not in target.host else f"[{target.host}]"
        if target.port != DEFAULT_PORTS[target.scheme]:
            host_header = f"{host_header}:{target.port}"

        session = requests.Session()
        session.trust_env = False  # A proxy from the environment would skip the guard.
        session.mount("https://", _PinnedAdapter(target.host))
        remaining = max(deadline - time.monotonic(), 0.001)
        try:
            with session:
                answer = session.get(
                    pinned_url,
                    headers={**headers, "Host": host_header},
                    allow_redirects=False,
                    stream=True,
                    timeout=remaining,
                )
                with answer:
                    return self._read(target, answer, limit, deadline)
        except requests.Timeout as error:
            raise FetchTimeoutError(
                f"timed out after {self._network.timeout_secs} s fetching {target.url}",
                target.url,
            ) from error
        except requests.RequestException as error:
            message = f"fetching {target.url} failed: {error}"
            raise FetchError(message, target.url) from error

    def _read(self, target: _Target, answer, limit: int, deadline: float):
        if answer.status_code in REDIRECT_STATUSES and "Location" in answer.headers:
            return answer.headers["Location"], None

        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ResponseTooLargeError(
                f"response of {declared} bytes is over the cap of {limit} bytes: "
                f"{target.url}",
                target.url,
            )
        chunks = []
        size = 0
        for chunk in answer.iter_content(CHUNK_BYTES):
            size += len(chunk)
            if size > limit:
                raise ResponseTooLargeError(
                    f"response passed the cap of {limit} bytes: {target.url}",
                    target.url,
                )
            if time.monotonic() > deadline:
                raise FetchTimeoutError(
                    f"timed out after {self._network.timeout_secs} s reading "
                    f"{target.url}",
                    target.url,
                )
            chunks.append(chunk)
        content = b"".join(chunks)

        if answer.status_code >= 400:
            raise HttpStatusError(target.url, answer.status_code, content)
        headers = CaseInsensitiveDict(answer.headers)
        return None, Response(target.url, answer.status_code, headers, content)


def _split_authority(url: str, authority: str, default_port: int) -> tuple[str, int]:
    """Split ``host[:port]`` and normalise the host to lower-case ASCII."""
    if authority.startswith("["):
        host, bracket, rest = authority[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise BlockedAddressError(url, "invalid IPv6 host")
        host = urllib.parse.unquote(host)
        port_text = rest[1:]
    else:
        host, _colon, port_text = authority.partition(":")
        host = _to_ascii_host(url, urllib.parse.unquote(host))
    if not host:
        raise BlockedAddressError(url, "empty host")
    if port_text == "":
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BlockedAddressError(url, "invalid port")
    return host, int(port_text)


def _to_ascii_host(url: str, host: str) -> str:
    """Map a host name the way IDNA (UTS 46) does, so look-alikes resolve."""
    if host.isascii():
        return host.lower().rstrip(".") if host != "." else ""
    try:
        return idna.encode(host, uts46=True).decode("ascii").lower().rstrip(".")
    except idna.IDNAError as error:
        raise BlockedAddressError(url, "invalid international host name") from error
