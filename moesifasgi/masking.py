"""MASK_EVENT_MODEL: the user's last word on an event before it is written to disk.

As in the original package, the callback receives a `moesifapi.models.EventModel`
(so `event.response.body['password'] = None` works) and returns it. Anything else
it returns, an exception or a timeout raises here, and the pipeline records a
minimal event instead: the unmasked one is never written.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

from moesifapi.models import EventModel, EventRequestModel, EventResponseModel
from moesifapi.models.base_model import BaseModel

from .callbacks import invoke


class MaskingError(Exception):
    pass


_EVENT_FIELDS = ("session_token", "tags", "user_id", "company_id", "metadata", "direction", "weight", "blocked_by")
_REQUEST_FIELDS = ("time", "uri", "verb", "headers", "api_version", "ip_address", "body", "transfer_encoding")
_RESPONSE_FIELDS = ("time", "status", "headers", "body", "transfer_encoding")


def to_model(event: Dict[str, Any]) -> EventModel:
    # Built through the constructors, not from_dictionary(): that one parses the
    # times into datetimes and would change their format on the way back.
    request = EventRequestModel(**{k: event["request"].get(k) for k in _REQUEST_FIELDS})
    response = EventResponseModel(**{k: event["response"].get(k) for k in _RESPONSE_FIELDS})
    return EventModel(
        request=request,
        response=response,
        transaction_id=event.get("transaction_id"),
        **{k: event.get(k) for k in _EVENT_FIELDS},
    )


def _without_nulls(value: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in value.items() if v is not None}


def from_model(model: BaseModel) -> Dict[str, Any]:
    event = _without_nulls(model.to_dictionary())
    for part in ("request", "response"):
        if isinstance(event.get(part), dict):
            event[part] = _without_nulls(event[part])
    return event


async def apply_mask(mask: Callable[..., Any], event: Dict[str, Any], deadline: Optional[float] = None) -> Dict[str, Any]:
    transaction_id = event.get("transaction_id")
    result = await invoke(mask, to_model(event), deadline=deadline)
    if not isinstance(result, BaseModel) or not hasattr(result, "request"):
        raise MaskingError(
            f"MASK_EVENT_MODEL must return the event it was given, got {type(result).__name__}"
        )
    masked = from_model(result)
    if not isinstance(masked.get("request"), dict) or not isinstance(masked.get("response"), dict):
        raise MaskingError("MASK_EVENT_MODEL removed the event's request or response")
    # The id is what makes a re-post after a crash safe; masking may not lose it.
    masked["transaction_id"] = masked.get("transaction_id") or transaction_id
    return masked
