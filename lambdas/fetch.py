"""Fetching an image from an ``https://`` URL for the submit API without becoming a proxy into the VPC.

A URL in a request makes the Lambda open a connection of the client's choosing, so every hop is vetted the
same way: https on port 443, no user information, a host in ``SPOTGEN_FETCH_ALLOWED_HOSTS``, and every address
DNS gives for it public (a name with one private address among public ones is refused, not tried in luck).
The connection is then made to exactly the addresses that were checked: httpcore asks our network backend
for a connection to the host name, and the backend dials the vetted address instead of resolving again, so
a DNS answer that changes between the check and the connect (rebinding) is never used, while the URL, the
Host header, SNI and the certificate check all stay on the host name. httpcore (httpx's transport, a
dependency of httpx) is used directly because httpx offers no public way to plug in a network backend.

The same backend wraps every socket operation in the request's one deadline, so a server that trickles a
byte at a time cannot hold the Lambda past the timeout the way per-read timeouts would let it.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urljoin, urlsplit

import certifi
import httpcore

from runtime.config import Settings
from runtime.contract.errors import ContractError
from runtime.contract.images import MAX_IMAGE_BYTES

MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
#: The instance metadata service (IMDS) of EC2, over IPv4 and IPv6: named, so the refusal says so.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_HEADERS = ((b"User-Agent", b"spotgen-fetch"), (b"Accept", b"image/png, image/jpeg, image/webp"),
            (b"Accept-Encoding", b"identity"))

#: ``resolve(host, port)``: the addresses ``host`` has, as strings (``socket.getaddrinfo`` in production).
Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class LoopbackForTests:
    """Test-only: reach a loopback server on any port, trusting only the test's own CA.

    It is a keyword argument of ``fetch_image`` and nothing else: no setting or environment variable can
    produce one, so a deployment cannot be configured into fetching from its own loopback interface.
    Every other address rule still applies with it.
    """

    ca_file: str


def resolve_host(host: str, port: int) -> list[str]:
    """Every address of ``host`` (IPv4 and IPv6), each once, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_problem(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why nothing may be fetched from ``address``, or None for a public one.

    An IPv6 address that carries an IPv4 one (mapped, 6to4, Teredo, NAT64) is judged by the IPv4 one too,
    since that is where the packets end up.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return "not an IP address"
    candidates: list[IPAddress] = []  # the IPv4 address inside first: it names the problem best
    if isinstance(ip, ipaddress.IPv6Address):
        candidates += [v4 for v4 in (ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())) if v4 is not None]
        if ip in _NAT64:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    candidates.append(ip)
    for candidate in candidates:
        problem = _one_address_problem(candidate, allow_loopback)
        if problem:
            return problem
    return None


def _one_address_problem(ip: IPAddress, allow_loopback: bool) -> str | None:
    if ip in METADATA_ADDRESSES:
        return "the cloud metadata service"
    if ip.is_loopback:
        return None if allow_loopback else "a loopback address"
    for flag, what in (("is_unspecified", "an unspecified address"), ("is_link_local", "a link-local address"),
                       ("is_multicast", "a multicast address"), ("is_reserved", "a reserved address"),
                       ("is_private", "a private address")):
        if getattr(ip, flag):
            return what
    if not ip.is_global:  # shared (100.64/10), documentation and other special-purpose ranges
        return "not a globally routable address"
    return None


def fetch_image(url: str, settings: Settings, field: str, *, timeout_s: float | None = None,
                resolve: Resolver = resolve_host, loopback_for_tests: LoopbackForTests | None = None) -> bytes:
    """The body of ``url`` if every hop passes the rules above; else ContractError naming ``field``.

    ``timeout_s`` (default ``settings.fetch_timeout_s``) lets the caller share one budget among the images
    of a request. Codes: ``url_not_allowed`` (the URL or an address is against the rules),
    ``image_too_large``, ``fetch_timeout`` and ``fetch_failed`` (DNS, connection, TLS, HTTP status).
    """
    if not settings.fetch_allowed_hosts:
        raise ContractError("url_not_allowed", f"{field}: URLs are not accepted: send the image inline as base64 or "
                            "as an s3:// URI in the input bucket", field)
    budget = settings.fetch_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + budget
    backend = _PinnedBackend(deadline)
    context = _tls_context(loopback_for_tests)
    try:
        with httpcore.ConnectionPool(ssl_context=context, network_backend=backend, retries=0) as pool:
            for _ in range(MAX_REDIRECTS + 1):
                parts = _checked_url(url, settings, field, loopback_for_tests is not None)
                host, port = str(parts.hostname), parts.port or 443
                backend.vetted[(host, port)] = _vetted_addresses(host, port, resolve, field, deadline,
                                                                 loopback_for_tests is not None)
                target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
                request_url = httpcore.URL(scheme=b"https", host=host.encode(), port=parts.port,
                                           target=target.encode())
                extensions = {"timeout": dict.fromkeys(("connect", "read", "write", "pool"), budget)}
                with pool.stream("GET", request_url, headers=list(_HEADERS), extensions=extensions) as response:
                    if response.status in REDIRECT_STATUSES:
                        url = _redirect_target(url, response, field)
                        continue
                    return _body(response, host, field)
    except httpcore.TimeoutException:
        raise ContractError("fetch_timeout", f"{field}: fetching the image took longer than {budget:g} s",
                            field) from None
    except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol) as exc:
        raise ContractError("fetch_failed", f"{field}: could not fetch the image from {url!r}: {_reason(exc)}",
                            field) from None
    raise ContractError("fetch_failed", f"{field}: more than {MAX_REDIRECTS} redirects", field)


