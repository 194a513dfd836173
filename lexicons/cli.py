"""``lexiconsd``: start, stop and inspect the daemon.

Exit codes follow the LSB init-script conventions:

=====  =======================================================
0      success; for ``status``: running
1      generic failure (start-up failed, already running, ...)
2      bad command line
3      ``status``/``stop``: not running
4      ``status``: unknown (a daemon holds the lock but does not answer)
6      bad settings
=====  =======================================================
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from lexicons.daemon import settings as settings_mod
from lexicons.errors import ControlError, LexiconsError, LockError, SettingsError

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_UNKNOWN, EXIT_CONFIG = 0, 1, 2, 3, 4, 6


def _settings_path(arg: str | None) -> str | None:
    if arg:
        return arg
    env = os.environ.get("LEXICONS_SETTINGS")
    if env:
        return env
    return "settings.py" if os.path.isfile("settings.py") else None


def _load(args: argparse.Namespace) -> settings_mod.Settings:
    return settings_mod.load(_settings_path(args.settings))


def _prepare_imports(settings: settings_mod.Settings) -> None:
    """Make the application importable after the daemon leaves the working directory."""
    for directory in (os.path.dirname(settings.source) if settings.source else "", os.getcwd()):
        if directory and directory not in sys.path:
            sys.path.insert(0, directory)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)


# --- start -----------------------------------------------------------------------------


def cmd_start(args: argparse.Namespace) -> int:
    from lexicons.fws.cli import apply

    settings = apply(args, _load(args), serve=getattr(args, "serve", False))
    from lexicons.data.lockfile import holder

    pid = holder(settings.LOCK_FILE)
    if pid:
        print(f"lexiconsd is already running (pid {pid}, lock {settings.LOCK_FILE})",
              file=sys.stderr)
        return EXIT_FAIL
    _prepare_imports(settings)
    if args.foreground:
        return _run_foreground(settings, args.debug)
    if settings.LOG_PATH == "-":
        print("LOG_PATH '-' (standard error) needs --foreground: a daemon has no terminal",
              file=sys.stderr)
        return EXIT_CONFIG
    return _daemonize(settings)


def _run_foreground(settings: settings_mod.Settings, debug: bool = False) -> int:
    from lexicons.daemon.bootstrap import Bootstrap

    try:
        return Bootstrap(settings, tracebacks=debug).run()
    except SettingsError as exc:
        _traceback_if(debug)
        print(f"lexiconsd: bad settings: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LexiconsError as exc:
        _traceback_if(debug)
        print(f"lexiconsd: {exc}", file=sys.stderr)
        return EXIT_FAIL


def _traceback_if(debug: bool) -> None:
    """Print the exception being handled with its traceback, for --debug."""
    if debug:
        import traceback

        traceback.print_exc()


def _daemonize(settings: settings_mod.Settings) -> int:
    """Fork a daemon and wait until it reports ready (or why it could not start)."""
    read_fd, write_fd = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the daemon
        os.close(read_fd)
        try:
            _daemon_main(settings, write_fd)
        except BaseException as exc:
            os.write(write_fd, f"error {type(exc).__name__}: {exc}\n".encode())
        os._exit(1)
    os.close(write_fd)
    report = _read_report(read_fd, settings.START_TIMEOUT)
    os.close(read_fd)
    os.waitpid(child, 0)
    if report.startswith("ok "):
        print(f"lexiconsd started (pid {report[3:].strip()})")
        return EXIT_OK
    if not report:
        print("lexiconsd: the daemon exited or did not report ready within "
              f"{settings.START_TIMEOUT:g} s; see {settings.LOG_PATH}", file=sys.stderr)
        return EXIT_FAIL
    if report.startswith("config "):
        print(f"lexiconsd: bad settings: {report.removeprefix('config ').strip()}",
              file=sys.stderr)
        return EXIT_CONFIG
    print(f"lexiconsd: {report.removeprefix('error ').strip()}", file=sys.stderr)
    return EXIT_FAIL


def _read_report(fd: int, timeout: float) -> str:
    import select

    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace")


def _daemon_main(settings: settings_mod.Settings, report_fd: int) -> None:  # pragma: no cover
    """Become a daemon (before any thread or socket exists), then run the bootstrap."""
    import daemon

    def report(text: str) -> None:
        try:
            os.write(report_fd, (text.replace("\n", " ") + "\n").encode())
            os.close(report_fd)
        except OSError:
            pass

    context = daemon.DaemonContext(working_directory="/", umask=0o022, detach_process=True,
                                   files_preserve=[report_fd], signal_map={})
    with context:
        code = 1
        try:
            from lexicons.daemon.bootstrap import Bootstrap

            code = Bootstrap(settings).run(ready=lambda: report(f"ok {os.getpid()}"))
        except SettingsError as exc:
            report(f"config {exc}")
        except LexiconsError as exc:
            report(f"error {exc}")
        except Exception as exc:
            report(f"error {type(exc).__name__}: {exc}")
        os._exit(code)


# --- stop, status and friends -------------------------------------------------------------


def _why_not_running(settings: settings_mod.Settings) -> tuple[int, str]:
    """Return the exit code and message for a daemon that does not answer."""
    from lexicons.data.lockfile import holder, read_pid

    pid = holder(settings.LOCK_FILE)
    if pid:
        return EXIT_UNKNOWN, (f"lexiconsd (pid {pid}) holds {settings.LOCK_FILE} but does not "
                              f"answer on {settings.CONTROL_SOCKET}")
    stale = read_pid(settings.LOCK_FILE)
    if stale:
        return EXIT_FAIL, (f"lexiconsd is not running (stale lock file {settings.LOCK_FILE} "
                           f"names pid {stale})")
    return EXIT_NOT_RUNNING, (f"lexiconsd is not running (no daemon holds the lock file "
                              f"{settings.LOCK_FILE} nor answers on the control socket "
                              f"{settings.CONTROL_SOCKET}; settings: "
                              f"{settings.source or 'built-in defaults'})")


def _not_running(settings: settings_mod.Settings) -> int:
    code, message = _why_not_running(settings)
    print(message, file=sys.stderr if code == EXIT_UNKNOWN else sys.stdout)
    return code


def cmd_stop(args: argparse.Namespace) -> int:
    settings = _load(args)
    from lexicons.daemon import control
    from lexicons.data.lockfile import holder

    try:
        status = control.request(settings.CONTROL_SOCKET, "status", timeout=5)
        control.request(settings.CONTROL_SOCKET, "stop", timeout=5)
    except ControlError:
        code = _not_running(settings)
        return EXIT_FAIL if code == EXIT_UNKNOWN else code
    pid = status["pid"]
    timeout = args.timeout or settings.STOP_TIMEOUT * (len(status["services"]) + 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not holder(settings.LOCK_FILE) and not _alive(pid):
            print(f"lexiconsd stopped (pid {pid})")
            return EXIT_OK
        time.sleep(0.05)
    print(f"lexiconsd (pid {pid}) did not stop within {timeout:g} s", file=sys.stderr)
    return EXIT_FAIL


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def cmd_status(args: argparse.Namespace) -> int:
    settings = _load(args)
    from lexicons.daemon import control
    try:
        status = control.request(settings.CONTROL_SOCKET, "status", timeout=5)
    except ControlError:
        if not args.json:
            return _not_running(settings)
        code, message = _why_not_running(settings)
        print(json.dumps({"running": False, "message": message}))
        return code
    if args.json:
        print(json.dumps({"running": True, **status}, indent=2, default=str))
    else:
        print(format_status(status))
    return EXIT_OK


def format_status(status: dict[str, Any]) -> str:
    """Render a status reply for a terminal."""
    health = "healthy" if status["healthy"] else (
        "DEGRADED" if status["degraded"] else "unhealthy")
    lines = [f"lexiconsd running (pid {status['pid']}), up {_duration(status['uptime'])}, "
             f"{health}"]
    width = max([len(s["name"]) for s in status["services"]] + [7])
    lines.append(f"{'SERVICE':<{width}}  {'STATE':<8}  {'UPTIME':>8}  RESTARTS  NOTES")
    for svc in status["services"]:
        notes, details = [], []
        if svc["hung"]:
            notes.append("HUNG")
        if svc["last_error"] and svc["state"] != "RUNNING":
            notes.append(svc["last_error"])
        for key, value in svc["info"].items():
            if _is_table(value):  # e.g. the scheduler's tasks: one line each, below
                notes.append(f"{key}={len(value)}")
                details.extend("    " + " ".join(f"{k}={_short(v)}" for k, v in item.items()
                                                  if v is not None) for item in value)
            else:
                notes.append(f"{key}={_short(value)}")
        lines.append(f"{svc['name']:<{width}}  {svc['state']:<8}  "
                     f"{_duration(svc['uptime']):>8}  {svc['restarts']:>8}  {' '.join(notes)}")
        lines.extend(details)
    return "\n".join(lines)


def _is_table(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _short(value: Any) -> str:
    text = json.dumps(value, default=str) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _simple(command: str):
    def run(args: argparse.Namespace) -> int:
        settings = _load(args)
        from lexicons.daemon import control
        extra = {"service": args.service} if getattr(args, "service", None) else {}
        try:
            result = control.request(settings.CONTROL_SOCKET, command, timeout=30, **extra)
        except ControlError as exc:
            if "no daemon" in str(exc):
                return _not_running(settings)
            print(f"lexiconsd: {exc}", file=sys.stderr)
            return EXIT_FAIL
        if getattr(args, "json", False):
            print(json.dumps(result, indent=2, default=str))
        else:
            print(summary(command, result))
        return EXIT_OK

    return run


def summary(command: str, result: Any) -> str:
    """Say in one line what a restart or reload did (``--json`` gives the whole answer)."""
    if isinstance(result, str):
        return result
    if command == "restart" and isinstance(result, dict) and "name" in result:
        return f"restarted {result['name']}: {result['state']}"
    if command == "reload" and isinstance(result, dict):
        applied = ", ".join(result.get("applied") or []) or "nothing changed"
        needed = result.get("restart_needed") or []
        return f"reloaded: applied {applied}" + (
            f"; a restart is needed for {', '.join(needed)}" if needed else "")
    return json.dumps(result, default=str)


def cmd_settings(args: argparse.Namespace) -> int:
    if args.reference:
        print(settings_mod.reference_table())
        return EXIT_OK
    settings = _load(args)
    for name, value in settings.as_dict().items():
        print(f"{name} = {value!r}")
    return EXIT_OK


# --- entry point -----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lexiconsd",
                                     description="lexicons websocket application server")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--settings", metavar="FILE",
                       help="settings module (default: $LEXICONS_SETTINGS, else ./settings.py)")
        p.add_argument("--debug", action="store_true",
                       help="show tracebacks on the terminal (LOG_LEVEL=DEBUG does too)")
        return p

    from lexicons.fws.cli import add_arguments as add_fws_arguments

    p = add("start", "start the daemon")
    p.add_argument("--foreground", action="store_true",
                   help="stay in the foreground (systemd, containers)")
    add_fws_arguments(p)
    p.set_defaults(func=cmd_start)
    p = add("serve", "serve in the foreground with filtered_websocket's options")
    add_fws_arguments(p)
    p.set_defaults(func=cmd_start, foreground=True, serve=True)
    p = add("stop", "stop the running daemon cleanly")
    p.add_argument("--timeout", type=float, default=0, help="seconds to wait for it to exit")
    p.set_defaults(func=cmd_stop)
    p = add("status", "show services, connections, channels and tables")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    p = add("restart", "restart one service of the running daemon")
    p.add_argument("service")
    p.add_argument("--json", action="store_true", help="print the service's state as JSON")
    p.set_defaults(func=_simple("restart"))
    p = add("reload", "re-read the settings file (live settings only)")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.set_defaults(func=_simple("reload"))
    p = add("settings", "print the effective settings")
    p.add_argument("--reference", action="store_true", help="print the settings reference")
    p.set_defaults(func=cmd_settings)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``lexiconsd`` with *argv* and return its exit code."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SettingsError as exc:
        print(f"lexiconsd: bad settings: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except LockError as exc:
        print(f"lexiconsd: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except BrokenPipeError:
        # the reader went away (`lexiconsd status | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:  # one clear line for the operator; the traceback on request
        debug = args.debug or os.environ.get("LEXICONS_LOG_LEVEL", "").upper() == "DEBUG"
        _traceback_if(debug)
        print(f"lexiconsd: {type(exc).__name__}: {exc}"
              + ("" if debug else " (traceback with --debug)"), file=sys.stderr)
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
