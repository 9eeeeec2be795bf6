"""What the declarative masks cost per event, next to what encoding the event costs anyway.

    python benchmarks/mask_cost.py                  # about 20 s
    python benchmarks/mask_cost.py --number 2000 --repeat 7

For each kind of event and each mask configuration it prints the time of
the masking step (CPU time, best of --repeat timings) as the pipeline runs it (pick the direction's masker, apply it),
and, for scale, the time to encode the same event to JSON (done for every event
whatever the settings). "none" is the default incoming configuration: no masks,
so the step is one dict lookup and one test. Masking is idempotent on these
events, so each timing re-masks the same event in place (no copy is timed).
"""
from __future__ import annotations

import argparse
import base64
import json
import sys
import time
import timeit
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from moesifasgi import jsoncodec  # noqa: E402
from moesifasgi.field_masks import Masker, maskers_for  # noqa: E402
from moesifasgi.settings import parse_settings  # noqa: E402


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _event(request_body: Any, encoding: str, *, direction: str = "Incoming", uri: str = "http://api.test/items?page=2",
           response_body: Any = None) -> Dict[str, Any]:
    headers = {"host": "api.test", "user-agent": "bench/1.0", "accept": "*/*", "content-type": "application/json",
               "authorization": "Bearer abc.def.ghi", "x-request-id": "5f0c"}
    body = response_body if response_body is not None else request_body
    return {
        "request": {"time": "2026-11-30T00:00:00.000", "uri": uri, "verb": "POST", "headers": dict(headers),
                    "ip_address": "198.51.100.7", "body": request_body, "transfer_encoding": encoding},
        "response": {"time": "2026-11-30T00:00:00.002", "status": 200,
                     "headers": {"content-type": "application/json", "set-cookie": "s=1"},
                     "body": body, "transfer_encoding": encoding},
        "direction": direction, "transaction_id": "b6c1f9d0-0000-4000-8000-000000000000", "weight": 1,
    }


def _json_1kb() -> Dict[str, Any]:
    return {"user": {"id": 42, "name": "Ada", "email": "ada@example.test", "password": "hunter2"},
            "items": [{"sku": f"SKU-{i}", "qty": i, "price": 9.99, "note": "plain text"} for i in range(12)]}


def _plain_json_1kb() -> Dict[str, Any]:
    return {"user": {"id": 42, "name": "Ada", "email": "ada@example.test"},
            "items": [{"sku": f"SKU-{i}", "qty": i, "price": 9.99, "note": "plain text"} for i in range(12)]}


EVENTS: Dict[str, Callable[[], Dict[str, Any]]] = {
    "json 1 KB (parsed)": lambda: _event(_json_1kb(), "json"),
    "invalid json 1 KB (base64)": lambda: _event(_b64(json.dumps(_json_1kb()).encode()[:-1] + b",}"), "base64"),
    "text 1 KB, no masked name (base64)": lambda: _event(_b64(b"plain text line\n" * 64), "base64"),
    "cut json 256 KB (base64)": lambda: _event(_b64(b'{"rows": [' + b'{"a": 1, "b": "text"},' * 12000), "base64"),
    "outgoing json 1 KB, no credential": lambda: _event(_plain_json_1kb(), "json", direction="Outgoing",
                                                        uri="https://api.vendor.test/v1/x?page=2"),
    "outgoing json 1 KB + api_key": lambda: _event(_json_1kb(), "json", direction="Outgoing",
                                                   uri="https://api.vendor.test/v1/x?api_key=k&page=2"),
}

CONFIGS: Dict[str, Dict[str, Any]] = {
    "none": {},
    "body masks": {"REQUEST_BODY_MASKS": ["password"], "RESPONSE_BODY_MASKS": ["password"]},
    "body + header masks": {"REQUEST_BODY_MASKS": ["password", "ssn", "card_number"],
                            "RESPONSE_BODY_MASKS": ["password", "token"],
                            "REQUEST_HEADER_MASKS": ["authorization"], "RESPONSE_HEADER_MASKS": ["set-cookie"]},
}


def _best_us(stmt: Callable[[], Any], number: int, repeat: int) -> float:
    # CPU time of this process, and the fastest repeat: on a shared machine wall time
    # and the slower repeats measure the neighbours, not this code.
    timer = timeit.Timer(stmt, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=repeat)) / number * 1e6


def masking_step(incoming: Optional[Masker], outgoing: Optional[Masker]) -> Callable[[Dict[str, Any]], Any]:
    def step(event: Dict[str, Any]) -> None:  # what EventPipeline.persist() does before MASK_EVENT_MODEL
        masker = outgoing if event.get("direction") == "Outgoing" else incoming
        if masker is not None:
            masker.apply(event)

    return step


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=500, help="calls per timing")
    parser.add_argument("--repeat", type=int, default=5, help="timings per figure (the fastest is shown)")
    args = parser.parse_args(argv)

    rows: List[Tuple[str, str, float, float]] = []
    for event_name, make in EVENTS.items():
        event = make()
        scale = 1 if "256 KB" not in event_name else 20
        encode_us = _best_us(lambda: jsoncodec.dumps(event), max(1, args.number // scale), args.repeat)
        for config_name, config in CONFIGS.items():
            settings = parse_settings({"APPLICATION_ID": "bench", "QUEUE_PATH": "/tmp/unused.sqlite", **config})
            step = masking_step(*maskers_for(settings))
            event = make()
            step(event)  # the first pass changes the event; the timed ones redo the same work
            mask_us = _best_us(lambda: step(event), max(1, args.number // scale), args.repeat)
            rows.append((event_name, config_name, mask_us, encode_us))

    print(f"{'event':<38} {'masks':<20} {'mask µs':>10} {'encode µs':>10} {'mask / encode':>14}")
    for event_name, config_name, mask_us, encode_us in rows:
        print(f"{event_name:<38} {config_name:<20} {mask_us:>10.2f} {encode_us:>10.2f} {mask_us / encode_us:>13.0%}")
    print("\n(outgoing events are masked with the credential defaults even under 'none': "
          "REDACT_OUTGOING_CREDENTIALS is on by default)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
