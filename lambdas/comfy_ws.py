"""ComfyUI's ``/ws?clientId=`` on AWS: the connections of an API Gateway WebSocket API, by the client they are for.

An HTTP API cannot upgrade a connection, so the template adds a WebSocket API (``ComfyWsApi``) whose ``$connect``,
``$disconnect`` and ``$default`` routes run this handler. A connection is only a registration here: API Gateway
holds the socket, and ``lambdas.comfy_ws_notify`` posts to it when one of its client's prompts ends.

``$connect`` checks the API key itself, with the compatibility routes' own list (``lambdas.authorizer.keys``), rather
than through a WebSocket REQUEST authorizer: that authorizer would take the REST-style payload and answer with an
IAM policy, a second answer format for ``lambdas/authorizer.py``; this handler needs the key's caller name anyway to
file the connection under it (a ``client_id`` is the client's choice, so two callers may pick the same one, and a
caller must hear of its own prompts only); and one invocation per connect is cheaper than two. The key comes in
the ``x-api-key`` header, or as the ``x-api-key`` query parameter for a browser, which cannot set a header on a
websocket. A refused key records nothing.

The registry lives where the project keeps its other state, the output bucket, under ``comfy/ws/``: an empty
object ``clients/{caller}/{client_id}/{connection_id}`` that the notifier lists by its client, and
``connections/{connection_id}.json`` naming it, because ``$disconnect`` carries neither the query string nor the
caller. S3 fits: a connection is written once and deleted once, the notifier lists one client's few connections
once per finished prompt, and nothing needs a transaction; a table would be a second store to provision and pay
for. A ``$disconnect`` that never comes (API Gateway sends it best-effort) leaves a registration the notifier drops
on its first 410 (GoneException), or the bucket's lifecycle rule after a day (a connection lasts 2 hours at most).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from lambdas.authorizer import HEADER, KeysUnavailable, keys
from lambdas.common import Deployment, deployment

#: Where the registry lives in the output bucket.
PREFIX = "comfy/ws/"
#: A ComfyUI client id as clients make them (a uuid, a name): safe as one part of a key.
CLIENT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
#: An API Gateway connection id (base64-like, 16 characters today).
CONNECTION_ID = re.compile(r"^[A-Za-z0-9_=+/-]{1,128}$")

log = logging.getLogger("spotgen.comfy_ws")


def client_prefix(caller: str, client_id: str) -> str:
    """The folder of one client's connections: listed by the notifier."""
    return f"{PREFIX}clients/{caller}/{client_id}/"


def connection_key(caller: str, client_id: str, connection_id: str) -> str:
    return client_prefix(caller, client_id) + connection_id


def reverse_key(connection_id: str) -> str:
    """What ``$disconnect`` reads to find the connection's registration (it knows only the connection id)."""
    return f"{PREFIX}connections/{connection_id}.json"


def register(dep: Deployment, caller: str, client_id: str, connection_id: str) -> None:
    """Record a connection: the name first, so that a registration the notifier can find is one
    ``$disconnect`` can remove."""
    dep.store.put_json(reverse_key(connection_id), {"caller": caller, "client_id": client_id})
    dep.store.put_json(connection_key(caller, client_id, connection_id), {})


def forget(dep: Deployment, connection_id: str, caller: str | None = None, client_id: str | None = None) -> None:
    """Remove a connection's registration (S3 deletes of missing keys succeed, so a second call is harmless)."""
    if caller is None or client_id is None:
        named = dep.store.get_json(dep.store.output_bucket, reverse_key(connection_id))
        if not isinstance(named, dict):
            return
        caller, client_id = str(named.get("caller", "")), str(named.get("client_id", ""))
    if CLIENT_ID.match(client_id or "") and caller:
        dep.store.s3.delete_object(Bucket=dep.store.output_bucket, Key=connection_key(caller, client_id,
                                                                                      connection_id))
    dep.store.s3.delete_object(Bucket=dep.store.output_bucket, Key=reverse_key(connection_id))


def connections(dep: Deployment, caller: str, client_id: str) -> list[str]:
    """The connection ids registered for one client."""
    prefix = client_prefix(caller, client_id)
    found: list[str] = []
    pages = dep.store.s3.get_paginator("list_objects_v2").paginate(Bucket=dep.store.output_bucket, Prefix=prefix)
    for page in pages:
        found.extend(obj["Key"][len(prefix):] for obj in page.get("Contents", []))
    return found


def _presented_key(event: dict[str, Any]) -> str | None:
    """The ``x-api-key`` header (WebSocket events keep the header names' case), else the query parameter."""
    for name, value in (event.get("headers") or {}).items():
        if name.lower() == HEADER and value:
            return str(value)
    query = event.get("queryStringParameters") or {}
    return str(query[HEADER]) if query.get(HEADER) else None


def connect(dep: Deployment, event: dict[str, Any], connection_id: str) -> dict[str, Any]:
    """Authorize and register; any status but 200 refuses the handshake."""
    query = event.get("queryStringParameters") or {}
    key = _presented_key(event)
    if key is None:
        return {"statusCode": 401, "body": "Unauthorized"}
    try:
        caller = keys().caller(key)
    except KeysUnavailable:  # fails closed, as the authorizer does: nothing is let through on a missing list
        return {"statusCode": 500, "body": "Internal Server Error"}
    if caller is None:
        source = event.get("requestContext", {}).get("identity", {}).get("sourceIp", "?")
        log.warning("websocket x-api-key refused from %s", source)
        return {"statusCode": 403, "body": "Forbidden"}
    client_id = str(query.get("clientId") or "")
    if not CLIENT_ID.match(client_id):
        # ComfyUI makes one up and tells it in the first `status`; API Gateway cannot send before the connect
        # answers, so the client has to bring its own (every script does)
        return {"statusCode": 400, "body": "clientId (letters, digits, '-', '_', '.', ':'; at most 128) is required"}
    register(dep, caller, client_id, connection_id)
    log.info("websocket %s connected for client %s of %s", connection_id, client_id, caller)
    return {"statusCode": 200}


def handler(event: dict[str, Any], context: Any = None) -> dict[str, Any]:
    """The WebSocket API's routes: ``$connect``, ``$disconnect`` and ``$default`` (what a client sends is not
    acted on: ComfyUI's server reads nothing from its socket that changes a prompt)."""
    request = event.get("requestContext") or {}
    route, connection_id = request.get("routeKey"), str(request.get("connectionId") or "")
    if not CONNECTION_ID.match(connection_id):
        return {"statusCode": 400, "body": "no connection id"}
    if route == "$connect":
        return connect(deployment(), event, connection_id)
    if route == "$disconnect":
        forget(deployment(), connection_id)
    return {"statusCode": 200}
