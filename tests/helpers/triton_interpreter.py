"""Shared helper: run a kernel test file's CPU cases through Triton's interpreter in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_under_interpreter(script: str, timeout: float = 280) -> None:
    """Run ``script`` as ``__main__`` with ``TRITON_INTERPRET=1`` (set before Triton is imported); fail on error."""
    pytest.importorskip("triton")
    tests_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # so the script can import helpers
    path = os.pathsep.join(p for p in (tests_dir, os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=path)
    proc = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
