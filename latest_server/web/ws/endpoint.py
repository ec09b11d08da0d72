"""``GET /ws``: accept (or refuse) a connection, then answer the client's ops on it
(subscribe, unsubscribe, ping; the protocol is in README.md, "Live subscriptions")."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import orjson
from redis.exceptions import RedisError
from starlette.types import Message, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from latest_server import keys
from latest_server.access import (
    AUTHENTICATE_KEY,
    READ,
    Principal,
    client_key,
    principal_of,
    set_principal,
)
from latest_server.errors import PacketRejected, StoreUnavailable, Unauthorized
from latest_server.web._request import json_error
from latest_server.web.ws import protocol
from latest_server.web.ws.direct import abort, stuck
from latest_server.web.ws.hub import Hub
from latest_server.web.ws.protocol import CLOSE_POLICY, CLOSE_SERVER_SHUTDOWN, CLOSE_TRY_AGAIN
from latest_server.web.ws.socket import Socket
from latest_server.web.ws.tasks import stop_tasks

log = logging.getLogger(__name__)


class WebsocketEndpoint:
    """``GET /ws`` as an ASGI app rather than a Starlette endpoint function, so that the
    socket's sender calls the ``send`` it is given (the server's, behind the exception
    middleware's thin wrapper) instead of ``WebSocket.send``: Starlette's per-message checks and
    wrapping were a tenth of the cost of a frame on a busy fan-out."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await websocket(WebSocket(scope, receive, send), send)


async def websocket(ws: WebSocket, send: Send) -> None:
    hub: Hub = ws.app.state.hub
    cap = hub.settings.ws_max_connections
    if hub.connections >= cap:
        log.warning("websocket refused: %d connections open (LATEST_WS_MAX_CONNECTIONS)", cap)
        return await _refuse(
            ws, f"this server holds at most {cap} websocket connections; try again later"
        )
    client = client_key(ws.scope)
    per_client = hub.settings.ws_max_connections_per_client
    if hub.per_client[client] >= per_client:
        log.info("websocket refused: %s holds %d connections", client, per_client)
        return await _refuse(
            ws,
            f"this client holds {per_client} websocket connections, the most one client may "
            "(LATEST_WS_MAX_CONNECTIONS_PER_CLIENT); close one or try again later",
        )
    hub.connections += 1
    hub.per_client[client] += 1
    try:
        await ws.accept()
        await _serve(hub, ws, send)
    finally:
        hub.connections -= 1
        hub.per_client[client] -= 1
        if not hub.per_client[client]:
            del hub.per_client[client]


async def _refuse(ws: WebSocket, reason: str) -> None:
    """Answer an upgrade past LATEST_WS_MAX_CONNECTIONS (or past the client's share,
    LATEST_WS_MAX_CONNECTIONS_PER_CLIENT) with 503 (or, where the server cannot answer an
    upgrade with a response, accept and close with 1013, "try again later")."""
    if "websocket.http.response" in ws.scope.get("extensions", {}):
        await ws.send_denial_response(json_error(503, "too_many_connections", reason))
        return
    await ws.accept()
    await ws.close(CLOSE_TRY_AGAIN, reason[:120])


async def _serve(hub: Hub, ws: WebSocket, send: Send) -> None:
    socket = Socket(hub, hub.settings, ws, send)
    hub.sockets.add(socket)
    sender = socket.sender = asyncio.create_task(socket.send_loop(), name="ws-send")
    gone: int | None = None  # the code of the disconnect received
    try:
        while not socket.closed:
            message: Message | None
            if AUTHENTICATE_KEY in ws.scope:  # no credentials yet: an auth message is due
                message = await _receive_before(ws, socket, hub.settings.ws_auth_timeout)
                if message is None:
                    break
            else:
                message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                gone = message.get("code")
                break
            text = message.get("text")
            if text is None:
                data = message.get("bytes") or b""
                text = data.decode(errors="replace")
            await handle(hub, socket, text)
    except WebSocketDisconnect:
        pass
    finally:
        hub.sockets.discard(socket)
        if socket.closer is not None:
            gone = await _discard_until(ws, socket.closer) or gone
        await socket.close(None, "")
        await stop_tasks([sender])
        if gone == CLOSE_SERVER_SHUTDOWN and stuck(ws.scope):
            # uvicorn's shutdown wrote its close frame and closes the transport, which happens
            # once its buffer is written: from a client that reads nothing, never, and the
            # shutdown waits for every connection. Dropped now.
            abort(ws.scope)


