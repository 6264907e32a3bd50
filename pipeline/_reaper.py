"""The reaper of an embedded local Ray: when the driver that started it dies, even by
``kill -9``, no process of its Ray session stays behind.

Ray ties its GCS and raylet to the driver, but workers still busy with a task and the raylet's
agents (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``) outlive it. :func:`watch` starts this
module as a small process in a session of its own, holding the read end of a pipe whose only
write end is the driver's: the kernel closes it when the driver dies, however it dies. While
the driver lives, the reaper notes the driver's Ray descendants every :data:`POLL_S` seconds
(Ray renames its workers and agents ``ray::...``, so their command lines no longer say whose
they are); once it is gone, it ends those still alive (same pid and start time), their own children,
and any process whose command line names the session's directory
(``.../session_<date>_<time>_<pid>``). Nothing else is touched: other Ray clusters on the
machine are neither descendants of this driver nor of its session.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

GRACE_S = 3.0  # between SIGTERM and SIGKILL
DEADLINE_S = 30.0  # keep sweeping this long for processes started while the session ended
POLL_S = 0.5  # how often the driver's descendants are noted

_reapers: list[subprocess.Popen] = []  # keeps the pipe's write end open while the driver lives


def watch(session_dir: str) -> None:
    """Start the reaper of this process's Ray session ``session_dir`` (a no-op without psutil,
    Ray's own dependency)."""
    try:
        import psutil  # noqa: F401
    except ImportError:
        return
    proc = subprocess.Popen([sys.executable, "-m", "pipeline._reaper", str(os.getpid()), session_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    _reapers.append(proc)


def descendants(pid: int, session_dir: str) -> dict[int, float]:
    """pid -> start time of the descendants of ``pid`` that are Ray's: named ``ray::...`` or
    naming ``session_dir`` (a user's own subprocesses are not ours to end)."""
    import psutil

    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    found = {}
    for child in children:
        try:
            cmd = child.cmdline()
            if child.pid != os.getpid() and cmd and (
                    cmd[0].startswith("ray::") or any(session_dir in a for a in cmd)):
                found[child.pid] = child.create_time()
        except psutil.Error:
            continue
    return found


def session_processes(session_dir: str, known: dict[int, float]) -> list:
    """The live processes of the session: those of ``known`` (pid -> start time) still
    running, their descendants, and those whose command line names ``session_dir``."""
    import psutil

    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline", "create_time"]):
        try:
            if proc.pid == os.getpid():
                continue
            if known.get(proc.pid) == proc.info["create_time"] or any(
                    session_dir in a for a in proc.info["cmdline"] or ()):
                found[proc.pid] = proc
        except psutil.Error:
            continue
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                if child.pid != os.getpid():
                    found.setdefault(child.pid, child)
        except psutil.Error:
            continue
    return list(found.values())


def reap(session_dir: str, known: dict[int, float]) -> int:
    """SIGTERM, then SIGKILL, every process of the session until none is left (or
    :data:`DEADLINE_S`); returns how many were ended."""
    import psutil

    ended: set[int] = set()
    deadline = time.monotonic() + DEADLINE_S
    quiet_sweeps = 0
    while time.monotonic() < deadline and quiet_sweeps < 3:
        procs = session_processes(session_dir, known)
        quiet_sweeps = 0 if procs else quiet_sweeps + 1
        for proc in procs:
            try:
                proc.terminate()
            except psutil.Error:
                pass
        _gone, alive = psutil.wait_procs(procs, timeout=GRACE_S)
        for proc in alive:
            try:
                proc.kill()
            except psutil.Error:
                pass
        ended.update(p.pid for p in procs)
        time.sleep(0.2)
    return len(ended)


def main(argv: list[str]) -> int:
    import select

    driver, session_dir = int(argv[0]), argv[1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver's Ctrl-C is not ours to obey
    known: dict[int, float] = {}
    stdin = sys.stdin.buffer
    while True:
        ready, _, _ = select.select([stdin], [], [], POLL_S)
        if ready and not stdin.read1(1 << 16):
            break  # EOF: the driver is gone
        known.update(descendants(driver, session_dir))
    reap(session_dir, known)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
