"""Fetching an image from an ``https://`` URL for the submit API without becoming a proxy into the VPC.

A URL in a request makes the Lambda open a connection of the client's choosing, so every hop is vetted the
same way: https on port 443, no user information, a host in ``SPOTGEN_FETCH_ALLOWED_HOSTS``, and every address
DNS gives for it public (a name with one private address among public ones is refused, not tried in luck).
The connection is then made to exactly the addresses that were checked, and every socket operation gets
at most what is left of the request's one deadline: the address rules, the pinned network backend and the
deadline streams are ``runtime.storage.egress``'s, shared with the worker's webhook sender.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin

import httpcore

from runtime.config import Settings
from runtime.contract.errors import ContractError
from runtime.contract.images import MAX_IMAGE_BYTES
from runtime.storage import egress
from runtime.storage.egress import (  # noqa: F401 - address_problem, resolve_host: imported from here by callers
    METADATA_ADDRESSES,
    AddressRefused,
    PinnedBackend,
    Resolver,
    address_problem,
    resolve_host,
    tls_context,
    vetted_addresses,
)

MAX_REDIRECTS = 3
MAX_URL_CHARS = 2048
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_HEADERS = ((b"User-Agent", b"spotgen-fetch"), (b"Accept", b"image/png, image/jpeg, image/webp"),
            (b"Accept-Encoding", b"identity"))


@dataclass(frozen=True)
class LoopbackForTests:
    """Test-only: reach a loopback server on any port, trusting only the test's own CA.

    It is a keyword argument of ``fetch_image`` and nothing else: no setting or environment variable can
    produce one, so a deployment cannot be configured into fetching from its own loopback interface.
    Every other address rule still applies with it.
    """

    ca_file: str


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
    backend = PinnedBackend(deadline)
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
    if len(url) > MAX_URL_CHARS:
        raise ContractError("url_not_allowed", f"{field}: the image URL is longer than {MAX_URL_CHARS} characters",
                            field)
    try:
        return egress.checked_target(url, settings.fetch_allowed_hosts, "image", "SPOTGEN_FETCH_ALLOWED_HOSTS",
                                     any_port=test_loopback)
    except egress.TargetRefused as exc:
        raise ContractError("url_not_allowed", f"{field}: {exc}", field) from None


def _vetted_addresses(host: str, port: int, resolve: Resolver, field: str, deadline: float,
                      allow_loopback: bool) -> list[str]:
    try:
        return vetted_addresses(host, port, resolve, deadline, allow_loopback=allow_loopback)
    except AddressRefused as refused:
        raise ContractError("url_not_allowed", f"{field}: {refused}; image URLs must lead to public addresses only",
                            field) from None
    except OSError as exc:
        raise ContractError("fetch_failed", f"{field}: could not resolve {host!r}: {exc}", field) from None


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
    return tls_context(loopback.ca_file if loopback else None)
