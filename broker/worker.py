"""The worker side: serve one service's requests behind the broker.

The main thread owns the DEALER socket: it announces the service, sends
heartbeats and passes requests to a pool of handler threads, so a long
request never silences the heartbeat. Handlers reply through an inproc
socket that wakes the main thread.

A handler is ``fn(body: dict, context: RequestContext) -> dict``. It
returns the reply body; ``ok`` is added when missing. A ``HandlerError``
becomes a failed reply with its code; any other exception is logged
with its traceback and becomes ``PROCESSING_ERROR``.
"""

from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import zmq

from broker import protocol
from broker.client import thread_client
from broker.config import BrokerConfig

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], "RequestContext"], dict[str, Any]]


class HandlerError(Exception):
    """A request failed for a reason the client should see by code."""

    def __init__(self, code: str, message: str, **fields: Any):
        super().__init__(message)
        self.code = code
        self.fields = fields


class RequestContext:
    """Per-request helpers a handler may use besides the request body."""

    def __init__(self, worker: "Worker", slot: int):
        self._worker = worker
        self.slot = slot

    def set_activity(self, text: str | None) -> None:
        """Describe what this handler is doing, for ``broker.workers``."""
        self._worker.activity[self.slot] = text

    def client(self):
        """Return this thread's broker client, for requests to other services."""
        return thread_client(self._worker.config.endpoint)


