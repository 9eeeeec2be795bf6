"""Which call a received event belongs to, for ours and the original alike.

Ours puts the call's id in the event's `transaction_id` and in the response
headers. The original (1.1.8) keeps an incoming `X-Moesif-Transaction-Id` in the
event's `request.headers` (or adds a new one there), but gives the event's own
`transaction_id` a different random id, and does not return the header to the
client. So the request header is read first, then the response header, then
`transaction_id`. The fault-injection load generator sends its own id on every
call, so both packages' events are matched to the calls exactly.
"""
from __future__ import annotations

import json
from typing import Any, Dict, Iterable, Optional, Tuple

HEADER = "x-moesif-transaction-id"


def event_transaction_id(event: Dict[str, Any]) -> Optional[str]:
    for side in ("request", "response"):
        headers = (event.get(side) or {}).get("headers") or {}
        for name, value in headers.items():
            if name.lower() == HEADER and value:
                return str(value)
    tid = event.get("transaction_id")
    return str(tid) if tid else None


def count_ids(events: Iterable[Dict[str, Any]]) -> Tuple[set, int]:
    """(distinct ids, number of events repeating an id already seen)."""
    seen: set = set()
    duplicates = 0
    for event in events:
        tid = event_transaction_id(event)
        if tid is None:
            continue
        if tid in seen:
            duplicates += 1
        seen.add(tid)
    return seen, duplicates


def read_record_file(path: str) -> Iterable[Dict[str, Any]]:
    """Events appended by `local_collector --record FILE.jsonl` (a torn last line is skipped)."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue
    except FileNotFoundError:
        return


class RawRecordReader:
    """Events of a `local_collector --record-raw` file, decoded as they arrive.

    The collector stores posts undecoded so that it costs the benchmarked
    machine next to nothing during the load; `poll()` decodes what was added
    since the last call (after the load, while delivery is awaited).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.events: list = []
        self._offset = 0

    def poll(self) -> int:
        from moesifasgi.testing.local_collector import read_raw_frames

        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        events, used = read_raw_frames(data)
        self.events.extend(events)
        self._offset += used
        return len(self.events)
