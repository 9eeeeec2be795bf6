"""The middleware's settings: validated once, at construction, into a frozen object.

The keys are those of the original `moesifasgi` package (same names, same
defaults) plus the ones this package adds for its durable queue.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, ItemsView, Iterator, KeysView, Literal, Mapping, Optional, Tuple,
                    ValuesView, cast)

from .bodies import MAX_BODY_BYTES
from .identity import parse_authorization_header_names
from .queue_location import default_queue_path, resolve_queue_path  # noqa: F401  (re-exported)

DEFAULT_BASE_URI = "https://api.moesif.net"
Durability = Literal["batched", "strict"]
FlusherMode = Literal["helper", "in-process", "external"]
DURABILITY_MODES: Tuple[Durability, ...] = ("batched", "strict")
FLUSHER_MODES: Tuple[FlusherMode, ...] = ("helper", "in-process", "external")
# The name "helper" had before: it read as "inside the worker", the one mode it is not.
_FLUSHER_ALIASES = {"embedded": "helper"}
# Seconds all the callbacks of one call may take together (MASK_EVENT_MODEL
# included). A user lookup takes milliseconds; past this something is stuck,
# and in strict mode the client's response is waiting for it.
DEFAULT_CALLBACK_TIMEOUT = 2.0
DEFAULT_EVENT_QUEUE_SIZE = 1_000_000
DEFAULT_FLUSH_CONCURRENCY = 4

Callback = Callable[..., Any]

logger = logging.getLogger(__name__)

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
    durability: Durability = "batched"
    flusher: FlusherMode = "helper"
    max_body_bytes: int = MAX_BODY_BYTES
    flush_concurrency: int = 4
    capture_outgoing_requests: bool = False
    callback_timeout: float = DEFAULT_CALLBACK_TIMEOUT
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

    # The original kept the settings dict itself as `middleware.settings`;
    # code that reads `mw.settings["APPLICATION_ID"]` reads what it was given.

    def __getitem__(self, key: str) -> Any:
        return self.raw[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.raw

    def __iter__(self) -> Iterator[str]:
        return iter(self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def keys(self) -> KeysView[str]:
        return self.raw.keys()

    def items(self) -> ItemsView[str, Any]:
        return self.raw.items()

    def values(self) -> ValuesView[Any]:
        return self.raw.values()

    def copy(self) -> Dict[str, Any]:
        return dict(self.raw)


Mapping.register(Settings)


# EVENT_QUEUE_SIZE 0 (or less) made the original's queue.Queue unbounded; here
# the disk is the bound.
UNBOUNDED_QUEUE_SIZE = 2 ** 62


def _warn_default(key: str, value: Any, expected: str, default: Any) -> None:
    # The original accepted almost anything here; a setting it would have
    # tolerated must not stop the app from starting (only APPLICATION_ID does).
    logger.warning("moesifasgi: %s must be %s, got %r; using %r", key, expected, value, default)


def _whole_number(value: Any) -> Optional[int]:
    """An int, or a float with no fraction (BATCH_SIZE: 100.0); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _positive_int(settings: Mapping[str, Any], key: str, default: int) -> int:
    if settings.get(key) is None:
        return default
    value = settings[key]
    number = _whole_number(value)
    if number is None or number <= 0:
        _warn_default(key, value, "a positive integer", default)
        return default
    return number


def _seconds(settings: Mapping[str, Any], key: str, default: float, *, zero: bool = True) -> float:
    if settings.get(key) is None:
        return default
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 if zero else 1e-9) <= value <= 3600:
        _warn_default(key, value, f"a number of seconds {'from 0' if zero else 'over 0'} to 3600", default)
        return default
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


def _flusher_alias(value: Any) -> Any:
    return _FLUSHER_ALIASES.get(value, value) if isinstance(value, str) else value


