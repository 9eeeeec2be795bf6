"""Derive a user id from an authorization header, as Moesif's middleware does.

Used when the app gives no ``IDENTIFY_USER`` callback. Supported forms:

- ``Bearer <jwt>``: the JWT payload's ``field`` claim (default ``sub``);
- ``Basic <base64(user:password)>``: the user name;
- anything else: a bare JWT (``header.payload.signature``), possibly after a
  custom scheme word (``JWT <jwt>``), or a bare base64 JSON object.

Nothing is verified: the id is only a label for analytics, never an
authorization decision. Malformed input gives None and never raises.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from typing import Any, Mapping, Optional, Sequence, Tuple

__all__ = [
    "DEFAULT_AUTHORIZATION_HEADER",
    "parse_authorization_header_names",
    "user_id_from_authorization",
]

logger = logging.getLogger(__name__)

DEFAULT_AUTHORIZATION_HEADER = "authorization"

# A JWT payload is a few hundred bytes; refusing megabyte tokens keeps a
# hostile header from costing real CPU on every request.
_MAX_TOKEN_CHARS = 16 * 1024


def parse_authorization_header_names(
    value: Optional[str] = DEFAULT_AUTHORIZATION_HEADER,
) -> Tuple[str, ...]:
    """Split the ``AUTHORIZATION_HEADER_NAME`` setting into header names.

    ``"X-Api-Token, Authorization"`` gives ``("x-api-token", "authorization")``.
    Empty parts are dropped; a setting with no names at all falls back to
    ``("authorization",)`` rather than silently disabling identification.
    """
    if not isinstance(value, str):
        return (DEFAULT_AUTHORIZATION_HEADER,)
    names = tuple(part.strip().lower() for part in value.split(","))
    names = tuple(name for name in names if name)
    return names or (DEFAULT_AUTHORIZATION_HEADER,)


def _b64decode(segment: str) -> bytes:
    # JWTs use base64url without padding; older clients send the standard
    # alphabet. urlsafe_b64decode accepts both once the padding is restored.
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _claim(payload_b64: str, field: str) -> Optional[str]:
    try:
        claims: Any = json.loads(_b64decode(payload_b64))
    except (ValueError, binascii.Error, RecursionError):
        # ValueError covers bad JSON and undecodable bytes.
        return None
    if not isinstance(claims, dict):
        return None
    if field in claims:
        value = claims[field]
    else:
        # The original lowercased every payload key; compare the same way.
        value = None
        for key, candidate in claims.items():
            if isinstance(key, str) and key.lower() == field:
                value = candidate
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value or None
    if isinstance(value, (int, float)):
        return str(value)
    return None  # objects and arrays are not identifiers


def _basic_user(credentials: str) -> Optional[str]:
    try:
        padded = credentials + "=" * (-len(credentials) % 4)
        decoded = base64.b64decode(padded, validate=True).decode("utf-8")
    except (ValueError, binascii.Error):
        return None
    user = decoded.partition(":")[0].strip()
    return user or None


def user_id_from_authorization(
    headers: Mapping[str, str], header_names: Sequence[str], field: str
) -> Optional[str]:
    """Return the user id carried by the first present authorization header.

    ``headers`` has lowercase names; ``header_names`` comes from
    :func:`parse_authorization_header_names` and is tried in order. If the
    chosen header holds several comma-separated values, the first is used.
    ``field`` names the JWT claim (compared case-insensitively).
    """
    try:
        raw = None
        for name in header_names:
            raw = headers.get(name)
            if raw is not None:
                break
        if not raw or len(raw) > _MAX_TOKEN_CHARS:
            return None
        token = raw.split(",", 1)[0].strip()
        if not token:
            return None
        field = field.strip().lower() if field else "sub"
        scheme, _, rest = token.partition(" ")
        lowered = scheme.lower()
        if lowered == "bearer":
            parts = rest.strip().split(".")
            if len(parts) >= 3 and parts[1]:
                return _claim(parts[1], field)
            return None
        if lowered == "basic":
            return _basic_user(rest.strip())
        # A custom scheme word ("JWT", "Token") may precede the credential.
        credential = token.rsplit(None, 1)[-1]
        parts = credential.split(".")
        if len(parts) >= 3 and parts[1]:
            return _claim(parts[1], field)
        if len(parts) == 1:
            return _claim(credential, field)
        return None
    except Exception:  # identification must never break a request
        logger.debug("could not read a user id from the authorization header", exc_info=True)
        return None
