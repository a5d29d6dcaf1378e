"""Start-up shared by every process of the group: logging, signals, crashes.

Each log line names the process and its pid. Lines go to standard error
(which the supervisor forwards) and to ``<data>/logs/<process>.log``.
An uncaught exception is written with its traceback to
``<data>/logs/crash-<process>-<pid>.log`` before the process exits with
status 1, so the supervisor can report where to look.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

LOG_FORMAT = "%(asctime)s %(levelname)s [{name} %(process)d] %(name)s: %(message)s"


def setup_logging(process_name: str, log_folder: Path, level: str = "INFO") -> None:
    """Send this process's log lines to standard error and its log file."""
    log_folder.mkdir(parents=True, exist_ok=True)
    formatter = logging.Formatter(LOG_FORMAT.format(name=process_name))
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter)
    root.addHandler(console)
    log_file = logging.handlers.RotatingFileHandler(
        log_folder / f"{process_name.split('-')[0]}.log",
        maxBytes=10 * 1024 * 1024,
        backupCount=3,
        encoding="utf-8",
    )
    log_file.setFormatter(formatter)
    root.addHandler(log_file)
    root.setLevel(os.environ.get("A2T_LOG_LEVEL", level))
    # faiss logs at INFO which CPU build it loads, including a failed try of
    # an AVX2 build that reads like an error.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def crash_log_path(log_folder: Path, process_name: str, pid: int) -> Path:
    return log_folder / f"crash-{process_name}-{pid}.log"


def run_process(
    process_name: str,
    log_folder: Path,
    body: Callable[[], None],
    stop: Callable[[], None],
) -> int:
    """Run ``body`` with SIGTERM/SIGINT calling ``stop``; return an exit code."""

    def on_signal(number, _frame):
        logging.getLogger(__name__).info("received %s, stopping",
                                         signal.Signals(number).name)
        stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        body()
    except Exception:  # noqa: BLE001 - recorded for the supervisor, then exit 1
        path = crash_log_path(log_folder, process_name, os.getpid())
        text = traceback.format_exc()
        path.write_text(f"{time.strftime('%Y-%m-%d %H:%M:%S')} "
                        f"{process_name} pid {os.getpid()}\n{text}", encoding="utf-8")
        logging.getLogger(__name__).error("crashed, traceback in %s\n%s", path, text)
        return 1
    return 0
