"""The middleware's settings: validated once, at construction, into a frozen object.

The keys are those of the original `moesifasgi` package (same names, same
defaults) plus the ones this package adds for its durable queue.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

from .bodies import MAX_BODY_BYTES
from .identity import parse_authorization_header_names
from .queue_location import default_queue_path, resolve_queue_path  # noqa: F401  (re-exported)

DEFAULT_BASE_URI = "https://api.moesif.net"
DURABILITY_MODES = ("batched", "strict")
FLUSHER_MODES = ("embedded", "in-process", "external")

Callback = Callable[..., Any]

_CALLBACK_KEYS = (
    "SKIP",
    "IDENTIFY_USER",
    "IDENTIFY_COMPANY",
    "GET_METADATA",
    "GET_SESSION_TOKEN",
    "MASK_EVENT_MODEL",
    "SKIP_OUTGOING",
    "IDENTIFY_USER_OUTGOING",
    "IDENTIFY_COMPANY_OUTGOING",
    "GET_METADATA_OUTGOING",
    "GET_SESSION_TOKEN_OUTGOING",
)


@dataclass(frozen=True)
class Settings:
    application_id: str
    base_uri: str = DEFAULT_BASE_URI
    debug: bool = False
    log_body: bool = True
    batch_size: int = 100
    event_batch_timeout: float = 1.0
    event_queue_size: int = 1_000_000
    authorization_header_names: Tuple[str, ...] = ("authorization",)
    authorization_user_id_field: str = "sub"
    api_version: Optional[str] = None
    disabled_transaction_id: bool = False
    queue_path: str = ""
    durability: str = "batched"
    flusher: str = "embedded"
    max_body_bytes: int = MAX_BODY_BYTES
    flush_concurrency: int = 4
    capture_outgoing_requests: bool = False
    log_body_outgoing: bool = True
    # Declarative masks (lower-case names) and the outgoing credential default: see field_masks.
    request_header_masks: Tuple[str, ...] = ()
    response_header_masks: Tuple[str, ...] = ()
    request_body_masks: Tuple[str, ...] = ()
    response_body_masks: Tuple[str, ...] = ()
    redact_outgoing_credentials: bool = True
    skip: Optional[Callback] = None
    identify_user: Optional[Callback] = None
    identify_company: Optional[Callback] = None
    get_metadata: Optional[Callback] = None
    get_session_token: Optional[Callback] = None
    mask_event_model: Optional[Callback] = None
    skip_outgoing: Optional[Callback] = None
    identify_user_outgoing: Optional[Callback] = None
    identify_company_outgoing: Optional[Callback] = None
    get_metadata_outgoing: Optional[Callback] = None
    get_session_token_outgoing: Optional[Callback] = None
    raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)


def _positive_int(settings: Mapping[str, Any], key: str, default: int) -> int:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"moesifasgi: {key} must be a positive integer, got {value!r}")
    return value


def _non_negative_seconds(settings: Mapping[str, Any], key: str, default: float) -> float:
    value = settings.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 3600:
        raise ValueError(f"moesifasgi: {key} must be a number of seconds between 0 and 3600, got {value!r}")
    return float(value)


def _names(settings: Mapping[str, Any], key: str) -> Tuple[str, ...]:
    """A list of header or field names; a string is read as comma-separated names."""
    value = settings.get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, (list, tuple, set, frozenset)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"moesifasgi: {key} must be a list of names, e.g. ['password'], got {value!r}")
    return tuple(sorted({v.strip().lower() for v in value if v.strip()}))


def _choice(settings: Mapping[str, Any], key: str, choices: Tuple[str, ...]) -> str:
    value = settings.get(key, choices[0])
    if value not in choices:
        raise ValueError(f"moesifasgi: {key} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def parse_settings(settings: Any) -> Settings:
    """Validate a settings dict; raise TypeError/ValueError with a clear message."""
    if not isinstance(settings, Mapping):
        raise TypeError(
            "moesifasgi: settings must be a dict, e.g. "
            "app.add_middleware(MoesifMiddleware, settings={'APPLICATION_ID': '...'}); "
            f"got {type(settings).__name__}"
        )
    application_id = settings.get("APPLICATION_ID")
    if not isinstance(application_id, str) or not application_id.strip():
        raise ValueError(
            "moesifasgi: APPLICATION_ID is required in settings (your Moesif Application Id, "
            "found in the Moesif dashboard under API Keys)"
        )
    application_id = application_id.strip()

    callbacks = {}
    for key in _CALLBACK_KEYS:
        value = settings.get(key)
        if value is not None and not callable(value):
            raise TypeError(f"moesifasgi: {key} must be a function, got {type(value).__name__}")
        callbacks[key.lower()] = value

    base_uri = settings.get("BASE_URI") or os.environ.get("MOESIF_BASE_URI") or DEFAULT_BASE_URI
    header_names = parse_authorization_header_names(str(settings.get("AUTHORIZATION_HEADER_NAME") or "authorization"))
    api_version = settings.get("API_VERSION")

    return Settings(
        application_id=application_id,
        base_uri=str(base_uri).rstrip("/"),
        debug=bool(settings.get("DEBUG", False)),
        log_body=bool(settings.get("LOG_BODY", True)),
        batch_size=_positive_int(settings, "BATCH_SIZE", 100),
        event_batch_timeout=_non_negative_seconds(settings, "EVENT_BATCH_TIMEOUT", 1.0),
        event_queue_size=_positive_int(settings, "EVENT_QUEUE_SIZE", 1_000_000),
        authorization_header_names=header_names or ("authorization",),
        authorization_user_id_field=str(settings.get("AUTHORIZATION_USER_ID_FIELD") or "sub").lower(),
        api_version=None if api_version is None else str(api_version),
        disabled_transaction_id=bool(settings.get("DISABLED_TRANSACTION_ID", False)),
        queue_path=resolve_queue_path(settings.get("QUEUE_PATH"), application_id),
        durability=_choice(settings, "DURABILITY", DURABILITY_MODES),
        flusher=_choice({"FLUSHER": settings.get("FLUSHER") or os.environ.get("MOESIF_FLUSHER") or "embedded"},
                        "FLUSHER", FLUSHER_MODES),
        max_body_bytes=_positive_int(settings, "MAX_BODY_BYTES", MAX_BODY_BYTES),
        # The original's EVENT_WORKER_COUNT (threads posting batches) means the same.
        flush_concurrency=_positive_int(settings, "FLUSH_CONCURRENCY", _positive_int(settings, "EVENT_WORKER_COUNT", 4)),
        capture_outgoing_requests=bool(settings.get("CAPTURE_OUTGOING_REQUESTS", False)),
        log_body_outgoing=bool(settings.get("LOG_BODY_OUTGOING", True)),
        request_header_masks=_names(settings, "REQUEST_HEADER_MASKS"),
        response_header_masks=_names(settings, "RESPONSE_HEADER_MASKS"),
        request_body_masks=_names(settings, "REQUEST_BODY_MASKS"),
        response_body_masks=_names(settings, "RESPONSE_BODY_MASKS"),
        redact_outgoing_credentials=bool(settings.get("REDACT_OUTGOING_CREDENTIALS", True)),
        raw=dict(settings),
        **callbacks,
    )
