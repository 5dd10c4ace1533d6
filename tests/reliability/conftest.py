"""Shared tools for the reliability cases: run the command line as a user would and check what
it left behind.

Each case asserts the exact behaviour a careless or hostile user gets: the exit code, a message
that names what and where, no traceback, nothing written outside ``--out``, no partial file and
no debris (hidden temporary files or folders).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from popkin.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


def tree(root: Path) -> set[str]:
    """Every file and folder below ``root``, as relative paths (hidden ones included)."""
    return {str(p.relative_to(root)) for p in Path(root).rglob("*")}


def debris(root: Path) -> list[str]:
    """Hidden temporary files and folders that an interrupted or failed write left below ``root``."""
    return sorted(p for p in tree(root)
                  if any(part.startswith(".") for part in Path(p).parts))


@pytest.fixture
def cli(capsys):
    """Run ``popkin ARGS`` in this process; an uncaught exception fails the case (a traceback)."""

    def run(*args: str) -> Outcome:
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:           # argparse's own errors exit 2 with a usage line
            code = exc.code
        captured = capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    return run


def run_cli_process(args, *, cwd, env=None, timeout=600, signal_after=None,
                    wait_for=None) -> Outcome:
    """Run ``popkin ARGS`` in a new process. With ``signal_after`` (seconds) or ``wait_for`` (a
    path whose appearance triggers it), send SIGTERM and collect what the process printed."""
    full_env = dict(os.environ, **(env or {}))
    proc = subprocess.Popen([sys.executable, "-m", "popkin.cli", *map(str, args)], cwd=cwd,
                            env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if signal_after is not None or wait_for is not None:
        deadline = time.monotonic() + (signal_after if signal_after is not None else timeout)
        while time.monotonic() < deadline and proc.poll() is None:
            if wait_for is not None and wait_for():
                break
            time.sleep(0.05)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=timeout)
    return Outcome(proc.returncode, out, err)


def assert_clean_error(outcome: Outcome, *needles: str) -> None:
    """Exit code 2, one message naming each of ``needles``, and no traceback."""
    assert outcome.code == 2, (outcome.code, outcome.err)
    assert "Traceback" not in outcome.err, outcome.err
    for needle in needles:
        assert needle in outcome.err, (needle, outcome.err)
