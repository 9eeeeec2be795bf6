"""The branches for old library versions (moesifasgi/_compat.py and its kind),
tested on whatever versions are installed; `nox` runs them on the old ones too."""
from __future__ import annotations

import requests

from moesifasgi._compat import is_starlette_testclient_session
from moesifasgi.capture import request_uri


def test_a_raw_path_that_wrongly_carries_the_query_does_not_repeat_it_in_the_uri() -> None:
    # Starlette 0.32's TestClient sends raw_path with the query; servers send it without.
    for raw_path in (b"/items/7?verbose=1", b"/items/7"):
        scope = {"type": "http", "scheme": "http", "path": "/items/7", "raw_path": raw_path,
                 "query_string": b"verbose=1"}
        assert request_uri(scope, {"host": "testserver"}) == "http://testserver/items/7?verbose=1"


def test_a_percent_encoded_question_mark_in_the_path_is_kept() -> None:
    scope = {"type": "http", "scheme": "http", "path": "/a?b", "raw_path": b"/a%3Fb", "query_string": b""}
    assert request_uri(scope, {"host": "h"}) == "http://h/a%3Fb"


def test_only_a_session_whose_adapter_is_starlettes_testclient_counts_as_in_process() -> None:
    # Starlette before 0.21 mounts its own HTTPAdapter subclass on a requests.Session.
    old_testclient_adapter = type("_ASGIAdapter", (requests.adapters.HTTPAdapter,), {"__module__": "starlette.testclient"})
    in_process = requests.Session()
    in_process.mount("http://", old_testclient_adapter())
    plain = requests.Session()
    assert is_starlette_testclient_session(in_process, "http://testserver/items")
    assert not is_starlette_testclient_session(plain, "http://testserver/items")
    assert not is_starlette_testclient_session(in_process, "ftp://nowhere/")  # no adapter: not ours to decide
