"""ComfyUI's ``/ws?clientId=`` under ``spotgen dev``: a real websocket on the API's own host and port, as ComfyUI's
clients open it beside ``POST /prompt``.

The local gateway hands the upgraded connection here (``make_server(upgrade=...)``); websockets' sans-I/O protocol
frames the messages on that socket. The messages come from the status documents of the client's prompts (those
``POST /prompt`` kept with this ``client_id``, of the same caller), read every ``POLL_S`` and turned into ComfyUI's
events by ``lambdas.comfy_events.Watch``: the same documents ``/history`` reads, so the socket never tells what
``/history`` would not. On AWS the routes are API Gateway's; docs/comfyui.md says what clients do there.
"""

from __future__ import annotations

import json
import logging
import select
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.frames import Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol

from lambdas.comfy_events import Watch, status_message
from lambdas.comfy_history import caller_prompts
from lambdas.comfyui import RECENT
from lambdas.common import deployment
from lambdas.sdapi import caller

log = logging.getLogger("spotgen.comfyws")

#: How often the client's prompts are read (a step of a tiny model takes about this long on a CPU).
POLL_S = 0.25


def is_upgrade(path: str, headers: dict[str, str]) -> bool:
    """A websocket handshake for ``/ws``."""
    return urlsplit(path).path.rstrip("/") == "/ws" and "websocket" in headers.get("upgrade", "").lower()


def serve(connection: Any, path: str, headers: dict[str, str], event: dict[str, Any]) -> None:
    """Run one client's socket until it closes: the handshake's answer, then ``status`` and its prompts' events."""
    protocol = ServerProtocol()
    response = protocol.accept(Request(path, Headers(headers)))
    protocol.send_response(response)
    connection.sendall(b"".join(protocol.data_to_send()))
    if response.status_code != 101:
        return
    client_id = parse_qs(urlsplit(path).query).get("clientId", [""])[0]
    dep, who, watch = deployment(), caller(event), Watch()
    last_remaining: int | None = None
    first = True

    def send(message: dict[str, Any]) -> None:
        protocol.send_text(json.dumps(message).encode())
        connection.sendall(b"".join(protocol.data_to_send()))

    while True:
        readable, _, _ = select.select([connection], [], [], POLL_S)
        if readable:
            data = connection.recv(65536)
            if not data:
                return
            protocol.receive_data(data)
            closing = any(frame.opcode is Opcode.CLOSE for frame in protocol.events_received())
            connection.sendall(b"".join(protocol.data_to_send()))  # pongs, the close's answer
            if closing:
                return
        prompts = caller_prompts(dep, who, RECENT)
        remaining = sum(doc is not None and not doc.state.final for _kept, doc in prompts)
        if remaining != last_remaining:
            send(status_message(remaining, client_id if last_remaining is None else None))
            last_remaining = remaining
        for kept, doc in prompts:
            if doc is not None and kept.get("client_id") == client_id:
                if first and doc.state.final:  # ended before this client watched: ComfyUI would not tell it
                    watch.skip(doc.id)
                for message in watch.messages(kept, doc):
                    send(message)
        first = False
