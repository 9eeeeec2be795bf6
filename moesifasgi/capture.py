"""Per-request capture: what one HTTP exchange looked like on the wire.

An `Exchange` is created for each request and lives only as long as it. It
copies the request body as the app reads it (reading it ahead of the app only
when its declared length is within the cap, see `reads_ahead`) and the response status, headers and body as the app sends them, keeping at
most `limit` bytes of each body so that memory per request stays bounded.
"""
from __future__ import annotations

import os
import time
from collections import deque
from typing import Any, Deque, Dict, List, Mapping, Optional, Tuple, Union

from .asgi_types import Message, Receive, Scope
from .bodies import BodyBuffer
from .multipart import MultipartSummary, is_multipart
from .client_ip import client_ip
from .per_process import after_fork_in_child

TRANSACTION_HEADER = "x-moesif-transaction-id"
_TRANSACTION_HEADER_BYTES = TRANSACTION_HEADER.encode("latin-1")
_TRANSACTION_HEADER_LENGTH = len(_TRANSACTION_HEADER_BYTES)

RawHeaders = List[Tuple[bytes, bytes]]

# Transaction ids are drawn from the OS's random source, 256 at a time, and
# written out as text at once: one getrandom() call, one hex conversion and 32
# slice assignments per 256 ids, after which each id is one list pop (atomic, so
# threads capturing outgoing calls never share one). Each id is as random as
# str(uuid.uuid4()) (it is sent to clients in X-Moesif-Transaction-Id, so it must
# not tell how many calls a worker served), at a fraction of its cost. The version
# and variant bits are set for the whole draw at once (two translate() calls).
_IDS_PER_DRAW = 256
_VERSION_4 = bytes((b & 0x0F) | 0x40 for b in range(256))  # byte 6: 0100xxxx
_VARIANT_10 = bytes((b & 0x3F) | 0x80 for b in range(256))  # byte 8: 10xxxxxx
# An id's text, 8-4-4-4-12 hex digits, and the comma that ends it in a draw's text;
# where each of its 32 digits goes in that text.
_ID_STRIDE = 37
_DIGIT_PLACES = tuple(i + (i >= 8) + (i >= 12) + (i >= 16) + (i >= 20) for i in range(32))
_ids: List[str] = []


def _forget_ids_after_fork() -> None:
    # A forked child must not hand out the rest of its parent's draw.
    _ids.clear()


after_fork_in_child(_forget_ids_after_fork)


def _draw_ids() -> List[str]:
    raw = bytearray(os.urandom(16 * _IDS_PER_DRAW))
    raw[6::16] = raw[6::16].translate(_VERSION_4)
    raw[8::16] = raw[8::16].translate(_VARIANT_10)
    digits = raw.hex().encode("ascii")
    text = bytearray(b"-" * (_ID_STRIDE - 1) + b",") * _IDS_PER_DRAW
    for digit, place in enumerate(_DIGIT_PLACES):
        text[place::_ID_STRIDE] = digits[digit::32]
    return text[:-1].decode("ascii").split(",")


def new_transaction_id() -> str:
    """A random version-4 UUID string, as ``str(uuid.uuid4())`` gives."""
    while True:
        try:
            return _ids.pop()
        except IndexError:
            # Other threads may take the new draw before this one does: draw again.
            _ids.extend(_draw_ids())


# Header names as the wire gives them -> their lower-cased text. A server sends the
# same few dozen names over and over: a dict lookup instead of a decode and a
# lower() each. Bounded (clients choose names); cleared when full so that the
# common names come back even after a flood of odd ones.
_NAMES: Dict[bytes, str] = {}
_NAMES_MAX = 512


def _header_name(raw_name: bytes) -> str:
    name = raw_name.decode("latin-1").lower()
    if type(raw_name) is bytes:  # a bytearray cannot be a key, and could change
        if len(_NAMES) >= _NAMES_MAX:
            _NAMES.clear()
        _NAMES[raw_name] = name
    return name


