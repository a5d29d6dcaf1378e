"""The wire protocol between the broker, its clients and its workers.

Every process connects a ZeroMQ DEALER socket to the broker's ROUTER
socket. The ROUTER prepends the peer's identity frame on receipt and
strips it on send, so the frames below are as seen by the peer. The first
frame is the command: a role byte (``C`` client, ``W`` worker), a command
byte and the protocol version byte.

Client frames::

    client -> broker   [CLIENT_REQUEST, route, body]    route: service NUL request_id
    broker -> client   [CLIENT_REPLY,   request_id, body]
    broker -> client   [CLIENT_FAILURE, request_id, body]

Worker frames::

    worker -> broker   [WORKER_READY,      body]    body: service, pid, capacity
    worker -> broker   [WORKER_HEARTBEAT,  body]    body: activity (list of str)
    worker -> broker   [WORKER_REPLY,      ticket, body]
    worker -> broker   [WORKER_DISCONNECT]
    broker -> worker   [WORKER_REQUEST,    ticket, body]
    broker -> worker   [WORKER_HEARTBEAT]
    broker -> worker   [WORKER_DISCONNECT]  (unknown worker: send READY again)

A ``ticket`` is one byte giving the length of the client's identity, the
identity, then the request id; the worker sends it back unchanged. Few
frames per message keep the broker's per-message cost low.

``request_id`` is chosen by the client and unique among its pending
requests. ``body`` is one msgpack map. Request bodies name their
``kind`` (a string from ``KINDS``); reply bodies carry ``ok`` (bool),
and when ``ok`` is false, ``code`` and ``message``. A FAILURE frame is
the broker's own reply when no worker replied: its body is
``{ok: false, code, message}`` with a code from ``BROKER_FAILURES``.

Workers send a heartbeat every ``heartbeat_interval_secs`` and so does
the broker to each worker. A worker silent for ``heartbeat_liveness``
intervals is dropped: the requests it held are delivered to another
worker of the same service, up to ``max_redeliveries`` times, and then
fail with ``WORKER_DIED``. Header and command values are never reused
with another meaning; retire them instead.

The broker itself answers requests to the service ``broker``
(kinds ``broker.workers`` and ``broker.queues``).
"""

from __future__ import annotations

from typing import Any

import msgpack
import zmq

# pyzmq's send_multipart combines flag enums for every frame, which costs
# more than the send itself for small frames; plain int flags avoid that.
_SEND = zmq.backend.Socket.send
_MORE = int(zmq.SNDMORE) | int(zmq.DONTWAIT)
_LAST = int(zmq.DONTWAIT)

VERSION = b"\x02"
CLIENT_REQUEST = b"C\x01" + VERSION
CLIENT_REPLY = b"C\x02" + VERSION
CLIENT_FAILURE = b"C\x03" + VERSION
WORKER_READY = b"W\x01" + VERSION
WORKER_REQUEST = b"W\x02" + VERSION
WORKER_REPLY = b"W\x03" + VERSION
WORKER_HEARTBEAT = b"W\x04" + VERSION
WORKER_DISCONNECT = b"W\x05" + VERSION

BROKER_SERVICE = "broker"

# Codes of FAILURE replies sent by the broker.
BROKER_FAILURES = {
    "WORKER_DIED": "the worker handling the request stopped, even after redelivery",
    "NO_WORKER": "no worker of the service answered in time",
    "BROKER_RESTARTED": "the broker restarted while the request waited, so its "
    "reply was lost (raised by the client)",
    "TIMED_OUT": "the request was not answered in time",
    "BAD_REQUEST": "the request frames are malformed",
}

# Services and the request kinds each one serves. Fields are listed as
# name: type; every reply also carries ok (and code, message on failure).
KINDS: dict[str, dict[str, str]] = {
    "broker": {
        "broker.ping": "-> boot_id: str (new at every broker start)",
        "broker.workers": "-> workers: [{service, pid, activity, busy, capacity}]",
        "broker.queues": "-> queues: {service: {waiting, in_flight, workers}}",
    },
    "pipeline": {
        "search.submit": "image: bytes, account: str|None, ip: str|None "
        "-> identifier, status, error, twitter_accounts, results",
        "search.get": "identifier: str -> the same fields as search.submit",
        "query.submit": "url: str, ip: str|None -> status, has_first_time_scan, "
        "twitter_accounts, results, error",
        "ingest.submit": "path: str -> job: {id, path, status, total, done, "
        "added, failed, problems}",
        "ingest.get": "job_id: int -> job",
        "ingest.progress": "job_id: int, total/done/added/failed: int, "
        "problems: [[path, reason]], status: str -> (nothing)",
        "stats.get": "-> the /stats fields",
    },
    "lister": {
        "archive.list": "job_id: int, path: str -> total, added, failed, problems",
    },
    "indexer": {
        "image.index": "tweet_id, position, image_count, account_id: int, "
        "handle: str, location: str, is_file: bool, created_at: float|None, "
        "source: str -> image_id: int, added: bool",
    },
    "searcher": {
        "image.search": "image: bytes, account_ids: [int]|None, limit: int "
        "-> results: [{image_id, tweet_id, account_id, handle, position, "
        "image_count, distance, score}]",
        "index.sync": "-> size: int, max_id: int",
    },
}


def send_frames(socket: zmq.Socket, frames: list[bytes]) -> None:
    """Send a multipart message without blocking; raise zmq.ZMQError on failure."""
    last = len(frames) - 1
    for index, frame in enumerate(frames):
        _SEND(socket, frame, _MORE if index < last else _LAST)


def make_route(service: str, request_id: bytes) -> bytes:
    return service.encode() + b"\0" + request_id


def split_route(route: bytes) -> tuple[str, bytes]:
    """Return (service, request id) of a client route; raise ValueError if bad."""
    service, separator, request_id = route.partition(b"\0")
    if not separator or not service or not request_id:
        raise ValueError("malformed route frame")
    return service.decode("utf-8", "replace"), request_id


def make_ticket(client: bytes, request_id: bytes) -> bytes:
    return bytes((len(client),)) + client + request_id


def split_ticket(ticket: bytes) -> tuple[bytes, bytes]:
    """Return (client identity, request id) of a ticket; raise ValueError if bad."""
    if not ticket or len(ticket) < ticket[0] + 2:
        raise ValueError("malformed ticket frame")
    length = ticket[0]
    return ticket[1 : 1 + length], ticket[1 + length :]


def pack(body: dict[str, Any]) -> bytes:
    return msgpack.packb(body, use_bin_type=True)


def unpack(frame: bytes) -> dict[str, Any]:
    """Decode a msgpack body; raise ValueError unless it is a map."""
    try:
        body = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    except (msgpack.UnpackException, ValueError) as error:
        raise ValueError(f"body is not valid msgpack: {error}") from error
    if not isinstance(body, dict):
        raise ValueError(f"body must be a msgpack map, got {type(body).__name__}")
    return body


def failure(code: str, message: str, **fields: Any) -> dict[str, Any]:
    """Build a failed reply body."""
    return {"ok": False, "code": code, "message": message, **fields}
