"""Start, watch and restart the processes of the group.

Each process is ``python run_server.py --config PATH process NAME``, the
command ``supervisord.conf`` runs too, so both ways of deploying behave
alike. A process that exits while the group is running is restarted
after a delay, which doubles while it keeps failing fast (1 s up to
30 s). Its exit status and the path of its crash log are logged.

The supervisor also serves the ``supervisor`` service through the broker
(kinds ``supervisor.processes`` and ``supervisor.stop``), which the
command line uses for ``workers`` and ``stop``.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from broker.config import Config
from broker.process import crash_log_path
from broker.worker import Worker

log = logging.getLogger(__name__)

MIN_RESTART_DELAY_SECS = 1.0
MAX_RESTART_DELAY_SECS = 30.0
# A process that ran at least this long before exiting is restarted at once.
HEALTHY_RUN_SECS = 30.0
STOP_TIMEOUT_SECS = 10.0


@dataclass
class Child:
    name: str
    command: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restarts: int = 0
    restart_delay: float = MIN_RESTART_DELAY_SECS
    restart_at: float | None = None
    exits: list = field(default_factory=list)


def process_names(config: Config) -> list[str]:
    """Return the processes of the group, the broker first."""
    names = ["broker", "pipeline", "lister", "maintenance", "http", "link_finder",
             "scanner"]
    names += [f"searcher-{number}" for number in range(1, config.stages.searchers + 1)]
    names += [f"indexer-{number}" for number in range(1, config.stages.indexers + 1)]
    return names


def _stop_with_parent() -> None:
    """Ask Linux to send SIGTERM to this child when the supervisor dies.

    Without it, a supervisor killed with SIGKILL would leave its children
    running. Elsewhere this does nothing.
    """
    if sys.platform != "linux":
        return
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class Supervisor:
    def __init__(self, config: Config, run_script: Path, config_path: Path,
                 environment: dict[str, str]):
        self.config = config
        self.environment = {**os.environ, **environment}
        self.stopping = threading.Event()
        self.children = [
            Child(name, [sys.executable, str(run_script), "--config",
                         str(config_path), "process", name])
            for name in process_names(config)
        ]
        self.worker: Worker | None = None

    # Lifecycle

    def start(self) -> None:
        self.config.log_folder.mkdir(parents=True, exist_ok=True)
        for child in self.children:
            self._spawn(child)
            if child.name == "broker":
                time.sleep(0.2)  # Let the broker bind before the others connect.
        self.worker = Worker("supervisor", {
            "supervisor.processes": self._handle_processes,
            "supervisor.stop": self._handle_stop,
        }, self.config.broker, capacity=2)
        threading.Thread(target=self.worker.run, daemon=True,
                         name="supervisor-worker").start()

    def stop(self) -> None:
        self.stopping.set()

    def wait(self) -> None:
        """Watch the children until ``stop``; then stop them all."""
        while not self.stopping.wait(0.2):
            for child in self.children:
                self._watch(child)
        self._stop_children()

    def _spawn(self, child: Child) -> None:
        child.process = subprocess.Popen(child.command, env=self.environment,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=_stop_with_parent)
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info("started %s (pid %d)", child.name, child.process.pid)

    def _watch(self, child: Child) -> None:
        if child.process is not None:
            status = child.process.poll()
            if status is None:
                return
            self._on_exit(child, status)
        if child.restart_at is not None and time.monotonic() >= child.restart_at:
            child.restarts += 1
            self._spawn(child)

    def _on_exit(self, child: Child, status: int) -> None:
        pid = child.process.pid
        ran_for = time.monotonic() - child.started_at
        child.process = None
        crash = crash_log_path(self.config.log_folder, child.name, pid)
        reason = (f"killed by {signal.Signals(-status).name}" if status < 0
                  else f"exited with status {status}")
        where = f"; traceback in {crash}" if crash.exists() else ""
        if ran_for >= HEALTHY_RUN_SECS:
            child.restart_delay = MIN_RESTART_DELAY_SECS
        log.error("%s (pid %d) %s after %.1f s%s; restarting in %.0f s",
                  child.name, pid, reason, ran_for, where, child.restart_delay)
        child.exits.append({"pid": pid, "status": status, "at": time.time()})
        del child.exits[:-10]
        self._write_exit_log(child, pid, reason, where)
        child.restart_at = time.monotonic() + child.restart_delay
        child.restart_delay = min(child.restart_delay * 2, MAX_RESTART_DELAY_SECS)

    def _write_exit_log(self, child: Child, pid: int, reason: str, where: str) -> None:
        path = self.config.log_folder / "exits.log"
        with path.open("a", encoding="utf-8") as file:
            file.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {child.name} pid {pid} "
                       f"{reason}{where}\n")

    def _stop_children(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        # Stages first, so they finish their work while the broker still routes.
        ordered = [c for c in self.children if c.name != "broker"]
        ordered += [c for c in self.children if c.name == "broker"]
        for group in (ordered[:-1], ordered[-1:]):
            running = [c for c in group if c.process and c.process.poll() is None]
            for child in running:
                child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_SECS
            for child in running:
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop in %.0f s, killing it", child.name,
                                STOP_TIMEOUT_SECS)
                    child.process.kill()
                    child.process.wait()
        log.info("all processes stopped")

    # The supervisor service

    def _handle_processes(self, body, context) -> dict:
        processes = []
        for child in self.children:
            entry = {"name": child.name, "pid": None, "rss_mb": None,
                     "restarts": child.restarts, "running": False}
            if child.process is not None and child.process.poll() is None:
                entry["pid"] = child.process.pid
                entry["running"] = True
                try:
                    rss = psutil.Process(child.process.pid).memory_info().rss
                    entry["rss_mb"] = round(rss / 2**20, 1)
                except psutil.Error:
                    pass
            processes.append(entry)
        return {"processes": processes}

    def _handle_stop(self, body, context) -> dict:
        log.info("stop requested from the command line")
        threading.Timer(0.2, self.stop).start()
        return {}
