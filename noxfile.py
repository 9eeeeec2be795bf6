"""The version matrix: the Pythons and web stacks the package supports.

    pip install -e '.[test]'            # brings nox (and uv, which nox uses to install)
    nox -s tests                        # the full matrix: the whole suite on every combination
                                        # (10-16 min each on a busy 2-core machine)
    nox                                 # = nox -s smoke: the fast subset, what CI runs (~3-4 min)
    nox -s "tests(3.9-fastapi-0.78)"    # one combination; `nox -l` lists them all
    nox -s smoke -- -x -k streaming     # arguments after -- go to pytest

Combinations: Python 3.9, 3.11 and 3.13 times FastAPI 0.78 (Starlette 0.19,
pydantic 1.10), FastAPI 0.108 (Starlette 0.32, pydantic 2) and the latest
FastAPI and Starlette that install on that Python; plus `lowest`: Python 3.9
with every runtime dependency at the floor pyproject.toml declares, so that a
floor that stops working fails here instead of on a user's machine.

Interpreters come from PATH or pyenv (~/.pyenv/versions/3.X.*). One that is
not there is skipped with "Python interpreter 3.X not found", never downloaded,
and never counted as a failure, on CI too.
"""
from __future__ import annotations

import glob
import os
import re
from typing import Dict, List

import nox

PYTHONS = ["3.9", "3.11", "3.13"]

STACKS: Dict[str, List[str]] = {
    # What FastAPI 0.78's users run: Starlette 0.19 (a TestClient built on
    # requests) and pydantic 1. Starlette 0.19 allows anyio 4, but its
    # TestClient calls anyio.start_blocking_portal, which anyio 4 removed.
    "fastapi-0.78": ["fastapi==0.78.0", "starlette==0.19.1", "pydantic>=1.10,<2", "anyio<4"],
    # Starlette 0.32's TestClient passes httpx.Client the `app=` that httpx 0.28 removed.
    "fastapi-0.108": ["fastapi==0.108.0", "httpx<0.28"],
    # Whatever the resolver picks today: on 3.11+ FastAPI 0.16x with Starlette 1.x,
    # on 3.9 the last releases that still support it.
    "latest": ["fastapi", "starlette"],
}

# The fast subset: one file per dependency whose version varies here, small
# enough to run on every combination within CI's budget. The middleware on
# FastAPI and plain Starlette (JSON, streaming, callbacks, lifespan), masking
# through moesifapi's EventModel, orjson, the httpx client against a loopback
# collector, outgoing capture beside the TestClient, and the click CLI.
SMOKE = [
    "tests/test_middleware_events.py",
    "tests/test_middleware_asgi.py",
    "tests/test_middleware_masking.py",
    "tests/test_governance_middleware.py",
    "tests/test_jsoncodec.py",
    "tests/test_client.py",
    "tests/test_outgoing_in_app.py",
    "tests/test_cli.py",
    "tests/test_supported_versions.py",
]

nox.options.sessions = ["smoke"]
nox.options.reuse_existing_virtualenvs = True
# A missing interpreter is a skip with a message, not an error, even where
# CI=true (nox's default there is to fail); and Python is never downloaded:
# this project's machines reach package registries only.
nox.options.error_on_missing_interpreters = False
if hasattr(nox.options, "download_python"):  # nox >= 2025.2
    nox.options.download_python = "never"
# uv installs a session in seconds where pip takes a minute; virtualenv if uv is missing.
nox.options.default_venv_backend = "uv|virtualenv"


def _pyenv_on_path() -> None:
    """Put each pyenv interpreter's bin directory on PATH, so `python3.X` finds
    it without `pyenv local`: the project's machines have 3.9 to 3.13 there."""
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    found = []
    for wanted in PYTHONS:
        candidates = sorted(glob.glob(os.path.join(root, "versions", wanted + ".*", "bin")))
        if candidates:
            found.append(candidates[-1])
    if found:
        os.environ["PATH"] = os.pathsep.join(found + [os.environ.get("PATH", "")])


_pyenv_on_path()


def _floors() -> List[str]:
    """`name==floor` for every runtime dependency declared as `name>=floor`."""
    text = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyproject.toml")).read()
    block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M)
    assert block, "pyproject.toml: no dependencies list"
    pins = re.findall(r'"([A-Za-z0-9_.\-]+)>=([^",;<]+)"', block.group(1))
    return [f"{name}=={floor}" for name, floor in pins]


def _install(session: nox.Session, stack: str) -> None:
    if stack == "lowest":
        # FastAPI 0.78 is the oldest the tests' apps are written for; its
        # Starlette is pinned by the floor like everything else.
        session.install("-e", ".[test]", "fastapi==0.78.0", "anyio<4", *_floors())
    else:
        session.install("-e", ".[test]", *STACKS[stack])
    session.run("python", "-c", "import sys, fastapi, starlette, httpx, click, moesifapi; "
                "print('Python', sys.version.split()[0], '| FastAPI', fastapi.__version__, '| Starlette', "
                "starlette.__version__, '| httpx', httpx.__version__, '| click', click.__version__)",
                silent=False)


# pyproject.toml turns every deprecation warning into an error, which the suite's
# own run (Python 3.11, the latest releases) enforces. Old releases warn about
# each other (python-multipart's renamed module under Starlette 0.19, and so on):
# here only the warnings raised from our own code and tests stay errors.
_WARNINGS = [
    "-W", "ignore::DeprecationWarning", "-W", "ignore::PendingDeprecationWarning",
    "-W", "error:::moesifasgi.*", "-W", "error:::tests.*",
]


def _pytest(session: nox.Session, *args: str) -> None:
    session.run("python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *_WARNINGS, *args, *session.posargs)


_COMBINATIONS = [(py, stack) for py in PYTHONS for stack in STACKS] + [("3.9", "lowest")]
_IDS = [f"{py}-{stack}" for py, stack in _COMBINATIONS]


@nox.session
@nox.parametrize("python,stack", _COMBINATIONS, ids=_IDS)
def tests(session: nox.Session, stack: str) -> None:
    """The whole suite on one combination."""
    _install(session, stack)
    _pytest(session)


# CI's own run of the whole suite (.ci/run) is Python 3.11 with the latest
# releases: the subset would repeat part of it.
_SMOKE = [(c, i) for c, i in zip(_COMBINATIONS, _IDS) if c != ("3.11", "latest")]


@nox.session
@nox.parametrize("python,stack", [c for c, _ in _SMOKE], ids=[i for _, i in _SMOKE])
def smoke(session: nox.Session, stack: str) -> None:
    """The fast subset on one combination (CI runs it on every one but 3.11-latest)."""
    _install(session, stack)
    _pytest(session, *SMOKE)
