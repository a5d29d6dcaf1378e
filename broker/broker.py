"""The broker: routes requests from clients to the workers of a service.

One ROUTER socket serves clients and workers alike (see ``protocol``).
Each service has a queue of waiting requests; a request goes to the
worker of that service with free capacity that has waited longest. The
broker tracks which requests each worker has, so the requests of a worker
that stops sending heartbeats are delivered again or failed. No client
waits forever.
"""

from __future__ import annotations

import collections
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass, field

import zmq

from broker import protocol
from broker.config import BrokerConfig

log = logging.getLogger(__name__)

# Expired workers and timed-out requests are looked for this often.
HOUSEKEEPING_INTERVAL_SECS = 0.1


@dataclass
class PendingRequest:
    client: bytes
    request_id: bytes
    service: str
    body: bytes
    received_at: float
    deliveries: int = 0


@dataclass
class WorkerEntry:
    identity: bytes
    service: str
    pid: int
    capacity: int
    expires_at: float
    activity: list = field(default_factory=list)
    held: dict = field(default_factory=dict)  # (client, request_id) -> PendingRequest


@dataclass
class Service:
    name: str
    waiting: collections.deque = field(default_factory=collections.deque)
    workers: collections.OrderedDict = field(default_factory=collections.OrderedDict)


