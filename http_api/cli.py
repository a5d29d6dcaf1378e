"""Command-line client of a running service, through the broker.

Each command is one or a few requests to the ``pipeline``, ``broker`` or
``supervisor`` services; the same functions serve the subcommands of
``run_server.py`` and its interactive prompt.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

from broker.client import BrokerClient, BrokerError
from broker.config import Config

POLL_INTERVAL_SECS = 0.5


class CommandError(Exception):
    """A command failed; the message gives the reason and the next step."""


class Cli:
    def __init__(self, config: Config, output: TextIO = sys.stdout):
        self.config = config
        self.output = output
        self.client = BrokerClient(config.broker.endpoint)

    def close(self) -> None:
        self.client.close()

    def call(self, service: str, body: dict, timeout_secs: float = 30.0) -> dict:
        try:
            reply = self.client.request(service, body, timeout_secs=timeout_secs)
        except BrokerError as error:
            raise CommandError(
                f"the service did not respond to {body['kind']}: {error}. "
                "If it is not running, start it with: python run_server.py"
            ) from error
        if not reply.get("ok"):
            raise CommandError(f"{reply.get('code')}: {reply.get('message')}")
        return reply

    def print(self, text: str = "") -> None:
        print(text, file=self.output, flush=True)

    # Commands

    def ingest(self, path: str, wait: bool = True) -> dict:
        job = self.call("pipeline", {"kind": "ingest.submit", "path": path})["job"]
        self.print(f"ingest job {job['id']} of {job['path']} started")
        if not wait:
            return job
        return self._follow_job(job["id"])

    def _follow_job(self, job_id: int) -> dict:
        from tqdm import tqdm

        bar = tqdm(total=0, unit="image", file=self.output, dynamic_ncols=True,
                   desc=f"ingest {job_id}")
        try:
            while True:
                job = self.call("pipeline", {"kind": "ingest.get", "job_id": job_id})
                job = job["job"]
                if job["total"] != bar.total:
                    bar.total = job["total"]
                    bar.refresh()
                bar.update(job["done"] - bar.n)
                if job["status"] in ("done", "failed"):
                    break
                time.sleep(POLL_INTERVAL_SECS)
        finally:
            bar.close()
        self._print_job(job)
        return job

    def _print_job(self, job: dict) -> None:
        self.print(f"ingest {job['id']} {job['status']}: {job['added']} images added, "
                   f"{job['failed']} failed, {len(job['problems'])} problems")
        for path, reason in job["problems"][:20]:
            self.print(f"  skipped {path}: {reason}")
        if len(job["problems"]) > 20:
            self.print(f"  ... and {len(job['problems']) - 20} more")
        if job.get("error"):
            self.print(f"  error: {job['error']}")

    def search(self, image_path: str, account: str | None = None) -> dict:
        path = Path(image_path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CommandError(f"cannot read {path}: {error.strerror}") from error
        # A quick request first, so a stopped service is reported at once.
        self.call("broker", {"kind": "broker.queues"}, timeout_secs=5.0)
        try:
            reply = self.client.request("pipeline", {
                "kind": "search.submit", "image": data, "account": account,
            }, timeout_secs=150.0)
        except BrokerError as error:
            raise CommandError(f"search failed: {error}") from error
        if not reply.get("ok"):
            raise CommandError(f"{reply.get('code')}: {reply.get('message')}")
        self._print_request(reply)
        return reply

    def query(self, url: str) -> dict:
        reply = self.call("pipeline", {"kind": "query.submit", "url": url})
        while reply.get("status") not in ("END", None):
            self.print(f"status: {reply['status']}")
            time.sleep(POLL_INTERVAL_SECS * 4)
            reply = self.call("pipeline", {"kind": "query.submit", "url": url})
        self._print_request(reply)
        return reply

    def scan(self, handle: str) -> dict:
        reply = self.call("pipeline", {"kind": "scan.submit", "handle": handle})
        self.print(f"scan of @{handle}: {reply.get('status')}")
        return reply

    def _print_request(self, reply: dict) -> None:
        self.print(f"status: {reply.get('status')}")
        if reply.get("error"):
            self.print(f"error: {reply['error']}: {reply.get('message')}")
        for account in reply.get("twitter_accounts") or []:
            self.print(f"account: @{account['account_name']} "
                       f"(id {account['account_id']})")
        results = reply.get("results") or []
        if not results and not reply.get("error"):
            self.print("no matching tweet")
        for result in results:
            self.print(f"tweet {result['tweet_id']} image {result['image_position']} "
                       f"distance {result['distance']}")

    def stats(self) -> dict:
        reply = self.call("pipeline", {"kind": "stats.get"})
        for key, value in reply.items():
            if key != "ok":
                self.print(f"{key}: {value}")
        return reply

    def workers(self) -> dict:
        workers = self.call("broker", {"kind": "broker.workers"})["workers"]
        try:
            processes = self.call("supervisor", {"kind": "supervisor.processes"},
                                  timeout_secs=5.0)["processes"]
        except CommandError:
            processes = []
        memory = {p["pid"]: p for p in processes if p["pid"]}
        for worker in workers:
            process = memory.get(worker["pid"], {})
            activity = "; ".join(worker["activity"]) or "idle"
            rss = process.get("rss_mb")
            self.print(f"{worker['service']:<12} pid {worker['pid']:<7} "
                       f"{worker['busy']}/{worker['capacity']} busy  "
                       f"{'' if rss is None else f'{rss} MB  '}{activity}")
        for process in processes:
            if not process["running"]:
                self.print(f"{process['name']:<12} not running "
                           f"({process['restarts']} restarts)")
        return {"workers": workers, "processes": processes}

    def queues(self) -> dict:
        queues = self.call("broker", {"kind": "broker.queues"})["queues"]
        for service, queue in queues.items():
            self.print(f"{service:<12} waiting {queue['waiting']:<6} "
                       f"in flight {queue['in_flight']:<6} workers {queue['workers']}")
        return queues

    def stop(self) -> None:
        self.call("supervisor", {"kind": "supervisor.stop"}, timeout_secs=10.0)
        self.print("stopping")

    # Interactive prompt

    def commands(self) -> dict[str, Callable]:
        return {
            "ingest": self.ingest, "search": self.search, "query": self.query,
            "scan": self.scan, "stats": self.stats, "workers": self.workers,
            "queues": self.queues, "stop": self.stop,
        }

    def run_line(self, line: str) -> bool:
        """Run one prompt line; return False when the prompt should end."""
        words = shlex.split(line)
        if not words:
            return True
        name, arguments = words[0], words[1:]
        if name in ("help", "?"):
            self.print("commands: ingest PATH, search IMAGE [ACCOUNT], query URL, "
                       "scan HANDLE, stats, workers, queues, stop")
            return True
        command = self.commands().get(name)
        if command is None:
            self.print(f"unknown command {name!r}; type help")
            return True
        try:
            command(*arguments)
        except TypeError:
            self.print(f"wrong arguments for {name}; type help")
        except CommandError as error:
            self.print(f"error: {error}")
        return name != "stop"
