"""How AWS requests and errors look on the wire, for the fault proxy (tests/harness/faultproxy.py): ``describe``
names a request (service from the SigV4 credential scope, operation from ``X-Amz-Target``, ``Action`` or the S3
method), and ``error_response`` words the errors AWS answers for throttling and server faults in each service's
own protocol, so that botocore and kombu parse them as they would the real ones. Apart from the proxy so that
the proxy stays about faults."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

_SCOPE = re.compile(rb"Credential=[^/]+/\d{8}/[^/]+/([a-z0-9-]+)/aws4_request")
_TARGET = re.compile(rb"^x-amz-target:\s*\w+\.(\w+)\s*$", re.IGNORECASE | re.MULTILINE)
_S3_OPS = {"PUT": "PutObject", "GET": "GetObject", "DELETE": "DeleteObject", "HEAD": "HeadObject",
           "POST": "PostObject"}


def describe(head: bytes, body: bytes) -> tuple[str, str, str, str]:
    """(method, path, service, operation) of a request."""
    method, path = head.split(b" ", 2)[:2]
    match = _SCOPE.search(head)
    service = match.group(1).decode() if match else "unknown"
    target = _TARGET.search(head)
    if target:
        operation = target.group(1).decode()
    elif service == "s3":
        operation = _S3_OPS.get(method.decode(), method.decode())
    else:
        query = parse_qs(body.decode(errors="replace")) or parse_qs(urlsplit(path.decode()).query)
        operation = (query.get("Action") or ["unknown"])[0]
    return method.decode(), path.decode(), service, operation


def error_response(service: str, status: int) -> bytes:
    """The error AWS gives for throttling (``status`` 400/429) or a server fault (5xx), in the service's own
    protocol, so that botocore and kombu parse it as they would the real one."""
    if service == "s3":
        code = "SlowDown" if status == 503 else "InternalError"
        body = f"<Error><Code>{code}</Code><Message>injected by the fault proxy</Message></Error>".encode()
        ctype = b"application/xml"
    elif service == "sqs":
        code = "RequestThrottled" if status < 500 else "InternalFailure"
        body = (f'{{"__type":"com.amazonaws.sqs#{code}","message":"injected by the fault proxy"}}').encode()
        ctype = b"application/x-amz-json-1.0"
    elif service == "ssm":  # JSON 1.1 (SSM's protocol)
        code = "ThrottlingException" if status < 500 else "InternalServerError"
        body = f'{{"__type":"{code}","message":"injected by the fault proxy"}}'.encode()
        ctype = b"application/x-amz-json-1.1"
    else:
        code = "Throttling" if status < 500 else "InternalFailure"
        body = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>injected by the fault "
                f"proxy</Message></Error><RequestId>0</RequestId></ErrorResponse>").encode()
        ctype = b"text/xml"
    extra = f"x-amzn-query-error: {code};Sender\r\n".encode() if service == "sqs" else b""
    return (f"HTTP/1.1 {status} Injected\r\n".encode() + b"Content-Type: " + ctype + b"\r\n" + extra +
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
