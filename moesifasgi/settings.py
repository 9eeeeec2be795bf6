"""The middleware's settings: validated once, at construction, into a frozen object.

The keys are those of the original `moesifasgi` package (same names, same
defaults) plus the ones this package adds for its durable queue.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple

from .bodies import MAX_BODY_BYTES
from .identity import parse_authorization_header_names

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


def queue_directories() -> Tuple[str, str]:
    """(the state directory, the temp-directory fallback) where default queue files live.

    The state directory is `$XDG_STATE_HOME/moesifasgi`, else
    `~/.local/state/moesifasgi`; the fallback, used when that cannot be created
    or written, is `<tempdir>/moesifasgi-<uid>`. Nothing is created here.
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return os.path.join(base, "moesifasgi"), os.path.join(tempfile.gettempdir(), f"moesifasgi-{uid}")


def default_queue_name(application_id: str, cwd: Optional[str] = None) -> str:
    """`queue-<first 16 hex digits of sha256(application id, NUL, real working directory)>.sqlite`."""
    cwd = os.path.realpath(cwd or os.getcwd())
    digest = hashlib.sha256(f"{application_id}\0{cwd}".encode()).hexdigest()[:16]
    return f"queue-{digest}.sqlite"


def default_queue_path(application_id: str, cwd: Optional[str] = None) -> str:
    """Where the queue lives when neither QUEUE_PATH nor MOESIF_QUEUE_PATH is set.

    Every worker of one app runs as the same user from the same directory with the
    same application id, so hashing those two gives them the same file, while two
    apps on one host get two files. The state directory survives reboots, unlike
    a tmpfs /tmp; when it cannot be created we fall back to the temp directory.
    """
    directory, fallback = queue_directories()
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if not os.access(directory, os.W_OK):
            raise PermissionError(directory)
    except OSError:
        directory = fallback
    return os.path.join(directory, default_queue_name(application_id, cwd))


def resolve_queue_path(explicit: Optional[str], application_id: str) -> str:
    path = explicit or os.environ.get("MOESIF_QUEUE_PATH") or default_queue_path(application_id)
    return os.path.abspath(os.path.expanduser(path))


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
        raw=dict(settings),
        **callbacks,
    )
