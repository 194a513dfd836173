"""Helpers for tests that run services, a bootstrap or the real daemon."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lexicons.daemon import settings as settings_mod

ROOT = Path(__file__).resolve().parents[2]
LEXICONSD = [sys.executable, str(ROOT / "bin" / "lexiconsd")]


def make_settings(tmp_path: Path, **overrides: Any) -> settings_mod.Settings:
    """Return settings whose files all live in *tmp_path*, with fast restarts."""
    values = {
        "SERVICE_LIST": ["services.control/ControlService"],
        "LOCK_FILE": "lexiconsd.pid",
        "CONTROL_SOCKET": "lexiconsd.sock",
        "LOG_PATH": "lexiconsd.log",
        "DATA_DIR": "data",
        "RESTART_BACKOFF": 0.05,
        "RESTART_BACKOFF_MAX": 0.2,
        "STOP_TIMEOUT": 5.0,
        "PORT": 0,
    }
    values.update(overrides)
    return settings_mod.load(None, env={}, overrides=values, base_dir=str(tmp_path))


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
             what: str = "condition") -> Any:
    """Poll *predicate* until it returns something true; fail after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def write_settings_file(directory: Path, **values: Any) -> Path:
    """Write a settings module with *values* into *directory* and return its path."""
    lines = [f"{name} = {value!r}" for name, value in values.items()]
    path = directory / "settings.py"
    path.write_text("\n".join(lines) + "\n")
    return path


def lexiconsd(*args: str, cwd: Path, env: dict[str, str] | None = None,
              timeout: float = 60) -> subprocess.CompletedProcess:
    """Run the real ``lexiconsd`` command as a user would, in *cwd*."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
    full_env["PYTHONPATH"] = str(ROOT)
    full_env.update(env or {})
    return subprocess.run([*LEXICONSD, *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def kill_leftover_daemon(directory: Path) -> None:
    """Kill a daemon a test left running in *directory* (its lock file names it)."""
    import signal

    pid_file = directory / "run" / "lexiconsd.pid"
    if not pid_file.exists():
        return
    text = pid_file.read_text().strip()
    if text.isdigit():
        try:
            os.kill(int(text), signal.SIGKILL)
        except ProcessLookupError:
            pass
