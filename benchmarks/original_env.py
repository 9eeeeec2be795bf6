"""A separate virtualenv holding the original `moesifasgi` from PyPI.

The original package has the same import name as ours, so it cannot live in the
same environment: this creates `bench-results/original-venv` once (gitignored)
and returns its python.

    python benchmarks/original_env.py        # create it if missing, print its python
"""
from __future__ import annotations

import os
import subprocess
import sys
import venv

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ORIGINAL_VERSION = "1.1.8"
VENV_DIR = os.path.join(ROOT, "bench-results", "original-venv")
PACKAGES = [f"moesifasgi=={ORIGINAL_VERSION}", "fastapi", "uvicorn[standard]", "gunicorn", "uvicorn-worker"]


def _python(venv_dir: str) -> str:
    return os.path.join(venv_dir, "bin", "python")


def _has_original(python: str) -> bool:
    # Run from / so that a checkout of ours in the working directory is not imported instead.
    probe = ("import importlib.metadata as m, fastapi, uvicorn, uvloop, httptools, gunicorn, uvicorn_worker; "
             "print(m.version('moesifasgi'))")
    result = subprocess.run([python, "-c", probe], capture_output=True, text=True, cwd="/")
    return result.returncode == 0 and result.stdout.strip() == ORIGINAL_VERSION


def original_python(venv_dir: str = VENV_DIR, quiet: bool = True) -> str:
    """The python of a venv with moesifasgi 1.1.8, fastapi, uvicorn[standard], gunicorn and uvicorn-worker;
    created when missing."""
    python = _python(venv_dir)
    if os.path.exists(python) and _has_original(python):
        return python
    print(f"creating {venv_dir} with {' '.join(PACKAGES)} ...", file=sys.stderr, flush=True)
    venv.EnvBuilder(with_pip=True, clear=True).create(venv_dir)
    cmd = [python, "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else []) + PACKAGES
    subprocess.run(cmd, check=True, cwd="/")
    if not _has_original(python):
        raise RuntimeError(f"{venv_dir}: moesifasgi {ORIGINAL_VERSION} did not install")
    return python


if __name__ == "__main__":
    print(original_python(quiet=False))
