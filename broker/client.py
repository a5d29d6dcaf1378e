"""The client side: send requests to a service through the broker.

A ``BrokerClient`` owns one DEALER socket and must stay in the thread
that created it; ``thread_client`` gives each thread its own.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from typing import Any

import zmq

from broker import protocol


# Broker failure codes that mean no worker replied to the request.
TRANSPORT_FAILURES = frozenset({"WORKER_DIED", "NO_WORKER"})
# While a request waits, the broker is asked this often whether it restarted.
PING_INTERVAL_SECS = 5.0
# The first request of a client checks that a broker replies within this.
FIRST_PING_TIMEOUT_SECS = 5.0


class BrokerError(RuntimeError):
    """A request failed in transport: timed out, or no worker replied."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class BrokerClient:
    """Send requests to services; replies are matched by request id."""

    def __init__(self, endpoint: str, context: zmq.Context | None = None):
        self.endpoint = endpoint
        self.context = context or zmq.Context.instance()
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(endpoint)
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid()}-{threading.get_ident()}-".encode()
        # Replies that arrived while waiting for another request.
        self._early: dict[bytes, dict[str, Any]] = {}
        self.boot_id: str | None = None

    def close(self) -> None:
        self.socket.close()

    def send(self, service: str, body: dict[str, Any]) -> bytes:
        """Send a request without waiting; return its request id."""
        request_id = self._prefix + str(next(self._ids)).encode()
        protocol.send_frames(self.socket, [
            protocol.CLIENT_REQUEST, protocol.make_route(service, request_id),
            protocol.pack(body),
        ])
        return request_id

    def receive(self, timeout_secs: float) -> tuple[bytes, dict[str, Any]] | None:
        """Return the next (request id, reply body), or None on time-out.

        A FAILURE from the broker becomes a reply with ``ok`` false, and a
        malformed message counts as none.
        """
        if self._early:
            request_id = next(iter(self._early))
            return request_id, self._early.pop(request_id)
        return self._receive_socket(timeout_secs)

    def request(
        self, service: str, body: dict[str, Any], timeout_secs: float = 60.0
    ) -> dict[str, Any]:
        """Send a request and wait for its reply.

        Raises BrokerError when no reply arrives within ``timeout_secs``,
        when the broker reports that no worker replied, or when the
        broker restarted while the request waited (its reply is lost then).
        """
        if self.boot_id is None:
            self.boot_id = self._ping(min(timeout_secs, FIRST_PING_TIMEOUT_SECS))
        request_id = self.send(service, body)
        deadline = time.monotonic() + timeout_secs
        next_ping = time.monotonic() + PING_INTERVAL_SECS
        ping_id = None
        while True:
            if request_id in self._early:
                reply = self._early.pop(request_id)
                break
            now = time.monotonic()
            if now >= deadline:
                raise BrokerError(
                    "TIMED_OUT",
                    f"no reply from {service} for {body.get('kind')} "
                    f"within {timeout_secs:.0f} s",
                )
            if now >= next_ping:
                ping_id = self.send(protocol.BROKER_SERVICE, {"kind": "broker.ping"})
                next_ping = now + PING_INTERVAL_SECS
            received = self._receive_socket(min(deadline, next_ping) - now)
            if received is None:
                continue
            if received[0] == request_id:
                reply = received[1]
                break
            if received[0] == ping_id:
                self._check_boot(received[1], service, body)
                continue
            self._early[received[0]] = received[1]
        if not reply.get("ok", True) and reply.get("code") in TRANSPORT_FAILURES:
            raise BrokerError(reply["code"], reply.get("message", ""))
        return reply

    def _ping(self, timeout_secs: float) -> str:
        ping_id = self.send(protocol.BROKER_SERVICE, {"kind": "broker.ping"})
        deadline = time.monotonic() + timeout_secs
        while time.monotonic() < deadline:
            received = self._receive_socket(deadline - time.monotonic())
            if received is None:
                continue
            if received[0] == ping_id:
                return str(received[1].get("boot_id"))
            self._early[received[0]] = received[1]
        raise BrokerError("NO_BROKER", f"no broker responded at {self.endpoint} "
                          f"within {timeout_secs:.0f} s")

    def _check_boot(self, reply: dict, service: str, body: dict) -> None:
        boot_id = str(reply.get("boot_id"))
        if boot_id == self.boot_id:
            return
        self.boot_id = boot_id
        raise BrokerError(
            "BROKER_RESTARTED",
            f"the broker restarted while {service} handled {body.get('kind')}, "
            "so the reply is lost; send the request again",
        )

    def _receive_socket(self, timeout_secs: float):
        if not self.socket.poll(int(timeout_secs * 1000), zmq.POLLIN):
            return None
        return self._read()

    def _read(self) -> tuple[bytes, dict[str, Any]] | None:
        frames = self.socket.recv_multipart()
        if len(frames) != 3 or frames[0] not in (protocol.CLIENT_REPLY,
                                                 protocol.CLIENT_FAILURE):
            return None
        try:
            return frames[1], protocol.unpack(frames[2])
        except ValueError as error:
            return frames[1], protocol.failure("BAD_REPLY", str(error))


_local = threading.local()


def thread_client(endpoint: str) -> BrokerClient:
    """Return this thread's client for ``endpoint``, creating it once."""
    clients = getattr(_local, "clients", None)
    if clients is None:
        clients = _local.clients = {}
    key = (os.getpid(), endpoint)
    client = clients.get(key)
    if client is None:
        client = clients[key] = BrokerClient(endpoint)
    return client
