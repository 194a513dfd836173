"""Run lexicons daemons that share one replicated database, as a user would, for tests."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from lexicons.client import Client
from tests.support.daemon import lexiconsd, wait_for, write_settings_file

SERVICES = [
    "services.control/ControlService",
    "services.persister/PersisterService",
    "services.rooms/RoomsService",
    "services.router/RouterService",
    "services.gate/GateService",
    "services.listener/ListenerService",
]


class Node:
    """``lexiconsd start`` in a directory of its own, on a replicated database."""

    def __init__(self, workdir: Path, url: str, stream: str, **settings: Any):
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.settings = dict(APP="tests.support.replicaapp", PORT=0, SERVICE_LIST=SERVICES,
                             DATABASE=url,
                             DATABASE_STREAM=stream, LOCK_FILE="run/lexiconsd.pid",
                             CONTROL_SOCKET="run/lexiconsd.sock", LOG_PATH="lexiconsd.log",
                             DATA_DIR="data", BACKPLANE_RETRY_MAX=0.2, WORKERS=8)
        self.settings.update(settings)

    def start(self) -> Node:
        """Start the daemon and learn its port."""
        write_settings_file(self.workdir, **self.settings)
        done = lexiconsd("start", cwd=self.workdir)
        assert done.returncode == 0, done.stdout + done.stderr + self.log()
        listener = self.status()["listener"]
        self.port = int(listener["info"]["address"].rsplit(":", 1)[1])
        return self

    def status(self) -> dict[str, Any]:
        """Return the services of ``lexiconsd status --json`` by name."""
        done = lexiconsd("status", "--json", cwd=self.workdir)
        assert done.returncode == 0, done.stdout + done.stderr
        return {s["name"]: s for s in json.loads(done.stdout)["services"]}

    def replication(self) -> dict[str, Any]:
        """Return the persister's replication info."""
        return self.status()["persister"]["info"]["replication"]

    def client(self, **kwargs: Any) -> Client:
        return Client(f"ws://127.0.0.1:{self.port}/", **kwargs)

    def dump(self) -> list[dict[str, Any]]:
        """Return every item this node holds once it caught up (through a signal)."""
        with self.client() as client:
            return client.call("Dump", timeout=30)

    def pid(self) -> int:
        return int((self.workdir / "run" / "lexiconsd.pid").read_text().strip())

    def kill(self) -> None:
        """SIGKILL the daemon and wait until it is gone."""
        pid = self.pid()
        os.kill(pid, signal.SIGKILL)

        def gone() -> bool:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{pid}/stat") as handle:   # a zombie is gone too
                return handle.read().split(")")[-1].split()[0] == "Z"
        wait_for(gone, timeout=20, what=f"process {pid} to die")

    def stop(self) -> None:
        """Stop the daemon cleanly (if it runs)."""
        pid_file = self.workdir / "run" / "lexiconsd.pid"
        if not pid_file.exists():
            return
        done = lexiconsd("stop", cwd=self.workdir)
        if done.returncode not in (0, 3):   # 3: not running (killed)
            raise AssertionError(done.stdout + done.stderr + self.log())

    def log(self) -> str:
        path = self.workdir / "lexiconsd.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class Cluster:
    """Nodes started by a test; :meth:`stop_all` stops (or kills) every one."""

    def __init__(self, tmp_path: Path, url: str, stream: str):
        self.tmp_path, self.url, self.stream = tmp_path, url, stream
        self.nodes: list[Node] = []

    def node(self, **settings: Any) -> Node:
        """Start one more node."""
        node = Node(self.tmp_path / f"node{len(self.nodes)}", self.url, self.stream, **settings)
        self.nodes.append(node)
        return node.start()

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.stop()
            except Exception:
                try:
                    node.kill()
                except Exception:   # already gone
                    pass


def wait_equal(nodes: list[Node], timeout: float = 60.0) -> list[dict[str, Any]]:
    """Wait until every node holds the same items; return them."""
    deadline = time.monotonic() + timeout
    while True:
        dumps = [node.dump() for node in nodes]
        if all(d == dumps[0] for d in dumps):
            return dumps[0]
        if time.monotonic() > deadline:
            sizes = [len(d) for d in dumps]
            raise AssertionError(f"the nodes hold different items (counts {sizes})")
        time.sleep(0.2)