def decode_headers(raw: Optional[RawHeaders]) -> Dict[str, str]:
    """Lowercase name -> value; repeated headers joined with ', '.

    latin-1 decoding cannot fail, so a header with invalid UTF-8 is kept
    (mangled) rather than breaking the capture.
    """
    if not raw:
        return {}
    names = _NAMES
    try:
        headers = {names[name]: value.decode("latin-1") for name, value in raw}
    except (KeyError, TypeError):  # a name not seen yet (or not hashable)
        headers = {_header_name(name): value.decode("latin-1") for name, value in raw}
    if len(headers) == len(raw):
        return headers
    # Some name repeats: join its values in order instead of keeping the last.
    headers = {}
    for name, value in raw:
        key = _header_name(name)
        text = value.decode("latin-1")
        headers[key] = headers[key] + ", " + text if key in headers else text
    return headers


def request_uri(scope: Mapping[str, Any], headers: Mapping[str, str]) -> str:
    """The full URL the client asked for, query string included."""
    scheme = scope.get("scheme", "http")
    host = headers.get("host")
    if not host:
        server = scope.get("server")
        if server:
            name, port = server[0], server[1]
            default = {"http": 80, "https": 443}.get(scheme)
            host = name if port in (None, default) else f"{name}:{port}"
        else:
            host = "localhost"
    root = scope.get("root_path", "")
    raw_path = scope.get("raw_path")
    if raw_path:
        # raw_path keeps percent-encoding exactly as the client sent it. It never
        # holds the query by the ASGI spec, but Starlette 0.32's TestClient (FastAPI
        # 0.108) puts it there; a '?' cannot be part of a path, so cut at the first.
        path = raw_path.decode("latin-1")
        if "?" in path:
            path = path.split("?", 1)[0]
        if root and not path.startswith(root):
            path = root + path
    else:
        path = root + scope.get("path", "/")
    query = scope.get("query_string", b"")
    if query:
        return f"{scheme}://{host}{path}?{query.decode('latin-1')}"
    return f"{scheme}://{host}{path}"


def peer_host(scope: Mapping[str, Any]) -> Optional[str]:
    client = scope.get("client")
    return client[0] if client else None


