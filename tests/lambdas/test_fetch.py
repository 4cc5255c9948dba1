"""``lambdas.fetch``: image URLs against a real https server on loopback, and every refusal.

The server has a certificate for ``images.test`` and ``cdn.test`` from a CA made for this module, and the
host names reach it only through the injected resolver, so a fetch that worked proves the connection went to
the vetted address (the system resolver knows no ``.test`` names). Loopback is reachable only through
``LoopbackForTests``; refusals of addresses are checked without it, before any connection is made.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from lambdas.fetch import MAX_REDIRECTS, LoopbackForTests, address_problem, fetch_image
from runtime.config import Settings
from runtime.contract.errors import ContractError
from runtime.contract.images import MAX_IMAGE_BYTES
from tests.harness.tlsserver import make_certificates

FIELD = "inputs.image"
IMAGE = os.urandom(3000)
ALLOWED = Settings(fetch_allowed_hosts=["images.test", "cdn.test", "wrong.test"])


# -- the server --------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    """One path per behaviour; ``/redirect?to=URL`` answers 302 to URL."""

    protocol_version = "HTTP/1.1"
    server: ImageServer

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        self.server.seen.append((self.headers.get("Host"), self.path))
        parts = urlsplit(self.path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):  # the client gave up
            self.route(parts.path, parse_qs(parts.query))

    def answer(self, status: int, pieces: Iterable[bytes] = (), delay_s: float = 0.0, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        for piece in pieces:
            self.wfile.write(piece)
            self.wfile.flush()
            time.sleep(delay_s)

    def route(self, path: str, query: dict[str, list[str]]) -> None:
        chunks = [b"x" * 65536] * (MAX_IMAGE_BYTES // 65536 + 2)
        if path in ("/image.png", "/max.png"):
            body = IMAGE if path == "/image.png" else b"x" * MAX_IMAGE_BYTES
            self.answer(200, [body], Content_Length=str(len(body)))
        elif path in ("/redirect", "/relative", "/loop", "/no-location"):
            to = {"/redirect": query.get("to", [""])[0], "/relative": "/image.png", "/loop": "/loop"}.get(path)
            self.answer(302, **({"Location": to} if to else {}), Content_Length="0")
        elif path.startswith("/status/"):
            self.answer(int(path.rsplit("/", 1)[1]), Content_Length="0")
        elif path == "/gzip":
            self.answer(200, [b"\x1f\x8b..."], Content_Encoding="gzip", Content_Length="5")
        elif path == "/large-length":  # announced, then a little, then the client should have hung up
            self.answer(200, [b"x" * 1024], Content_Length=str(MAX_IMAGE_BYTES + 1))
        elif path == "/large-chunked":
            self.answer(200, [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"],
                        Transfer_Encoding="chunked")
        elif path == "/large-until-close":
            self.close_connection = True
            self.answer(200, chunks, Connection="close")
        elif path == "/slow":  # a byte at a time: every read succeeds, only a deadline for the whole fetch ends it
            self.answer(200, [b"x"] * 1000, delay_s=0.05, Content_Length="1000")
        else:
            self.answer(404, Content_Length="0")


class ImageServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str | None, str]]
    sni: list[str | None]


@dataclass
class Served:
    port: int
    ca_file: Path
    server: ImageServer
    resolved: list[str] = field(default_factory=list)

    def url(self, path: str, host: str = "images.test") -> str:
        return f"https://{host}:{self.port}{path}"

    def resolver(self, **addresses: list[str]):
        """Every ``.test`` name to 127.0.0.1 unless ``addresses`` says otherwise (``cdn_test=[...]``)."""
        table = {name.replace("_", "."): value for name, value in addresses.items()}

        def resolve(host: str, port: int) -> list[str]:
            self.resolved.append(host)
            return table.get(host, ["127.0.0.1"])
        return resolve

    def fetch(self, url: str, settings: Settings = ALLOWED, *, loopback: bool = True,
              timeout_s: float | None = None, **addresses: list[str]) -> bytes:
        switch = LoopbackForTests(str(self.ca_file)) if loopback else None
        return fetch_image(url, settings, FIELD, timeout_s=timeout_s, resolve=self.resolver(**addresses),
                           loopback_for_tests=switch)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    ca_file, cert_file, key_file = make_certificates(tmp_path_factory.mktemp("tls"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server = ImageServer(("127.0.0.1", 0), Handler)
    server.seen, server.sni = [], []
    context.sni_callback = lambda sock, name, ctx: server.sni.append(name)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield Served(server.server_address[1], ca_file, server)
    server.shutdown()
    server.server_close()


@pytest.fixture
def fresh(served: Served) -> Served:
    served.server.seen.clear()
    served.server.sni.clear()
    served.resolved.clear()
    return served


def refusal(call, code: str, *phrases: str) -> ContractError:
    with pytest.raises(ContractError) as info:
        call()
    err = info.value
    assert (err.code, err.field) == (code, FIELD), err.message
    assert err.message.startswith(f"{FIELD}: ")
    for phrase in phrases:
        assert phrase in err.message
    return err


# -- what is fetched ---------------------------------------------------------------------------------


def test_an_allowed_host_is_fetched_from_the_vetted_address_by_its_name(fresh: Served) -> None:
    assert fresh.fetch(fresh.url("/image.png")) == IMAGE
    assert fresh.server.seen == [(f"images.test:{fresh.port}", "/image.png")]  # the Host header
    assert fresh.server.sni == ["images.test"]  # and SNI name the host, while the socket went to 127.0.0.1
    assert fresh.resolved == ["images.test"]  # resolved once, for the check: the connection reused the answer


def test_a_body_of_exactly_the_limit_is_accepted(fresh: Served) -> None:
    assert len(fresh.fetch(fresh.url("/max.png"))) == MAX_IMAGE_BYTES


def test_redirects_to_allowed_hosts_are_followed(fresh: Served) -> None:
    to_cdn = fresh.url("/redirect?to=" + fresh.url("/image.png", host="cdn.test"))
    assert fresh.fetch(to_cdn) == IMAGE
    assert fresh.server.sni == ["images.test", "cdn.test"]
    assert fresh.resolved == ["images.test", "cdn.test"]  # each hop's host checked on its own
    assert fresh.fetch(fresh.url("/relative")) == IMAGE


# -- refusals of the URL, before any connection ------------------------------------------------------


def test_an_empty_allow_list_refuses_every_url(fresh: Served) -> None:
    refusal(lambda: fresh.fetch(fresh.url("/image.png"), Settings()), "url_not_allowed", "URLs are not accepted")
    assert fresh.server.seen == [] and fresh.resolved == []


@pytest.mark.parametrize(("url", "phrase"), [
    ("https://other.test/image.png", "the host 'other.test' is not allowed"),
    ("https://images.test./image.png", "the host 'images.test.' is not allowed"),
    ("https://127.0.0.1/image.png", "the host '127.0.0.1' is not allowed"),
    ("https://images.test.evil.test/image.png", "is not allowed"),
    ("http://images.test/image.png", "only https://"),
    ("file:///etc/passwd", "only https://"),
    ("ftp://images.test/image.png", "only https://"),
    ("//images.test/image.png", "only https://"),
    ("https://user:secret@images.test/image.png", "user information"),
    ("https://evil.test@images.test/image.png", "user information"),
    ("https://images.test\\@evil.test/image.png", "backslashes"),
    ("https://images.test/a b.png", "spaces"),
    ("https://images.test/\u00e9.png", "non-ASCII"),
    ("https://images.test:8443/image.png", "port 443, not 8443"),
    ("https://images.test:99999/image.png", "does not parse"),
    ("https://images.test/" + "a" * 2048, "longer than 2048"),
])
def test_urls_against_the_rules_are_refused(fresh: Served, url: str, phrase: str) -> None:
    refusal(lambda: fresh.fetch(url, loopback=False), "url_not_allowed", phrase)
    assert fresh.resolved == []


@pytest.mark.parametrize(("address", "phrase"), [
    ("127.0.0.1", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.0.0.1", "a private address"),
    ("172.16.5.4", "a private address"),
    ("192.168.1.1", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("169.254.169.254", "the cloud metadata service"),
    ("fd00:ec2::254", "the cloud metadata service"),
    ("169.254.10.1", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("0.0.0.0", "an unspecified address"),
    ("::", "an unspecified address"),
    ("224.0.0.251", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("240.0.0.1", "a reserved address"),
    ("100.64.0.1", "not a globally routable address"),
    ("::ffff:127.0.0.1", "a loopback address"),  # IPv4-mapped
    ("::ffff:a9fe:a9fe", "the cloud metadata service"),
    ("64:ff9b::a9fe:a9fe", "the cloud metadata service"),  # NAT64
    ("2002:7f00:1::1", "a loopback address"),  # 6to4 of 127.0.0.1
])
def test_non_public_addresses_are_refused(fresh: Served, address: str, phrase: str) -> None:
    url = "https://images.test/image.png"
    refusal(lambda: fresh.fetch(url, loopback=False, images_test=[address]), "url_not_allowed",
            f"resolves to {address}, {phrase}")
    assert address_problem(address) == phrase


def test_one_bad_address_among_public_ones_refuses_the_host(fresh: Served) -> None:
    refusal(lambda: fresh.fetch("https://images.test/x.png", loopback=False,
                                images_test=["93.184.216.34", "2606:4700::1111", "10.1.2.3"]),
            "url_not_allowed", "10.1.2.3, a private address")
    assert address_problem("93.184.216.34") is None and address_problem("2606:4700::1111") is None
    assert address_problem("images.test") == "not an IP address"


def test_the_test_switch_lets_loopback_through_and_nothing_else(fresh: Served) -> None:
    for address in ("10.0.0.1", "169.254.169.254", "fd00:ec2::254"):
        refusal(lambda a=address: fresh.fetch(fresh.url("/image.png"), images_test=[a]), "url_not_allowed",
                f"resolves to {address}")
    assert address_problem("127.0.0.1", allow_loopback=True) is None
    assert fresh.server.seen == []


# -- refusals of what the server answers -------------------------------------------------------------


def test_a_redirect_to_a_host_not_allowed_is_refused(fresh: Served) -> None:
    refusal(lambda: fresh.fetch(fresh.url("/redirect?to=" + fresh.url("/image.png", host="evil.test"))),
            "url_not_allowed", "the host 'evil.test' is not allowed")
    assert fresh.server.seen == [(f"images.test:{fresh.port}", "/redirect?to=" + fresh.url("/image.png",
                                                                                          host="evil.test"))]


def test_a_redirect_to_http_or_to_a_private_address_is_refused(fresh: Served) -> None:
    to_http = fresh.url("/redirect?to=" + f"http://cdn.test:{fresh.port}/image.png")
    refusal(lambda: fresh.fetch(to_http), "url_not_allowed", "only https://")
    to_cdn = fresh.url("/redirect?to=" + fresh.url("/image.png", host="cdn.test"))
    refusal(lambda: fresh.fetch(to_cdn, cdn_test=["10.0.0.1"]), "url_not_allowed", "10.0.0.1, a private address")


def test_redirects_end_after_a_few_hops(fresh: Served) -> None:
    refusal(lambda: fresh.fetch(fresh.url("/loop")), "fetch_failed", f"more than {MAX_REDIRECTS} redirects")
    assert len(fresh.server.seen) == MAX_REDIRECTS + 1
    refusal(lambda: fresh.fetch(fresh.url("/no-location")), "fetch_failed", "without a Location")


def test_an_oversized_content_length_is_refused_before_the_body(fresh: Served) -> None:
    refusal(lambda: fresh.fetch(fresh.url("/large-length")), "image_too_large", f"larger than {MAX_IMAGE_BYTES}")


@pytest.mark.parametrize("path", ["/large-chunked", "/large-until-close"])
def test_an_oversized_body_without_a_length_is_refused_while_streaming(fresh: Served, path: str) -> None:
    refusal(lambda: fresh.fetch(fresh.url(path)), "image_too_large", f"larger than {MAX_IMAGE_BYTES}")


def test_a_slow_server_hits_the_total_timeout(fresh: Served) -> None:
    # The server sends its 1000 bytes over 50 s, each well within any read timeout: without a deadline for the
    # whole fetch this would succeed, 50 s later.
    refusal(lambda: fresh.fetch(fresh.url("/slow"), timeout_s=0.5), "fetch_timeout", "longer than 0.5 s")


def test_a_resolver_that_does_not_answer_hits_the_total_timeout() -> None:
    # getaddrinfo has no timeout of its own: the lookup must be inside the fetch's deadline. The resolver here
    # answers only after the test has seen the fetch give up; a fetch that waits for it returns after the
    # resolver has finished, which the last assert catches.
    release, finished = threading.Event(), threading.Event()

    def silent(host: str, port: int) -> list[str]:
        release.wait(30)
        finished.set()
        return ["93.184.215.14"]
    try:
        refusal(lambda: fetch_image("https://images.test/x.png", ALLOWED, FIELD, timeout_s=0.3, resolve=silent),
                "fetch_timeout", "longer than 0.3 s")
        assert not finished.is_set(), "the fetch waited for the resolver past its deadline"
    finally:
        release.set()


@pytest.mark.parametrize("status", [404, 403, 500, 204, 304])
def test_answers_other_than_200_are_refused_with_the_status(fresh: Served, status: int) -> None:
    refusal(lambda: fresh.fetch(fresh.url(f"/status/{status}")), "fetch_failed", f"HTTP {status} instead of 200")


def test_a_compressed_answer_is_refused(fresh: Served) -> None:
    refusal(lambda: fresh.fetch(fresh.url("/gzip")), "fetch_failed", "compressed (gzip)")


def test_the_certificate_must_match_the_host_name(fresh: Served) -> None:
    refusal(lambda: fresh.fetch(fresh.url("/image.png", host="wrong.test")), "fetch_failed", "certificate")
    assert fresh.server.seen == []


def test_unreachable_and_unresolvable_hosts_fail(fresh: Served) -> None:
    with socket.socket() as sock:  # a loopback port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refusal(lambda: fresh.fetch(f"https://images.test:{port}/image.png"), "fetch_failed", "could not fetch")

    def no_such_host(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")
    refusal(lambda: fetch_image("https://images.test/x.png", ALLOWED, FIELD, resolve=no_such_host),
            "fetch_failed", "could not resolve 'images.test'")
    refusal(lambda: fetch_image("https://images.test/x.png", ALLOWED, FIELD, resolve=lambda h, p: []),
            "fetch_failed", "has no addresses")


# -- the settings ------------------------------------------------------------------------------------


def test_the_allow_list_is_read_from_the_environment_like_the_other_lists() -> None:
    settings = Settings.from_env({"SPOTGEN_FETCH_ALLOWED_HOSTS": " images.example.com, cdn.example.net ,",
                                  "SPOTGEN_FETCH_TIMEOUT_S": "4.5"})
    assert settings.fetch_allowed_hosts == ["images.example.com", "cdn.example.net"]
    assert settings.fetch_timeout_s == 4.5
    assert Settings.from_env(settings.to_env()) == settings
    assert Settings.from_env({}).fetch_allowed_hosts == [] and Settings().fetch_timeout_s == 10.0


@pytest.mark.parametrize(("value", "phrase"), [
    ("https://images.example.com", "has a scheme"),
    ("images.example.com:443", "has a port"),
    ("images.example.com/path", "has a path"),
    ("*.example.com", "wildcard"),
    ("Images.Example.com", "lowercase"),
    ("user@images.example.com", "user information"),
    ("10.0.0.1", "is an IP address"),
    ("::1", "has a port or is an IPv6 address"),
    ("localhost", "is not a host name"),
    ("images.example.com.", "is not a host name"),
    ("-bad.example.com", "is not a host name"),
    ("images_x.example.com", "is not a host name"),
    ("example.123", "its last label is a number"),
])
def test_bad_host_names_stop_the_settings_with_the_reason(value: str, phrase: str) -> None:
    with pytest.raises(SystemExit) as info:
        Settings.from_env({"SPOTGEN_FETCH_ALLOWED_HOSTS": f"ok.example.com,{value}"})
    assert str(info.value).startswith("invalid setting SPOTGEN_FETCH_ALLOWED_HOSTS:")
    assert phrase in str(info.value) and repr(value) in str(info.value)


@pytest.mark.parametrize("value", ["0", "-1", "31", "soon"])
def test_the_timeout_is_bounded(value: str) -> None:
    with pytest.raises(SystemExit, match="SPOTGEN_FETCH_TIMEOUT_S"):
        Settings.from_env({"SPOTGEN_FETCH_TIMEOUT_S": value})