def _choice(settings: Mapping[str, Any], key: str, choices: Tuple[str, ...]) -> str:
    value = settings.get(key) or choices[0]
    if value not in choices:
        _warn_default(key, value, "one of " + ", ".join(map(repr, choices)), choices[0])
        return choices[0]
    return value


def _queue_size(settings: Mapping[str, Any]) -> int:
    value = settings.get("EVENT_QUEUE_SIZE")
    number = _whole_number(value)
    if value is None:
        return DEFAULT_EVENT_QUEUE_SIZE
    if number is None:
        _warn_default("EVENT_QUEUE_SIZE", value, "an integer", DEFAULT_EVENT_QUEUE_SIZE)
        return DEFAULT_EVENT_QUEUE_SIZE
    return number if number > 0 else UNBOUNDED_QUEUE_SIZE


def _flush_concurrency(settings: Mapping[str, Any]) -> int:
    if settings.get("FLUSH_CONCURRENCY") is not None:
        return _positive_int(settings, "FLUSH_CONCURRENCY", DEFAULT_FLUSH_CONCURRENCY)
    # The original's EVENT_WORKER_COUNT (threads posting batches) means the
    # same; the original's pool never used it, so 0 or junk is no error.
    number = _whole_number(settings.get("EVENT_WORKER_COUNT"))
    return number if number is not None and number > 0 else DEFAULT_FLUSH_CONCURRENCY


def parse_settings(settings: Any) -> Settings:
    """Read a settings dict as the original package did.

    Only a missing APPLICATION_ID (or settings that are not a dict), a mask
    setting that is not a list of names (masking must never turn itself off) and
    the lack of any private place for the queue raise; any other value the
    original would have tolerated gets its default, with a warning, and a
    callback that is not callable (`SKIP: False`) is unset.
    """
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
            if value is not False:  # SKIP: False is a common way to say "none"
                logger.warning("moesifasgi: %s must be a function, got %s; it is ignored", key, type(value).__name__)
            value = None
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
        event_batch_timeout=_seconds(settings, "EVENT_BATCH_TIMEOUT", 1.0),
        event_queue_size=_queue_size(settings),
        authorization_header_names=header_names or ("authorization",),
        authorization_user_id_field=str(settings.get("AUTHORIZATION_USER_ID_FIELD") or "sub").lower(),
        api_version=None if api_version is None else str(api_version),
        disabled_transaction_id=bool(settings.get("DISABLED_TRANSACTION_ID", False)),
        queue_path=resolve_queue_path(settings.get("QUEUE_PATH"), application_id),
        durability=cast(Durability, _choice(settings, "DURABILITY", DURABILITY_MODES)),
        flusher=cast(FlusherMode, _choice(
            {"FLUSHER": _flusher_alias(settings.get("FLUSHER") or os.environ.get("MOESIF_FLUSHER") or "helper")},
            "FLUSHER", FLUSHER_MODES)),
        max_body_bytes=_positive_int(settings, "MAX_BODY_BYTES", MAX_BODY_BYTES),
        flush_concurrency=_flush_concurrency(settings),
        capture_outgoing_requests=bool(settings.get("CAPTURE_OUTGOING_REQUESTS", False)),
        callback_timeout=_seconds(settings, "CALLBACK_TIMEOUT", DEFAULT_CALLBACK_TIMEOUT, zero=False),
        log_body_outgoing=bool(settings.get("LOG_BODY_OUTGOING", True)),
        request_header_masks=_names(settings, "REQUEST_HEADER_MASKS"),
        response_header_masks=_names(settings, "RESPONSE_HEADER_MASKS"),
        request_body_masks=_names(settings, "REQUEST_BODY_MASKS"),
        response_body_masks=_names(settings, "RESPONSE_BODY_MASKS"),
        redact_outgoing_credentials=bool(settings.get("REDACT_OUTGOING_CREDENTIALS", True)),
        raw=dict(settings),
        **callbacks,
    )