class Broker:
    """Route requests between clients and workers until ``stop`` is called."""

    def __init__(self, config: BrokerConfig, context: zmq.Context | None = None):
        self.config = config
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.ROUTER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.socket.bind(config.endpoint)
        self.services: dict[str, Service] = {}
        self.workers: dict[bytes, WorkerEntry] = {}
        self.running = True
        self.interval = config.heartbeat_interval_secs
        self.next_heartbeat = time.monotonic() + self.interval
        self.dropped_frames = 0
        self.next_check = 0.0
        # Changes with every start, so clients can tell a restart happened.
        self.boot_id = secrets.token_hex(8)

    def stop(self, *_args) -> None:
        self.running = False

    def run(self) -> None:
        log.info("broker listening on %s", self.config.endpoint)
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        while self.running:
            events = dict(poller.poll(timeout=int(self.interval * 250)))
            if self.socket in events:
                # Read what is queued in one go before housekeeping.
                for _ in range(1000):
                    try:
                        frames = self.socket.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._dispatch_frames(frames)
            self._housekeeping()
        for worker in list(self.workers.values()):
            self._send(worker.identity, [protocol.WORKER_DISCONNECT])
        self.socket.close()
        log.info("broker stopped")

    # Incoming frames

    def _dispatch_frames(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.dropped_frames += 1
            return
        sender, command = frames[0], frames[1]
        if command == protocol.CLIENT_REQUEST and len(frames) == 4:
            self._on_client_request(sender, frames[2], frames[3])
        elif command[:1] == b"W":
            self._on_worker_frames(sender, command, frames[2:])
        else:
            self.dropped_frames += 1
            log.warning("dropped malformed message from %s (%d frames)",
                        sender.hex(), len(frames))

    def _on_client_request(self, client: bytes, route: bytes, body: bytes) -> None:
        try:
            name, request_id = protocol.split_route(route)
        except ValueError:
            self.dropped_frames += 1
            return
        if name == protocol.BROKER_SERVICE:
            self._answer_broker_request(client, request_id, body)
            return
        request = PendingRequest(client, request_id, name, body, time.monotonic())
        self._service(name).waiting.append(request)
        self._dispatch(name)

    def _on_worker_frames(self, identity: bytes, command: bytes, rest: list) -> None:
        worker = self.workers.get(identity)
        if command == protocol.WORKER_READY and rest:
            self._on_ready(identity, rest[0])
            return
        if worker is None:
            # A worker the broker does not know (for example after a broker
            # restart) is asked to send READY again.
            self._send(identity, [protocol.WORKER_DISCONNECT])
            return
        worker.expires_at = self._expiry()
        if command == protocol.WORKER_REPLY and len(rest) == 2:
            self._on_reply(worker, rest[0], rest[1])
        elif command == protocol.WORKER_HEARTBEAT:
            if rest:
                try:
                    worker.activity = protocol.unpack(rest[0]).get("activity", [])
                except ValueError:
                    pass
        elif command == protocol.WORKER_DISCONNECT:
            self._remove_worker(worker, reason="disconnected")

    def _on_ready(self, identity: bytes, body: bytes) -> None:
        try:
            info = protocol.unpack(body)
            service = str(info["service"])
            pid = int(info.get("pid", 0))
            capacity = max(1, int(info.get("capacity", 1)))
        except (ValueError, KeyError, TypeError) as error:
            log.warning("rejected READY from %s: %s", identity.hex(), error)
            return
        old = self.workers.get(identity)
        if old is not None:
            self._remove_worker(old, reason="announced itself again")
        worker = WorkerEntry(identity, service, pid, capacity, self._expiry())
        self.workers[identity] = worker
        self._service(service).workers[identity] = worker
        log.info("worker pid %d ready for %s (capacity %d)", pid, service, capacity)
        self._dispatch(service)

    def _on_reply(self, worker: WorkerEntry, ticket: bytes, body: bytes) -> None:
        try:
            client, request_id = protocol.split_ticket(ticket)
        except ValueError:
            self.dropped_frames += 1
            return
        request = worker.held.pop((client, request_id), None)
        if request is None:
            # Late reply to a request that was already redelivered or failed.
            log.debug("dropped late reply from pid %d", worker.pid)
            return
        self._send(client, [protocol.CLIENT_REPLY, request_id, body])
        if self.services[worker.service].waiting:
            self._dispatch(worker.service)

    # Routing

    def _service(self, name: str) -> Service:
        service = self.services.get(name)
        if service is None:
            service = self.services[name] = Service(name)
        return service

    def _dispatch(self, name: str) -> None:
        service = self._service(name)
        while service.waiting:
            worker = self._free_worker(service)
            if worker is None:
                return
            request = service.waiting.popleft()
            request.deliveries += 1
            worker.held[(request.client, request.request_id)] = request
            # Move the worker to the end so the longest-waiting one goes first.
            service.workers.move_to_end(worker.identity)
            self._send(worker.identity, [
                protocol.WORKER_REQUEST,
                protocol.make_ticket(request.client, request.request_id),
                request.body,
            ])

    def _free_worker(self, service: Service) -> WorkerEntry | None:
        for worker in service.workers.values():
            if len(worker.held) < worker.capacity:
                return worker
        return None

    def _remove_worker(self, worker: WorkerEntry, reason: str) -> None:
        self.workers.pop(worker.identity, None)
        service = self._service(worker.service)
        service.workers.pop(worker.identity, None)
        if worker.held:
            log.warning("worker pid %d of %s %s holding %d request(s)",
                        worker.pid, worker.service, reason, len(worker.held))
        else:
            log.info("worker pid %d of %s %s", worker.pid, worker.service, reason)
        # Requeue at the front, oldest first, so redelivered work is not
        # overtaken by newer requests.
        for request in sorted(worker.held.values(), key=lambda r: r.received_at,
                              reverse=True):
            if request.deliveries <= self.config.max_redeliveries:
                service.waiting.appendleft(request)
            else:
                self._fail(request, "WORKER_DIED",
                           f"the {worker.service} worker (pid {worker.pid}) stopped "
                           f"while handling the request, "
                           f"{request.deliveries} time(s)")
        worker.held.clear()
        self._dispatch(worker.service)

    def _fail(self, request: PendingRequest, code: str, message: str) -> None:
        body = protocol.pack(protocol.failure(code, message))
        self._send(request.client,
                   [protocol.CLIENT_FAILURE, request.request_id, body])

    def _send(self, identity: bytes, frames: list[bytes]) -> None:
        try:
            protocol.send_frames(self.socket, [identity, *frames])
        except zmq.ZMQError as error:
            # The peer is gone (ROUTER_MANDATORY) or its queue is full.
            log.debug("cannot send to %s: %s", identity.hex(), error)

    # Timers

    def _expiry(self) -> float:
        return time.monotonic() + self.interval * self.config.heartbeat_liveness

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + HOUSEKEEPING_INTERVAL_SECS
        for worker in [w for w in self.workers.values() if w.expires_at < now]:
            self._remove_worker(worker, reason="missed its heartbeats")
        if now >= self.next_heartbeat:
            for worker in self.workers.values():
                self._send(worker.identity, [protocol.WORKER_HEARTBEAT])
            self.next_heartbeat = now + self.interval
            self._expire_waiting(now)

    def _expire_waiting(self, now: float) -> None:
        limit = self.config.request_timeout_secs
        for service in self.services.values():
            while service.waiting and now - service.waiting[0].received_at > limit:
                request = service.waiting.popleft()
                self._fail(request, "NO_WORKER",
                           f"no {service.name} worker took the request within "
                           f"{limit:.0f} s")

    # The broker's own service

    def _answer_broker_request(self, client: bytes, request_id: bytes, body: bytes):
        try:
            kind = protocol.unpack(body).get("kind")
        except ValueError as error:
            reply = protocol.failure("BAD_REQUEST", str(error))
        else:
            if kind == "broker.ping":
                reply = {"ok": True, "boot_id": self.boot_id}
            elif kind == "broker.workers":
                reply = {"ok": True, "workers": self._describe_workers()}
            elif kind == "broker.queues":
                reply = {"ok": True, "queues": self._describe_queues()}
            else:
                reply = protocol.failure("BAD_REQUEST", f"unknown kind {kind!r}")
        self._send(client, [protocol.CLIENT_REPLY, request_id, protocol.pack(reply)])

    def _describe_workers(self) -> list[dict]:
        return [
            {"service": w.service, "pid": w.pid, "capacity": w.capacity,
             "busy": len(w.held), "activity": w.activity}
            for w in sorted(self.workers.values(), key=lambda w: (w.service, w.pid))
        ]

    def _describe_queues(self) -> dict:
        return {
            name: {
                "waiting": len(service.waiting),
                "in_flight": sum(len(w.held) for w in service.workers.values()),
                "workers": len(service.workers),
            }
            for name, service in sorted(self.services.items())
        }


def main(config: BrokerConfig) -> None:
    broker = Broker(config)
    signal.signal(signal.SIGTERM, broker.stop)
    signal.signal(signal.SIGINT, broker.stop)
    log.info("broker started (pid %d)", os.getpid())
    broker.run()
