"""API keys for the compatibility routes: an API Gateway HTTP API Lambda REQUEST authorizer (payload format 2.0,
simple responses).

The AWS sample's clients and SD WebUI clients authenticate with an ``x-api-key`` header, not SigV4, so the
compatibility routes (``COMPAT_PATH_RE``) run this authorizer while the native ``/v1/jobs`` routes keep IAM.

Keys are never stored: the SSM SecureString parameter named by ``SPOTGEN_API_KEYS_PARAMETER`` holds their SHA-256
digests, ``sha256:<64 hex digits>`` each (``spotgen apikey hash KEY`` prints one), separated by newlines or commas;
``#`` starts a comment to the end of the line (whose key it is). A malformed entry is logged by its position (never
its text, which may be a key pasted by mistake) and ignored: it matches nothing. The presented key is hashed the
same way and compared with every digest in constant time (``hmac.compare_digest``), so the answer's timing says
nothing about which digest came close. A key is high-entropy random text, so an unsalted fast hash is enough.

The parameter's value is cached for ``CACHE_S`` in the warm Lambda (built on first use, not at import), so that a
rotation takes effect within that time plus API Gateway's own result cache (``ReauthorizeEvery`` in the template).
When SSM cannot be read (refused, timed out, throttled, 5xx, missing parameter, no permission) the handler logs
it and raises ``KeysUnavailable`` within a few seconds (``SSM_CONFIG``): API Gateway answers 500 and, unlike a
refusal, does not cache that answer, so a blip of SSM does not lock a valid key out for the result TTL. Nothing
is let through on a stale or missing list: it fails closed.

On success the context is ``{"caller": <first 16 hex digits of the key's digest>}``: a stable, non-secret name
of the key that handlers read at ``event.requestContext.authorizer.lambda.caller`` (and the access log records).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from runtime.config import Settings
from runtime.storage import aws

#: The compatibility routes: the AWS sample's ``POST /v1alpha1`` and ``/v1alpha2``, everything under SD WebUI's
#: ``/sdapi/v1`` and under its ControlNet extension's ``/controlnet``, and ComfyUI's routes (``lambdas/comfyui.py``).
#: The local gateway authorizes exactly these paths; the template routes them to this authorizer.
COMPAT_PATH_RE = re.compile(r"^/(?:v1alpha[12]/?|sdapi/v1(?:/.*)?|controlnet(?:/.*)?"
                            r"|(?:prompt|interrupt|view|queue|system_stats|ws|upload/image)/?"
                            r"|(?:history|object_info)(?:/.*)?)$")
#: The header the sample's and WebUI's clients send (lowercase: payload 2.0 lowercases header names).
HEADER = "x-api-key"
#: Seconds a warm Lambda trusts the parameter's value before reading it again.
CACHE_S = 60.0
#: SSM's answer bounds the authorizer's: 2 attempts of at most 1 s to connect and 2 s to answer, about 7 s in the
#: worst case with botocore's backoff, inside the function's 10 s timeout (the template; tests/infra checks it).
SSM_CONFIG = Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 2, "mode": "standard"})
DIGEST_PREFIX = "sha256:"
_DIGEST_RE = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
#: Digits of the key's digest that name the caller: 64 bits, unique among any realistic number of keys.
CALLER_DIGITS = 16

log = logging.getLogger("spotgen.authorizer")


class KeysUnavailable(RuntimeError):
    """The list of keys cannot be read: no request is authorized (API Gateway answers 500, caching nothing)."""


def digest(key: str) -> str:
    """The hex SHA-256 of a key as clients send it (surrounding whitespace is not part of a key)."""
    return hashlib.sha256(key.strip().encode("utf-8")).hexdigest()


def hash_key(key: str) -> str:
    """The parameter entry for ``key``: ``sha256:<64 hex digits>`` (what ``spotgen apikey hash`` prints)."""
    return DIGEST_PREFIX + digest(key)


def parse_digests(value: str, parameter: str = "the API keys parameter") -> tuple[str, ...]:
    """The digests listed in the parameter's value (lowercase hex). A malformed entry is logged by its line and
    position, never its text, and left out."""
    found: list[str] = []
    for number, line in enumerate(value.splitlines(), 1):
        entries = [entry.strip() for entry in line.split("#", 1)[0].split(",")]
        for position, entry in enumerate(entries, 1):
            if not entry:
                continue
            match = _DIGEST_RE.match(entry)
            if match is None:
                log.warning("%s: entry %d of line %d is not sha256:<64 hex digits> (%d characters); ignored, it "
                            "matches no key", parameter, position, number, len(entry))
                continue
            found.append(match.group(1).lower())
    if not found:
        log.error("%s lists no valid key digest: every API key is refused", parameter)
    return tuple(found)


class ApiKeys:
    """The digests of one SSM parameter, read at most every ``cache_s`` seconds of ``clock``, and the checks of
    presented keys against them. Thread-safe (the local gateway serves requests on several threads)."""

    def __init__(self, ssm: Any, parameter: str, cache_s: float = CACHE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ssm, self.parameter, self.cache_s, self.clock = ssm, parameter, cache_s, clock
        self._digests: tuple[str, ...] | None = None
        self._read_at = 0.0
        self._lock = threading.Lock()

    def digests(self) -> tuple[str, ...]:
        """The current digests; ``KeysUnavailable`` when they are due to be read and SSM does not answer."""
        with self._lock:
            now = self.clock()
            if self._digests is None or now - self._read_at >= self.cache_s:
                self._digests = None  # a failed read must not leave an expired list in use
                self._digests, self._read_at = parse_digests(self._read(), self.parameter), now
            return self._digests

    def _read(self) -> str:
        try:
            answer = self.ssm.get_parameter(Name=self.parameter, WithDecryption=True)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code") or exc.response.get("ResponseMetadata", {}).get(
                "HTTPStatusCode")
            log.error("cannot read the API keys parameter %s (%s): refusing every key until it can be read",
                      self.parameter, code)
            raise KeysUnavailable(f"SSM answered {code} for {self.parameter}") from None
        except BotoCoreError as exc:  # refused, cut, timed out: no answer at all
            log.error("cannot reach SSM for the API keys parameter %s (%s): refusing every key until it can be "
                      "read", self.parameter, type(exc).__name__)
            raise KeysUnavailable(f"SSM unreachable ({type(exc).__name__})") from None
        return str(answer["Parameter"]["Value"])

    def caller(self, key: str | None) -> str | None:
        """The caller name of ``key`` if it is one of the keys, else None. Every digest is compared, so the time
        taken does not depend on which one matches."""
        if key is None or not key.strip():
            return None
        presented = digest(key)
        matched = False
        for stored in self.digests():
            matched |= hmac.compare_digest(stored, presented)
        return presented[:CALLER_DIGITS] if matched else None

    def authorize(self, event: dict[str, Any]) -> dict[str, Any]:
        """The simple response for an authorizer event (payload 2.0); a refusal is logged with the presented
        key's caller name (a digest prefix, never the key) so that a client with a revoked key can be told."""
        key = (event.get("headers") or {}).get(HEADER)
        caller = self.caller(key)
        if caller is None:
            source = event.get("requestContext", {}).get("http", {}).get("sourceIp", "?")
            presented = digest(key)[:CALLER_DIGITS] if key and key.strip() else "none"
            log.warning("x-api-key refused: key %s from %s on %s", presented, source, event.get("rawPath", "?"))
            return {"isAuthorized": False}
        return {"isAuthorized": True, "context": {"caller": caller}}


@functools.lru_cache(maxsize=1)
def keys() -> ApiKeys:
    """Built on first use (not at import) from the environment and kept across warm invocations."""
    settings = Settings.from_env()
    if not settings.api_keys_parameter:
        log.error("SPOTGEN_API_KEYS_PARAMETER is not set: refusing every API key")
        raise KeysUnavailable("SPOTGEN_API_KEYS_PARAMETER is not set")
    return ApiKeys(aws.client("ssm", settings, config=SSM_CONFIG), settings.api_keys_parameter)


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    return keys().authorize(event)
