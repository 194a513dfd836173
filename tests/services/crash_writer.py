"""A daemon-like writer for the crash tests: acknowledges each write after commit().

Run as ``python -m tests.services.crash_writer DATA_DIR POLICY``. It starts a
ServiceManager with the persister, then four threads write steadily; after
``db.commit()`` returns each prints ``C <pk>`` (created) or ``U <pk> <n>``
(updated to n) on standard output. The test kills it with SIGKILL.
"""
from __future__ import annotations

import sys
import threading

from lexicons import Model
from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.settings import load
from services.persister import PersisterService


class Counter(Model):
    name: str
    n: int
    tags: list[str]
    extra: dict


def main(data_dir: str, policy: str) -> None:
    settings = load(env={}, overrides={"DATA_DIR": data_dir, "DB_FSYNC": policy,
                                       "SNAPSHOT_INTERVAL": 0.25, "SERVICE_LIST": []})
    manager = ServiceManager(settings, Application(models=[Counter]))
    manager.add(PersisterService(manager, settings))
    manager.start()
    db = manager.get_service("persister").db
    out = threading.Lock()

    def say(line: str) -> None:
        with out:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def work(worker: int) -> None:
        mine: list[str] = []
        i = 0
        while True:
            i += 1
            row = db.create(Counter, name=f"w{worker}", n=i, tags=[str(i)] * (i % 3),
                            extra={"i": i, "text": "é,\n\"" * (i % 2)})
            db.commit()
            say(f"C {row.pk}")
            mine.append(row.pk)
            if i % 3 == 0:
                target = mine[i // 2 - 1]
                db.update(Counter, target, n=i * 1000)
                db.commit()
                say(f"U {target} {i * 1000}")

    say("READY")
    for worker in range(4):
        threading.Thread(target=work, args=(worker,), daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