class Worker:
    """Serve ``service`` with ``handlers`` keyed by request kind."""

    def __init__(
        self,
        service: str,
        handlers: dict[str, Handler],
        config: BrokerConfig,
        capacity: int = 1,
        inline_kinds: frozenset[str] = frozenset(),
    ):
        self.service = service
        self.handlers = handlers
        # Kinds cheap enough to run in the socket thread, which saves two
        # thread hand-offs per request. Their handlers must not block, or
        # heartbeats stop; nothing checks this.
        self.inline_kinds = inline_kinds
        self.config = config
        self.capacity = capacity
        self.context = zmq.Context.instance()
        self.running = True
        self.activity: dict[int, str | None] = {}
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(capacity):
            self._slots.put(slot)
        self._done_endpoint = f"inproc://worker-done-{id(self)}"
        self._done_pull = self.context.socket(zmq.PULL)
        self._done_pull.bind(self._done_endpoint)
        self._pushers = threading.local()
        self._pool = ThreadPoolExecutor(capacity, thread_name_prefix=service)
        self._generation = itertools.count()
        self.socket: zmq.Socket | None = None

    def stop(self, *_args) -> None:
        self.running = False

    # Connection

    def _connect(self) -> None:
        if self.socket is not None:
            self.socket.close()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(self.config.endpoint)
        body = {"service": self.service, "pid": os.getpid(), "capacity": self.capacity}
        self.socket.send_multipart([protocol.WORKER_READY, protocol.pack(body)])
        self.generation = next(self._generation)
        self.broker_expires_at = self._expiry()
        self.poller = zmq.Poller()
        self.poller.register(self.socket, zmq.POLLIN)
        self.poller.register(self._done_pull, zmq.POLLIN)

    def _expiry(self) -> float:
        return time.monotonic() + (
            self.config.heartbeat_interval_secs * self.config.heartbeat_liveness
        )

    def run(self) -> None:
        """Serve until ``stop``; reconnect when the broker goes silent."""
        self._connect()
        log.info("serving %s (pid %d, capacity %d)", self.service, os.getpid(),
                 self.capacity)
        interval = self.config.heartbeat_interval_secs
        next_heartbeat = time.monotonic() + interval
        silent_since = None
        while self.running:
            events = dict(self.poller.poll(timeout=int(interval * 500)))
            if self._done_pull in events:
                self._forward_replies()
            if self.socket in events:
                self._read_broker()
            now = time.monotonic()
            if now >= next_heartbeat:
                self._heartbeat()
                next_heartbeat = now + interval
            if now > self.broker_expires_at:
                # One warning per outage; the reconnects after it are routine.
                if silent_since is None:
                    silent_since = now
                    log.warning("broker silent for %.1f s, reconnecting",
                                interval * self.config.heartbeat_liveness)
                self._connect()
            elif silent_since is not None and self.socket in events:
                log.info("broker back after %.1f s", now - silent_since)
                silent_since = None
        self._shutdown()

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._forward_replies()
        if self.socket is not None:
            self.socket.send_multipart([protocol.WORKER_DISCONNECT])
            self.socket.close()
        self._done_pull.close()
        log.info("stopped serving %s", self.service)

    def _heartbeat(self) -> None:
        activity = [text for text in self.activity.values() if text]
        self.socket.send_multipart([
            protocol.WORKER_HEARTBEAT, protocol.pack({"activity": activity}),
        ])

    def _read_broker(self) -> None:
        while True:
            try:
                frames = self.socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.broker_expires_at = self._expiry()
            command = frames[0]
            if command == protocol.WORKER_REQUEST and len(frames) == 3:
                self._start(frames[1], frames[2])
            elif command == protocol.WORKER_DISCONNECT:
                log.info("broker asked to announce again")
                self._connect()
                return

    # Handling

    def _start(self, ticket: bytes, body: bytes) -> None:
        if self.inline_kinds and self._run_inline(ticket, body):
            return
        slot = self._slots.get_nowait() if not self._slots.empty() else -1
        generation = self.generation
        self._pool.submit(self._handle, ticket, body, slot, generation)

    def _run_inline(self, ticket: bytes, raw_body: bytes) -> bool:
        """Handle an inline kind in this thread; return False for other kinds."""
        try:
            kind = protocol.unpack(raw_body).get("kind")
        except ValueError:
            return False
        if kind not in self.inline_kinds:
            return False
        reply = self._call_handler(raw_body, RequestContext(self, -1))
        protocol.send_frames(
            self.socket, [protocol.WORKER_REPLY, ticket, protocol.pack(reply)]
        )
        return True

    def _handle(self, ticket, raw_body, slot, generation) -> None:
        context = RequestContext(self, slot)
        try:
            reply = self._call_handler(raw_body, context)
        finally:
            self.activity.pop(slot, None)
            if slot >= 0:
                self._slots.put(slot)
        pusher = getattr(self._pushers, "socket", None)
        if pusher is None:
            pusher = self._pushers.socket = self.context.socket(zmq.PUSH)
            pusher.connect(self._done_endpoint)
        pusher.send_multipart([str(generation).encode(), ticket, protocol.pack(reply)])

    def _call_handler(self, raw_body: bytes, context: RequestContext) -> dict:
        try:
            body = protocol.unpack(raw_body)
        except ValueError as error:
            return protocol.failure("BAD_REQUEST", str(error))
        kind = body.get("kind")
        handler = self.handlers.get(kind)
        if handler is None:
            return protocol.failure(
                "BAD_REQUEST", f"{self.service} does not serve kind {kind!r}"
            )
        try:
            reply = handler(body, context)
        except HandlerError as error:
            return protocol.failure(error.code, str(error), **error.fields)
        except Exception as error:  # noqa: BLE001 - the worker must keep serving
            log.error("%s failed on %s: %s\n%s", self.service, kind, error,
                      traceback.format_exc())
            return protocol.failure(
                "PROCESSING_ERROR", f"{self.service} failed on {kind}: {error}"
            )
        reply = dict(reply or {})
        reply.setdefault("ok", True)
        return reply

    def _forward_replies(self) -> None:
        while True:
            try:
                generation, ticket, body = self._done_pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if int(generation) != self.generation:
                # The request came over a connection that was replaced; the
                # broker has already redelivered or failed it.
                continue
            protocol.send_frames(self.socket, [protocol.WORKER_REPLY, ticket, body])


def serve(
    service: str,
    handlers: dict[str, Handler],
    config: BrokerConfig,
    capacity: int = 1,
) -> Worker:
    """Build a worker; the caller installs signal handlers and calls run()."""
    return Worker(service, handlers, config, capacity)
