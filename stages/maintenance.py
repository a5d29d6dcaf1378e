"""Maintenance stage: the periodic jobs of the service.

- At start, and every ``archives.rescan_secs`` after, ingest the archive
  folders named in the configuration, so files added to them are picked
  up (ingesting is idempotent, so unchanged folders add nothing).
- Every minute, ask the pipeline to drop finished requests whose
  retention has passed, ask the scanner to update the accounts whose
  update is due, and to fetch again images whose fetch failed for a
  transient reason.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from broker.client import BrokerError, thread_client
from broker.config import Config
from broker.worker import RequestContext

log = logging.getLogger(__name__)

DROP_FINISHED_EVERY_SECS = 60.0
# Wait this long for the pipeline to come up before the first ingest.
START_DELAY_SECS = 1.0


class Maintenance:
    def __init__(self, config: Config, extra_archives: tuple[str, ...] = ()):
        self.config = config
        self.archives = tuple(config.archives.paths) + tuple(extra_archives)
        self.stopped = threading.Event()
        self.last_run: dict[str, float] = {}
        self.thread = threading.Thread(target=self._loop, daemon=True,
                                       name="maintenance")

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()

    def _loop(self) -> None:
        client = thread_client(self.config.broker.endpoint)
        self.stopped.wait(START_DELAY_SECS)
        next_ingest = time.monotonic()
        next_drop = time.monotonic() + DROP_FINISHED_EVERY_SECS
        while not self.stopped.is_set():
            now = time.monotonic()
            if self.archives and now >= next_ingest:
                self._ingest_archives(client)
                rescan = self.config.archives.rescan_secs
                next_ingest = now + rescan if rescan > 0 else float("inf")
            if now >= next_drop:
                self._call(client, {"kind": "requests.drop_finished"})
                self._call(client, {"kind": "images.retry"}, service="scanner",
                           timeout_secs=3600.0)
                self._call(client, {"kind": "accounts.update_due",
                                    "interval_secs": DROP_FINISHED_EVERY_SECS},
                           service="scanner", timeout_secs=3600.0)
                next_drop = now + DROP_FINISHED_EVERY_SECS
            self.stopped.wait(1.0)

    def _ingest_archives(self, client) -> None:
        for path in self.archives:
            reply = self._call(client, {"kind": "ingest.submit", "path": path})
            if reply and reply.get("ok"):
                log.info("ingest of %s submitted as job %d", path, reply["job"]["id"])
                self.last_run[path] = time.time()
            elif reply:
                log.error("cannot ingest %s: %s", path, reply.get("message"))

    def _call(self, client, body: dict, service: str = "pipeline",
              timeout_secs: float = 30.0) -> dict | None:
        try:
            return client.request(service, body, timeout_secs=timeout_secs)
        except BrokerError as error:
            log.warning("%s failed: %s", body["kind"], error)
            return None

    def handle_status(self, body: dict[str, Any], context: RequestContext) -> dict:
        return {"archives": list(self.archives), "last_run": self.last_run}


def build(config: Config, extra_archives: tuple[str, ...] = ()):
    maintenance = Maintenance(config, extra_archives)
    maintenance.start()
    return {"maintenance.status": maintenance.handle_status}, maintenance