def _checked_url(url: str, settings: Settings, field: str, test_loopback: bool) -> SplitResult:
    """The URL split into parts, refused unless it is https, to an allowed host, on 443, with no userinfo.

    Characters that parsers disagree about (spaces, controls, backslashes, non-ASCII) are refused rather
    than interpreted, so the host checked is the host connected to.
    """
    def refuse(why: str) -> ContractError:
        return ContractError("url_not_allowed", f"{field}: {why}", field)

    if len(url) > MAX_URL_CHARS:
        raise refuse(f"the image URL is longer than {MAX_URL_CHARS} characters")
    if not url.isascii() or any(ch <= " " or ch in "\x7f\\" for ch in url):
        raise refuse("the image URL has spaces, control characters, backslashes or non-ASCII characters "
                     "(percent-encode them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise refuse(f"the image URL does not parse ({exc})") from None
    if parts.scheme != "https":
        raise refuse(f"only https:// image URLs are accepted, not {parts.scheme or 'no'} scheme")
    if "@" in parts.netloc:
        raise refuse("image URLs must not contain user information (user:password@)")
    host = parts.hostname or ""
    if host not in settings.fetch_allowed_hosts:
        raise refuse(f"the host {host!r} is not allowed for image URLs; allowed hosts: "
                     f"{', '.join(settings.fetch_allowed_hosts)}")
    if port is not None and port != 443 and not test_loopback:
        raise refuse(f"image URLs must use the https port 443, not {port}")
    return parts


def _vetted_addresses(host: str, port: int, resolve: Resolver, field: str, deadline: float,
                      allow_loopback: bool) -> list[str]:
    try:
        addresses = _resolve_within(resolve, host, port, deadline)
    except OSError as exc:
        raise ContractError("fetch_failed", f"{field}: could not resolve {host!r}: {exc}", field) from None
    if not addresses:
        raise ContractError("fetch_failed", f"{field}: {host!r} has no addresses", field)
    for address in addresses:
        problem = address_problem(address, allow_loopback=allow_loopback)
        if problem:
            raise ContractError("url_not_allowed", f"{field}: {host!r} resolves to {address}, {problem}; image "
                                "URLs must lead to public addresses only", field)
    if time.monotonic() >= deadline:
        raise httpcore.ConnectTimeout("the DNS lookup used the whole timeout")
    return addresses


def _resolve_within(resolve: Resolver, host: str, port: int, deadline: float) -> list[str]:
    """``resolve(host, port)`` if it answers before ``deadline``; else ConnectTimeout.

    ``getaddrinfo`` has no timeout of its own, and a resolver that does not answer would hold the Lambda past
    the fetch's deadline (and past its own timeout). The lookup runs on a daemon thread that is abandoned at the
    deadline: it ends when the resolver gives up, and nothing waits for it."""
    answer: list[list[str] | OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            answer.append(list(resolve(host, port)))
        except OSError as exc:
            answer.append(exc)
        finally:
            done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())) or not answer:
        raise httpcore.ConnectTimeout("the DNS lookup did not answer within the timeout")
    if isinstance(answer[0], OSError):
        raise answer[0]
    return answer[0]


def _redirect_target(url: str, response: httpcore.Response, field: str) -> str:
    """The next URL (checked by the next hop like the first one)."""
    location = next((value for name, value in response.headers if name.lower() == b"location"), None)
    if location is None:
        raise ContractError("fetch_failed", f"{field}: {url!r} answered HTTP {response.status} without a "
                            "Location", field)
    return urljoin(url, location.decode("latin-1"))


def _body(response: httpcore.Response, host: str, field: str) -> bytes:
    """The 200 answer's body, refused as soon as it is known to exceed the contract's image size."""
    if response.status != 200:
        raise ContractError("fetch_failed", f"{field}: {host} answered HTTP {response.status} instead of 200 for "
                            "the image", field)
    headers = {name.lower(): value for name, value in response.headers}
    encoding = headers.get(b"content-encoding", b"identity").decode("latin-1").strip().lower()
    if encoding not in ("", "identity"):
        raise ContractError("fetch_failed", f"{field}: {host} sent the image compressed ({encoding}); serve it "
                            "uncompressed", field)
    too_large = ContractError("image_too_large", f"{field}: the image at the URL is larger than {MAX_IMAGE_BYTES} "
                              "bytes", field)
    length = headers.get(b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > MAX_IMAGE_BYTES:
        raise too_large
    chunks, size = [], 0
    for chunk in response.iter_stream():
        size += len(chunk)
        if size > MAX_IMAGE_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _reason(exc: Exception) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"the TLS certificate is not valid for the host ({cause.verify_message})"
    return str(exc) or type(exc).__name__


def _tls_context(loopback: LoopbackForTests | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=loopback.ca_file if loopback else certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _remaining(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """The smaller of an operation's own timeout and what is left of the deadline; past it, ``error``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the deadline has passed")
    return left if timeout is None else min(timeout, left)


class _PinnedBackend(httpcore.NetworkBackend):
    """Connects a host name only to the addresses vetted for it this fetch, never resolving it again."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.vetted: dict[tuple[str, int], list[str]] = {}
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        addresses = self.vetted.get((host, port))
        if not addresses:
            raise httpcore.ConnectError(f"{host}:{port} was not vetted")
        error: Exception = httpcore.ConnectError("no address")
        for address in addresses:
            try:
                stream = self._backend.connect_tcp(address, port, _remaining(self.deadline, timeout,
                                                                             httpcore.ConnectTimeout),
                                                   socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return _DeadlineStream(stream, self.deadline)
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never used")


class _DeadlineStream(httpcore.NetworkStream):
    """Each read, write and handshake gets at most what is left of the fetch's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _remaining(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _remaining(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        left = _remaining(self._deadline, timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)