async def _receive_before(ws: WebSocket, socket: Socket, within: float) -> Message | None:
    """The next message of a socket that has not authenticated, or None once the socket is
    closed with 1008 because its ``auth`` message is overdue (LATEST_WS_AUTH_TIMEOUT since the
    upgrade)."""
    deadline = ws.scope.setdefault("latest.auth_deadline", time.monotonic() + within)
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            return await ws.receive()
    except TimeoutError:
        socket.error("unauthorized", f"no auth message within {within:g} s")
        await socket.close(CLOSE_POLICY, "authenticate first")
        return None


async def _discard_until(ws: WebSocket, closer: asyncio.Task[None]) -> int | None:
    """Read and drop what the client sends until ``closer`` (a 4008 close) is done; the code of
    a disconnect that came first. The close frame waits for the client to read; a client still
    writing to us (a burst of requests, a blocking ``send``) reads only once its write is taken.
    Left unread, its write and our close frame waited for each other until SLOW_CLOSE_WAIT
    dropped the connection, and the client never learnt it had to resume with since. (Once the
    close frame is written the server drops what the client sends itself.) The server's
    shutdown does not wait for the close frame: it sends its own."""

    async def discard() -> int | None:
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    code: int | None = message.get("code")
                    return code
        return None

    reader = asyncio.create_task(discard(), name="ws-discard")
    try:
        await asyncio.wait([closer, reader], return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and reader.result() == CLOSE_SERVER_SHUTDOWN:
            await stop_tasks([closer])
            return CLOSE_SERVER_SHUTDOWN
        await asyncio.wait([closer])
        return None
    finally:
        await stop_tasks([reader])


async def handle(hub: Hub, socket: Socket, text: str) -> None:
    """Answer one frame of the client's."""
    settings = hub.settings
    if len(text) > settings.ws_max_frame_bytes:
        return socket.error(
            "frame_too_large", f"frames are limited to {settings.ws_max_frame_bytes} bytes"
        )
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return socket.error("not_json", "a frame must be a JSON object")
    if not isinstance(message, dict):
        return socket.error("not_object", "a frame must be a JSON object")
    op = message.get("op")
    if op == "ping":
        return socket.control({"type": "pong"})
    if op == "auth" or message.get("type") == "auth":
        return authenticate(socket, message)
    if not principal_of(socket.ws.scope).can(READ):
        return socket.error(
            "unauthorized", 'authenticate first: send {"type": "auth", "token": "<token>"}'
        )
    if op in ("subscribe", "unsubscribe") and "sessions" in message:
        sessions = protocol.ids(message, "sessions")
        if sessions is None:
            return socket.error("bad_sessions", '"sessions" must be a non-empty list of ids')
        principal = principal_of(socket.ws.scope)
        if principal.prefixes is not None and op == "subscribe":
            sessions = covered(socket, principal, sessions, "session")
        if op == "subscribe":
            if sessions:
                await watch(hub, socket, sessions)
        else:
            hub.unwatch(socket, sessions)
            socket.watched.difference_update(sessions)
            for session_id in sessions:
                socket.control({"type": "unsubscribed", "session": session_id})
        if "ids" not in message:
            return None
    if op == "subscribe":
        return await subscribe(hub, socket, message)
    if op == "unsubscribe":
        ids = protocol.ids(message)
        if ids is None:
            return socket.error("bad_ids", '"ids" must be a non-empty list of variable ids')
        for variable_id in ids:
            subscription = socket.subscriptions.pop(variable_id, None)
            if subscription is not None:
                await subscription.close()
            socket.control({"type": "unsubscribed", "id": variable_id})
        return None
    return socket.error(
        "unknown_op", f"unknown op {str(op)[:64]!r}: use subscribe, unsubscribe or ping"
    )


def authenticate(socket: Socket, message: dict[str, Any]) -> None:
    """``{"type": "auth", "token": "..."}``: the socket acts as the token's principal from now
    on. Only a socket that came without credentials, where tokens are needed, authenticates."""
    scope = socket.ws.scope
    check = scope.get(AUTHENTICATE_KEY)
    if check is None:  # authenticated by its upgrade's header, or no tokens are needed
        return socket.control({"type": "authenticated", "name": principal_of(scope).name})
    token = message.get("token")
    if not isinstance(token, str) or not token:
        return socket.error("unauthorized", '"token" must be a non-empty string')
    try:
        principal = check(token)
    except Unauthorized as exc:
        return socket.error("unauthorized", exc.message)
    if not principal.can(READ):
        return socket.error("forbidden", f"token {principal.name!r} lacks the 'read' scope")
    set_principal(scope, principal)
    del scope[AUTHENTICATE_KEY]
    return socket.control({"type": "authenticated", "name": principal.name})


def covered(socket: Socket, principal: Principal, ids: list[str], kind: str = "id") -> list[str]:
    """The ids ``principal`` may read; an error frame naming each other one (as ``kind``: a
    variable's ``id``, or a ``session``)."""
    allowed = []
    for variable_id in ids:
        if principal.covers(variable_id):
            allowed.append(variable_id)
            continue
        socket.control(
            {
                "type": "error",
                "reason": "forbidden",
                kind: variable_id,
                "message": f"token {principal.name!r} may not read this {kind} "
                "(outside its prefixes)",
            }
        )
    return allowed


async def watch(hub: Hub, socket: Socket, sessions: list[str]) -> None:
    limit = hub.settings.ws_max_subscriptions
    new = [i for i in sessions if i not in socket.watched]
    if len(socket.subscriptions) + len(socket.watched) + len(new) > limit:
        return socket.error(
            "too_many_subscriptions",
            f"a socket may subscribe to at most {limit} variables and sessions",
        )
    if hub.sessions is None:
        return socket.error("unavailable", "this server keeps no sessions")
    socket.watched.update(new)
    for session_id in new:
        socket.control({"type": "subscribed", "session": session_id})
    try:
        await hub.sessions.watch(socket, new)
    except TimeoutError:
        socket.error("unavailable", "the live feed is reconnecting: the snapshot follows then")
    except (RedisError, StoreUnavailable, OSError) as exc:
        socket.error("unavailable", f"cannot read the sessions now: {exc}")
    return None


async def subscribe(hub: Hub, socket: Socket, message: dict[str, Any]) -> None:
    ids = protocol.ids(message)
    if ids is None:
        return socket.error("bad_ids", '"ids" must be a non-empty list of variable ids')
    principal = principal_of(socket.ws.scope)
    if principal.prefixes is not None:
        ids = covered(socket, principal, ids)
        if not ids:
            return None
    modes = [name for name in ("since", "from", "latest") if message.get(name) not in (None, False)]
    if len(modes) > 1:
        return socket.error(
            "bad_request", f"use one of since, from, latest, not {' and '.join(modes)}"
        )
    limit = hub.settings.ws_max_subscriptions
    new = [i for i in ids if i not in socket.subscriptions]
    if len(socket.subscriptions) + len(socket.watched) + len(new) > limit:
        return socket.error(
            "too_many_subscriptions", f"a socket may subscribe to at most {limit} variables"
        )
    since: dict[str, tuple[int, int]] = {}
    from_us = None
    if message.get("since") is not None:
        parsed = protocol.since(message["since"])
        if isinstance(parsed, str):
            return socket.error("bad_since", parsed)
        since = parsed
    if message.get("from") is not None:
        try:
            from_us = hub.parser.time_to_us(message["from"])
        except PacketRejected as exc:
            return socket.error("bad_time", str(exc))
    latest = message.get("latest") is True
    for variable_id in ids:
        old = socket.subscriptions.pop(variable_id, None)
        if old is not None:
            await old.close()  # subscribing again restarts it with the new start
        key = keys.key_for(variable_id)
        subscription = hub.subscription(
            socket, variable_id, key, since=since.get(variable_id), from_us=from_us, latest=latest
        )
        socket.subscriptions[variable_id] = subscription
        socket.control({"type": "subscribed", "id": variable_id, "key": key})
        subscription.start()
    return None
