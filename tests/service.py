"""Start the real process group on a temporary data folder, for end-to-end tests.

``RunningService`` writes a configuration with free loopback ports,
starts ``run_server.py serve`` as a subprocess, waits until the HTTP API
and the broker respond, and stops the group (SIGTERM, then SIGKILL) when
closed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from broker.client import BrokerError, thread_client

PROJECT_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_SECS = 60.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write_config(folder: Path, extra: str = "", indexers: int = 2,
                 http_extra: str = "") -> Path:
    """Write a test configuration under ``folder`` and return its path."""
    path = folder / "config.toml"
    path.write_text(f"""
[data]
folder = "{folder / 'data'}"
[broker]
endpoint = "tcp://127.0.0.1:{free_port()}"
heartbeat_interval_secs = 0.5
heartbeat_liveness = 4
request_timeout_secs = 60.0
[stages]
indexers = {indexers}
[http]
host = "127.0.0.1"
port = {free_port()}
threads = 8
{http_extra or "min_request_interval_secs = 0"}
[archives]
rescan_secs = 0
{extra}
""", encoding="utf-8")
    return path


class RunningService:
    def __init__(self, folder: Path, extra_config: str = "", indexers: int = 2,
                 archives: tuple[str, ...] = (), http_extra: str = ""):
        self.folder = folder
        self.config_path = write_config(folder, extra_config, indexers, http_extra)
        from broker.config import load_config

        self.config = load_config(self.config_path, environ={})
        command = [sys.executable, str(PROJECT_ROOT / "run_server.py"), "--config",
                   str(self.config_path), "serve", "--no-demo"]
        for archive in archives:
            command += ["--archive", archive]
        self.log_path = folder / "service.log"
        self.log_file = self.log_path.open("wb")
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith("A2T_")}
        self.process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, stdout=self.log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=environment,
        )
        self.base_url = f"http://127.0.0.1:{self.config.http.port}"
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"service exited early:\n{self.log_text()}")
            try:
                status, _ = self.http("GET", "/stats")
                services = {w["service"] for w in self.workers()}
                if status == 200 and {"indexer", "lister", "searcher"} <= services:
                    return
            except (OSError, BrokerError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"service not ready in {START_TIMEOUT_SECS} s:\n"
                           f"{self.log_text()}")

    def log_text(self) -> str:
        self.log_file.flush()
        return self.log_path.read_text(errors="replace")[-20000:]

    def http(self, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None, timeout: float = 60.0):
        """Send one request; return (status, parsed JSON or raw bytes)."""
        request = urllib.request.Request(self.base_url + path, data=body,
                                         method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, data = response.status, response.read()
                content_type = response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, data = error.code, error.read()
            content_type = error.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            return status, json.loads(data)
        return status, data

    def call(self, service: str, body: dict, timeout_secs: float = 30.0) -> dict:
        # One client per thread: a ZeroMQ socket must not be shared by threads.
        client = thread_client(self.config.broker.endpoint)
        return client.request(service, body, timeout_secs=timeout_secs)

    def workers(self) -> list[dict]:
        return self.call("broker", {"kind": "broker.workers"}, 5.0)["workers"]

    def processes(self) -> list[dict]:
        return self.call("supervisor", {"kind": "supervisor.processes"},
                         5.0)["processes"]

    def ingest(self, path: str, timeout_secs: float = 600.0) -> dict:
        job = self.call("pipeline", {"kind": "ingest.submit", "path": path})["job"]
        return self.wait_job(job["id"], timeout_secs)

    def wait_job(self, job_id: int, timeout_secs: float = 600.0,
                 until=lambda job: job["status"] in ("done", "failed")) -> dict:
        deadline = time.monotonic() + timeout_secs
        while time.monotonic() < deadline:
            job = self.call("pipeline", {"kind": "ingest.get", "job_id": job_id})["job"]
            if until(job):
                return job
            time.sleep(0.2)
        raise TimeoutError(f"ingest job {job_id} not finished in {timeout_secs} s")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log_file.close()
