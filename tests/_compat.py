"""The one place the tests bridge old versions of the libraries they drive the app with.

The tests are written for today's releases; `nox -s tests` also runs them on
the oldest the package supports (see noxfile.py).
"""
from __future__ import annotations

from typing import Any, Callable


def _requests_based(client_class: type) -> bool:
    return any(c.__module__.split(".")[0] == "requests" for c in client_class.__mro__)


def accept_content_on_old_testclients() -> None:
    """Starlette before 0.21 (FastAPI 0.78 ships 0.19) builds its TestClient on
    requests, which names a raw request body `data=` and redirects
    `allow_redirects=`; httpx, under the newer TestClient, names them `content=`
    and `follow_redirects=`. On the old client the httpx names are passed on
    under the requests ones, which mean the same."""
    from starlette.testclient import TestClient

    if not _requests_based(TestClient) or getattr(TestClient.request, "_takes_content", False):
        return
    original: Callable[..., Any] = TestClient.request

    def request(self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        for httpx_name, requests_name in (("content", "data"), ("follow_redirects", "allow_redirects")):
            if httpx_name in kwargs:
                kwargs[requests_name] = kwargs.pop(httpx_name)
        return original(self, method, url, *args, **kwargs)

    request._takes_content = True  # type: ignore[attr-defined]
    TestClient.request = request  # type: ignore[method-assign]


def close_client_with_a_stream_let_go(client: Any) -> None:
    """httpcore before 0.17 (under httpx before 0.24.1) refuses to close a pool
    while it still counts a stream as in flight, and a streamed response that
    the caller dropped without closing stays counted: plain httpx raises there,
    with or without the middleware's capture."""
    try:
        client.close()
    except RuntimeError as exc:
        if "in-flight" not in str(exc):
            raise



def cli_runner() -> Any:
    """A CliRunner that behaves as click 8.2's on every click.

    click 8.2 keeps stderr apart (`result.stderr`) while `result.output` is
    everything the terminal shows. Before 8.2 (and 8.1 is the last for Python
    3.9) stderr is either mixed into stdout with no `result.stderr`, or kept
    apart with `result.output` holding stdout alone; here it is kept apart and
    `output` is stdout then stderr."""
    import inspect

    from click.testing import CliRunner, Result

    if "mix_stderr" not in inspect.signature(CliRunner.__init__).parameters:
        return CliRunner()

    class BothStreams(Result):
        @property
        def output(self) -> str:
            return self.stdout + self.stderr

    class Runner(CliRunner):
        def invoke(self, *args: Any, **kwargs: Any) -> Any:
            result = super().invoke(*args, **kwargs)
            result.__class__ = BothStreams
            return result

    return Runner(mix_stderr=False)
