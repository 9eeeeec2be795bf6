"""Applying governance rules to a live ASGI request: the middleware's side of it.

The middleware asks :func:`check` before calling the app (only when the stored
rules compiled to something: ``pipeline.remote.governance is not None``). A blocked
call is answered with :func:`respond_blocked` and the app is never called; for a
call that goes on, :func:`adding_headers` wraps ``send`` so the matching rules'
headers reach the client.

Reading the request body ahead of the app is the one thing governance needs that
capture never does. It happens only when a rule tests a ``request.body.*`` field
(and the body may be JSON), or when user/company rules need an identify callback
(which, as in the original, may read the body); at most ``MAX_BODY_BYTES`` are
read, and the app then receives the very same messages, replayed.
"""
from __future__ import annotations

import logging
import time
from typing import Any, List, Optional, Tuple

from .. import jsoncodec
from ..asgi_types import Message, Receive, Send
from ..bodies import encode_body
from ..callbacks import CallbackTimeout, invoke, request_for
from ..capture import Exchange
from ..diagnostics import problems
from ..event_builder import route_of
from .engine import GovernanceDecision, GovernanceRules
from ..identity import user_id_from_authorization
from ..settings import Settings

__all__ = ["adding_headers", "check", "extra_headers", "read_ahead", "respond_blocked"]

logger = logging.getLogger(__name__)

RawHeaders = List[Tuple[bytes, bytes]]

# Framing is the server's business: a rule must not be able to corrupt it.
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})


async def check(rules: GovernanceRules, exchange: Exchange, receive: Receive,
                settings: Settings) -> Tuple[GovernanceDecision, Receive]:
    """Evaluate ``rules`` for the request of ``exchange``.

    Returns the decision and the ``receive`` the app must be given from now on
    (a replay when the body was read ahead, else ``receive`` itself). Pass as
    ``receive`` what the app would otherwise get (``exchange.receive`` when the
    body is logged), so a body read ahead is captured once, as usual.
    """
    headers = exchange.request_headers
    scope = exchange.scope
    json_wanted = rules.needs_body and _json_like(headers)
    # The original read the whole body before calling the app, so identify
    # callbacks could `await request.json()` before it; they still can.
    request_wanted = bool((rules.needs_user and settings.identify_user)
                          or (rules.needs_company and settings.identify_company))
    raw = None
    carries_body = _may_carry_body(scope, headers)
    if (json_wanted or request_wanted) and carries_body:
        raw, receive = await read_ahead(receive, exchange.body_limit)
    body = None
    if raw and json_wanted:
        value, encoding = encode_body(raw, headers.get("content-type"), headers.get("content-encoding"))
        body = value if encoding == "json" else None
    user_id = company_id = None
    if rules.needs_user or rules.needs_company:
        # As in the original: the identify callbacks see the request and no response.
        request = None
        if request_wanted:
            request = request_for(exchange)
            if raw is not None or not carries_body:
                # Starlette's cache for body()/json(), as request_for uses it.
                request._body = raw if raw is not None else b""
        if rules.needs_user:
            user_id = await _identify("IDENTIFY_USER", settings.identify_user, request, settings.callback_timeout)
            if not user_id:
                user_id = user_id_from_authorization(
                    headers, settings.authorization_header_names, settings.authorization_user_id_field)
        if rules.needs_company:
            company_id = await _identify("IDENTIFY_COMPANY", settings.identify_company, request,
                                         settings.callback_timeout)
    decision = rules.evaluate(
        verb=scope.get("method", "GET"),
        route=route_of(exchange.uri),
        ip_address=exchange.ip_address,
        request_headers=headers,
        request_body=body,
        user_id=None if user_id is None else str(user_id),
        company_id=None if company_id is None else str(company_id),
    )
    return decision, receive


async def _identify(name: str, callback: Any, request: Any, timeout: float) -> Any:
    if callback is None:
        return None
    try:
        return await invoke(callback, request, None, deadline=time.monotonic() + timeout)
    except Exception as exc:
        # The original treats a failing callback as "not identified" here too.
        what = "did not finish in time" if isinstance(exc, CallbackTimeout) else f"raised {type(exc).__name__}: {exc}"
        problems.report(f"governance-{name}", "moesifasgi: %s %s while applying governance rules; "
                        "the call is treated as unidentified", name, what)
        return None


def _json_like(headers: Any) -> bool:
    content_type = headers.get("content-type")
    return content_type is None or "json" in content_type.lower() or "graphql" in content_type.lower()


def _may_carry_body(scope: Any, headers: Any) -> bool:
    length = headers.get("content-length")
    if length is not None:
        length = length.strip()
        return length.isdigit() and int(length) > 0
    if "transfer-encoding" in headers:
        return True
    # HTTP/2 and HTTP/3 may send a body without either header.
    return scope.get("method", "GET") not in ("GET", "HEAD", "OPTIONS")


async def read_ahead(receive: Receive, limit: int) -> Tuple[Optional[bytes], Receive]:
    """Read the request body before the app does; None if it is over ``limit`` or cut short.

    The returned ``receive`` first replays every message read here, then reads on.
    """
    messages: List[Message] = []
    size = 0
    complete = False
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # http.disconnect: the app will see it too
        size += len(message.get("body", b""))
        if not message.get("more_body", False):
            complete = True
            break
        if size > limit:
            break
    body = None
    if complete and size <= limit:
        body = b"".join(m.get("body", b"") for m in messages)

    async def replay() -> Message:
        if messages:
            return messages.pop(0)
        return await receive()

    return body, replay


def extra_headers(decision: GovernanceDecision) -> RawHeaders:
    """The decision's headers as ASGI raw headers (names lowercase, values ASCII)."""
    return [(name.encode("latin-1"), value.encode("latin-1"))
            for name, value in decision.headers.items() if name not in _FRAMING]


async def respond_blocked(send: Send, decision: GovernanceDecision) -> None:
    """Answer with the blocking rule's status, headers and JSON body.

    Send it through the middleware's own ``send`` wrapper, so that the exchange
    records it (and adds X-Moesif-Transaction-Id) like any response.
    """
    body = b"" if decision.body is None else jsoncodec.dumps(decision.body).encode("utf-8")
    headers = extra_headers(decision)
    if body and "content-type" not in decision.headers:
        headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(body)).encode("latin-1")))
    await send({"type": "http.response.start", "status": decision.status or 403, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def adding_headers(send: Send, decision: GovernanceDecision) -> Send:
    """Wrap ``send`` so the app's response carries the rules' headers (rules win a clash)."""
    extra = extra_headers(decision)
    if not extra:
        return send
    names = {name for name, _ in extra}

    async def send_with_headers(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [(n, v) for n, v in message.get("headers") or [] if n.lower() not in names]
            message = dict(message)
            message["headers"] = kept + extra
        await send(message)

    return send_with_headers
