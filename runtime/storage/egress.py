"""Connections to a host that a request names (an image URL, a webhook), without becoming a proxy into the VPC.

What the submit API's image fetcher (``lambdas/fetch.py``) and the worker's webhook sender
(``runtime.worker.webhooks``) share: the address rules (every address DNS gives for a host must be public; the
metadata service, private, loopback, link-local and other special ranges are refused, IPv4 hidden in IPv6
included), a DNS lookup bounded by the caller's deadline, and an httpcore network backend that connects a host
name only to the addresses vetted for it (so a DNS answer that changes between the check and the connect,
rebinding, is never used, while the URL, the Host header, SNI and the certificate check stay on the host name)
and gives every socket operation at most what is left of one deadline (so a server that trickles a byte at a
time cannot hold the caller past it). httpcore (httpx's transport) is used directly because httpx offers no
public way to plug in a network backend.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from urllib.parse import SplitResult, urlsplit

import certifi
import httpcore

#: The instance metadata service (IMDS) of EC2, over IPv4 and IPv6: named, so the refusal says so.
METADATA_ADDRESSES = frozenset({ipaddress.ip_address("169.254.169.254"), ipaddress.ip_address("fd00:ec2::254")})
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

#: ``resolve(host, port)``: the addresses ``host`` has, as strings (``socket.getaddrinfo`` in production).
Resolver = Callable[[str, int], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """A host resolves to an address that must not be reached; the message says which and why."""

    def __init__(self, host: str, address: str, problem: str) -> None:
        super().__init__(f"{host!r} resolves to {address}, {problem}")
        self.host, self.address, self.problem = host, address, problem


def resolve_host(host: str, port: int) -> list[str]:
    """Every address of ``host`` (IPv4 and IPv6), each once, in the resolver's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def address_problem(address: str, *, allow_loopback: bool = False) -> str | None:
    """Why nothing may be reached at ``address``, or None for a public one.

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


def vetted_addresses(host: str, port: int, resolve: Resolver, deadline: float, *,
                     allow_loopback: bool = False) -> list[str]:
    """Every address of ``host``, each checked: ``AddressRefused`` if any is against the rules (one private
    address among public ones is refused, not tried in luck), OSError if DNS fails or has none,
    ``httpcore.ConnectTimeout`` past ``deadline``."""
    addresses = resolve_within(resolve, host, port, deadline)
    if not addresses:
        raise OSError(f"{host!r} has no addresses")
    for address in addresses:
        problem = address_problem(address, allow_loopback=allow_loopback)
        if problem:
            raise AddressRefused(host, address, problem)
    if time.monotonic() >= deadline:
        raise httpcore.ConnectTimeout("the DNS lookup used the whole timeout")
    return addresses


def resolve_within(resolve: Resolver, host: str, port: int, deadline: float) -> list[str]:
    """``resolve(host, port)`` if it answers before ``deadline``; else ConnectTimeout.

    ``getaddrinfo`` has no timeout of its own, and a resolver that does not answer would hold the caller past
    its deadline. The lookup runs on a daemon thread that is abandoned at the deadline: it ends when the resolver
    gives up, and nothing waits for it."""
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


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """TLS 1.2 or later, checked against certifi's CAs (or ``ca_file``: a test's own CA)."""
    context = ssl.create_default_context(cafile=ca_file or certifi.where())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def remaining(deadline: float, timeout: float | None, error: type[Exception]) -> float:
    """The smaller of an operation's own timeout and what is left of the deadline; past it, ``error``."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the deadline has passed")
    return left if timeout is None else min(timeout, left)


class PinnedBackend(httpcore.NetworkBackend):
    """Connects a host name only to the addresses vetted for it (``vetted``), never resolving it again."""

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
                stream = self._backend.connect_tcp(address, port, remaining(self.deadline, timeout,
                                                                            httpcore.ConnectTimeout),
                                                   socket_options=socket_options)
            except httpcore.ConnectError as exc:
                error = exc
                continue
            return DeadlineStream(stream, self.deadline)
        raise error

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: Iterable[Any] | None = None) -> httpcore.NetworkStream:
        raise httpcore.ConnectError("unix sockets are never used")


class DeadlineStream(httpcore.NetworkStream):
    """Each read, write and handshake gets at most what is left of the request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream, deadline: float) -> None:
        self._stream, self._deadline = stream, deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, remaining(self._deadline, timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, remaining(self._deadline, timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        left = remaining(self._deadline, timeout, httpcore.ConnectTimeout)
        return DeadlineStream(self._stream.start_tls(ssl_context, server_hostname, left), self._deadline)

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


#: The hosts ``SPOTGEN_WEBHOOK_LOOPBACK`` (local stacks only) allows as well, over http or https, on any port.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


class TargetRefused(ValueError):
    """A webhook URL against the rules; the message says why, in words for the client."""


def checked_target(url: str, allowed_hosts: Iterable[str], what: str, setting: str, *, loopback: bool = False,
                   any_port: bool = False) -> SplitResult:
    """``url`` split, if ``what`` (``image``, ``webhook``) may be fetched from or sent to it: https on port 443, no
    user information, a host on the allow-list (``setting`` names it); with ``loopback`` (``spotgen dev``'s
    webhooks) also http or https to a loopback host on any port; with ``any_port`` (a test's own TLS server) any
    port. Characters that parsers disagree about are refused rather than interpreted, so the host checked is the
    host connected to. The addresses are checked separately (``vetted_addresses``)."""
    if not url.isascii() or any(ch <= " " or ch in "\x7f\\" for ch in url):
        raise TargetRefused(f"the {what} URL has spaces, control characters, backslashes or non-ASCII characters "
                            "(percent-encode them)")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise TargetRefused(f"the {what} URL does not parse ({exc})") from None
    host = parts.hostname or ""
    local = loopback and host in LOOPBACK_HOSTS
    if parts.scheme != "https" and not (local and parts.scheme == "http"):
        raise TargetRefused(f"only https:// {what} URLs are accepted, not {parts.scheme or 'no'} scheme")
    if "@" in parts.netloc:
        raise TargetRefused(f"{what} URLs must not contain user information (user:password@)")
    allowed = list(allowed_hosts)
    if host not in allowed and not local:
        raise TargetRefused(f"the host {host!r} is not allowed for {what} URLs; allowed hosts: "
                            f"{', '.join(allowed) or f'none ({setting} is empty)'}")
    if port is not None and port != 443 and not (local or any_port):
        raise TargetRefused(f"{what} URLs must use the https port 443, not {port}")
    return parts


def webhook_target(url: str, allowed_hosts: Iterable[str], *, loopback: bool = False) -> SplitResult:
    """A webhook URL against the rules of ``checked_target`` (``SPOTGEN_WEBHOOK_ALLOWED_HOSTS``)."""
    return checked_target(url, allowed_hosts, "webhook", "SPOTGEN_WEBHOOK_ALLOWED_HOSTS", loopback=loopback)