class Exchange:
    __slots__ = (
        "scope",
        "started_at",
        "finished_at",
        "request_headers",
        "transaction_id",
        "transaction_header",
        "request_body",
        "body_limit",
        "log_body",
        "status",
        "response_raw_headers",
        "response_body",
        "response_started",
        "response_complete",
        "recorded",
        "blocked_by",
        "_uri",
        "_ip_address",
        "_receive",
        "_multipart",
    )

    def __init__(self, scope: Scope, receive: Receive, log_body: bool, body_limit: int, use_transaction_id: bool) -> None:
        self.scope = scope
        self.started_at = time.time()
        self.finished_at: Optional[float] = None
        self.request_headers = decode_headers(scope.get("headers"))
        # The event always carries a transaction id, fixed now, so that a re-post
        # after a crash is deduplicated by Moesif; the header is what
        # DISABLED_TRANSACTION_ID turns off.
        self.transaction_header = use_transaction_id
        incoming = self.request_headers.get(TRANSACTION_HEADER) if use_transaction_id else None
        if incoming:
            incoming = incoming.strip()
        # An id the caller already chose (e.g. an upstream service that also
        # reports to Moesif) is kept, so both sides of the call share it.
        self.transaction_id = incoming[:128] if incoming else new_transaction_id()
        self.body_limit = body_limit
        self.log_body = log_body
        # Created on the first chunk: most calls have no request body.
        self.request_body: Union[BodyBuffer, MultipartSummary, None] = None
        self.response_body: Optional[BodyBuffer] = None
        self.status: Optional[int] = None
        self.response_raw_headers: RawHeaders = []
        self.response_started = False
        self.response_complete = False
        self.recorded = False
        self.blocked_by: Optional[str] = None
        self._uri: Optional[str] = None
        self._ip_address: Optional[str] = None
        self._receive = receive
        self._multipart: Optional[bool] = None  # whether the request body is multipart, once known

    # The URL and client IP are needed by governance, sampling and the event
    # itself: worked out once, on first use.

    @property
    def uri(self) -> str:
        if self._uri is None:
            self._uri = request_uri(self.scope, self.request_headers)
        return self._uri

    @property
    def ip_address(self) -> Optional[str]:
        if self._ip_address is None:
            self._ip_address = client_ip(self.request_headers, peer_host(self.scope))
        return self._ip_address

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            if chunk:
                body = self.request_body
                if body is None:
                    body = self.request_body = self._new_request_body()
                if isinstance(body, MultipartSummary):
                    body.feed(chunk)
                else:
                    body.append(chunk)
        return message

    def reads_ahead(self) -> bool:
        """True when the whole request body should be read before the app runs: a
        declared Content-Length within the cap, and not a multipart upload (those
        stream to the app; only their summary is kept)."""
        length = self.request_headers.get("content-length")
        if not length:
            return False
        length = length.strip()
        if not length.isdigit() or not 0 < int(length) <= self.body_limit:
            return False
        multipart = self._multipart = is_multipart(self.request_headers.get("content-type"))
        return not multipart

    async def read_ahead(self) -> Receive:
        """Read (and capture) the request body now; return the `receive` for the app,
        which replays the very same messages, then reads on."""
        receive = self.receive
        messages: Deque[Message] = deque()
        failure: List[Exception] = []
        try:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                # The common case, the whole body in one message (or http.disconnect,
                # which the app will see too): replayed without a queue.
                first = [message]

                async def replay_first() -> Message:
                    if first:
                        return first.pop()
                    return await receive()

                return replay_first
            messages.append(message)
            size = len(message.get("body", b""))
            while size <= self.body_limit:  # beyond: a client sending more than it declared, streamed
                message = await receive()
                messages.append(message)
                if message["type"] != "http.request" or not message.get("more_body", False):
                    break  # the whole body, or http.disconnect: the app will see it too
                size += len(message.get("body", b""))
        except Exception as exc:
            # The server's receive failed: the app gets what came before, then
            # the very same error, where it would have met it.
            failure.append(exc)

        async def replay() -> Message:
            if messages:
                return messages.popleft()
            if failure:
                raise failure.pop()
            return await receive()

        return replay

    def _new_request_body(self) -> Union[BodyBuffer, MultipartSummary]:
        content_type = self.request_headers.get("content-type")
        multipart = self._multipart
        if multipart is None:
            multipart = self._multipart = is_multipart(content_type)
        if multipart:
            summary = MultipartSummary.from_content_type(content_type)
            if summary is not None:
                return summary
        return BodyBuffer(self.body_limit)

    def on_response_start(self, message: Message) -> Message:
        """Note status and headers; return the message to send (with our id header)."""
        self.response_started = True
        status = message.get("status", 200)
        self.status = status if type(status) is int else int(status)
        headers = list(message.get("headers") or ())
        if self.transaction_header:
            for name, _ in headers:
                # Only a name of the same length can be ours: no lower() for the others.
                if len(name) == _TRANSACTION_HEADER_LENGTH and name.lower() == _TRANSACTION_HEADER_BYTES:
                    break  # the app set its own: sent as it is
            else:
                headers.append((_TRANSACTION_HEADER_BYTES, self.transaction_id.encode("latin-1")))
                message = {**message, "headers": headers}
        self.response_raw_headers = headers
        return message

    def on_response_body(self, message: Message) -> bool:
        """Copy a body chunk; True when this is the last one."""
        chunk = message.get("body", b"")
        if chunk and self.log_body:
            body = self.response_body
            if body is None:
                body = self.response_body = BodyBuffer(self.body_limit)
            body.append(chunk)
        if message.get("more_body", False):
            return False
        self.response_complete = True
        self.finished_at = time.time()
        return True

    def request_body_bytes(self) -> Optional[bytes]:
        """The captured request body when it is complete, for callbacks that read it."""
        if isinstance(self.request_body, BodyBuffer) and not self.request_body.truncated:
            return self.request_body.getvalue()
        return None
