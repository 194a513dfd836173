"""The test suite leaves a running deployment alone: its port, its data, its journal.

The example runs from a copy of this checkout as ``bin/run-example`` runs it
(``settings.py`` of the checkout: ``./data``, ``./run``), on a port of its own
(tests never take the deployment port). The parts of the suite that start
daemons, bootstraps and persisters then run from that same copy, as
``bin/test`` would. The example's data files must come out byte for byte and
inode for inode as they went in, its journal still open and linked, and every
write it acknowledged must survive a ``kill -9``.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lexicons.client import Client
from tests.support.daemon import ROOT, wait_for

#: The parts of the suite that open settings, data directories, ports and locks.
PARTS = ["tests/lexicons/daemon/test_bootstrap.py", "tests/lexicons/daemon/test_settings.py",
         "tests/lexicons/test_server.py", "tests/services/test_persister.py",
         "tests/lexicons/data/test_storage.py"]
TIMEOUT = 10.0
#: The sub-suite of PARTS takes over a minute on an idle machine and several on a busy one,
#: longer than the 120 s every other test gets: this test's own bound.
SUITE_TIMEOUT = 900


def copy_checkout(dest: Path) -> None:
    """Copy the checkout's files (tracked and new, not ignored) to *dest*."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others",
                             "--exclude-standard"], cwd=ROOT, capture_output=True, check=True)
    for name in listed.stdout.decode().split("\0"):
        source = ROOT / name
        if name and source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)


def environment(checkout: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
    env["PYTHONPATH"] = str(checkout)
    env.update(extra)
    return env


def lexiconsd(checkout: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lexicons", *args], cwd=checkout,
                          env=environment(checkout, LEXICONS_PORT="0", **extra),
                          capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def fingerprint(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Return each file's inode, size and digest."""
    found = {}
    for path in sorted(directory.iterdir()):
        stat = path.stat()
        found[path.name] = (stat.st_ino, stat.st_size, hashlib.sha256(path.read_bytes())
                            .hexdigest())
    return found


def deleted_files_open(pid: int) -> list[str]:
    """Return the files *pid* has open that were deleted under it."""
    fd_dir = Path(f"/proc/{pid}/fd")
    targets = []
    for fd in fd_dir.iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:
            continue
    return [t for t in targets if t.endswith(" (deleted)")]


def started(checkout: Path) -> tuple[int, str]:
    """Start the example daemon in *checkout*; return its pid and websocket URL."""
    done = lexiconsd(checkout, "start", "--settings", "settings.py")
    assert done.returncode == 0, done.stdout + done.stderr
    status = lexiconsd(checkout, "status", "--json", "--settings", "settings.py")
    assert status.returncode == 0, status.stdout + status.stderr
    info = json.loads(status.stdout)
    listener = {s["name"]: s for s in info["services"]}["listener"]
    port = int(listener["info"]["address"].rsplit(":", 1)[1])
    return info["pid"], f"ws://127.0.0.1:{port}/"


@pytest.mark.timeout(SUITE_TIMEOUT + 300)  # the sub-suite, plus three daemon starts and stops
def test_suite_leaves_a_running_example_alone(tmp_path):
    """Tests run beside a live example: its data and journal are untouched, writes survive."""
    checkout = tmp_path / "checkout"
    copy_checkout(checkout)
    pid, url = started(checkout)
    try:
        with Client(url, {"Register": {"name": "keeper", "password": "password1"}},
                    query=True, timeout=TIMEOUT) as client:
            client.call("Join", room="lobby")
            for n in range(5):
                client.call("Send", room="lobby", text=f"before {n}")
        data = checkout / "data"
        before = fingerprint(data)
        assert any(name.startswith("journal.") and size for name, (_, size, _) in
                   before.items()), before

        suite = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                *PARTS], cwd=checkout, env=environment(checkout),
                               capture_output=True, text=True, timeout=SUITE_TIMEOUT,
                               stdin=subprocess.DEVNULL)
        assert suite.returncode == 0, suite.stdout[-4000:] + suite.stderr[-2000:]

        assert fingerprint(data) == before
        assert deleted_files_open(pid) == []
        with Client(url, {"Login": {"name": "keeper", "password": "password1"}},
                    query=True, timeout=TIMEOUT) as client:
            client.call("Join", room="lobby")
            client.call("Send", room="lobby", text="after")
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or
                 "zombie" in Path(f"/proc/{pid}/status").read_text(), what="daemon gone")
        pid, url = started(checkout)
        with Client(url, {"Login": {"name": "keeper", "password": "password1"}},
                    query=True, timeout=TIMEOUT) as client:
            texts = [m["text"] for m in client.call("Join", room="lobby")["messages"]]
        assert texts[-6:] == [f"before {n}" for n in range(5)] + ["after"]
        assert lexiconsd(checkout, "stop", "--settings", "settings.py").returncode == 0
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
