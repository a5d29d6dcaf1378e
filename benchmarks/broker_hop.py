"""Measure one request/reply hop through the real broker.

Three processes: ``broker.broker.Broker``, a ``broker.worker.Worker``
serving an ``echo`` service, and a ``broker.client.BrokerClient``. The
reference is a direct ZeroMQ DEALER-ROUTER pair in two processes that
echoes the same message body without a broker. Both sides use TCP on
127.0.0.1, as the deployed group does.

For each message size, the client first sends requests one at a time
(p50 and p99 of the round trip), then keeps ``WINDOW`` requests in
flight (messages per second). Targets: windowed throughput at least half
of the direct pair's, and p99 of small messages at most 1 ms.

    .venv/bin/python -m benchmarks.broker_hop [--quick]
"""

from __future__ import annotations

import argparse
import signal
import time
from dataclasses import dataclass
from multiprocessing import get_context

import zmq

from benchmarks.common import (
    RESULTS_FOLDER,
    Figure,
    format_table,
    free_port,
    machine,
    percentile_ms,
    write_json,
)

BENCHMARK = "broker hop"
SIZES = {"200 B": 200, "64 KiB": 64 * 1024}
# Requests in flight in the throughput phase; the echo worker's capacity.
WINDOW = 16
TARGET_RATIO = 0.5
TARGET_SMALL_P99_MS = 1.0
READY_TIMEOUT_SECS = 20.0


@dataclass(frozen=True)
class Load:
    """How many requests each phase sends, and its time limit."""

    sequential: int
    windowed: int
    max_secs: float


FULL_LOAD = {"200 B": Load(3000, 20000, 20.0), "64 KiB": Load(1000, 4000, 20.0)}
QUICK_LOAD = {"200 B": Load(300, 1000, 5.0), "64 KiB": Load(100, 300, 5.0)}
SMOKE_LOAD = {"200 B": Load(50, 100, 2.0), "64 KiB": Load(20, 40, 2.0)}


def echo_body(size: int) -> dict:
    return {"kind": "echo", "data": bytes(size)}


# Processes of the brokered path


def run_broker(endpoint: str) -> None:
    from broker.broker import main
    from broker.config import BrokerConfig

    main(BrokerConfig(endpoint=endpoint))


def run_echo_worker(endpoint: str) -> None:
    _serve_echo(endpoint, inline_kinds=frozenset())


def run_inline_echo_worker(endpoint: str) -> None:
    """Serve ``echo`` with ``Worker`` handling it in its socket thread.

    The pipeline handles its status polls this way (``inline_kinds``), so
    this is the hop those requests take.
    """
    _serve_echo(endpoint, inline_kinds=frozenset({"echo"}))


def _serve_echo(endpoint: str, inline_kinds: frozenset[str]) -> None:
    from broker.config import BrokerConfig
    from broker.worker import Worker

    worker = Worker("echo", {"echo": echo_handler}, BrokerConfig(endpoint=endpoint),
                    capacity=WINDOW, inline_kinds=inline_kinds)
    signal.signal(signal.SIGTERM, worker.stop)
    worker.run()


def echo_handler(body: dict, context) -> dict:
    return {"data": body["data"]}


def run_minimal_echo_worker(endpoint: str) -> None:
    """Serve ``echo`` with the worker protocol in one loop, without a thread pool.

    This splits the hop's cost: the broker's share is what the brokered
    path costs with this worker, and ``broker.worker.Worker`` adds the rest.
    It replies with the request body as it came, so it also skips msgpack.
    """
    import os

    from broker import protocol

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    announcement = {"service": "echo", "pid": os.getpid(), "capacity": WINDOW}
    socket.send_multipart([protocol.WORKER_READY, protocol.pack(announcement)])
    running = True

    def stop(*_args):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    next_heartbeat = time.monotonic()
    while running:
        if time.monotonic() >= next_heartbeat:
            socket.send_multipart([protocol.WORKER_HEARTBEAT,
                                   protocol.pack({"activity": []})])
            next_heartbeat = time.monotonic() + 0.5
        if not socket.poll(100):
            continue
        frames = socket.recv_multipart()
        if len(frames) == 3 and frames[0] == protocol.WORKER_REQUEST:
            socket.send_multipart([protocol.WORKER_REPLY, frames[1], frames[2]])
    socket.send_multipart([protocol.WORKER_DISCONNECT])
    socket.close()
    context.term()


def run_broker_client(endpoint: str, loads: dict[str, Load], results) -> None:
    from broker.client import BrokerClient

    client = BrokerClient(endpoint)
    try:
        wait_for_echo_worker(client)
        measured = {}
        for label, load in loads.items():
            body = echo_body(SIZES[label])
            latencies = time_sequential(
                lambda: _checked(client.request("echo", body, timeout_secs=10.0)),
                load)
            rate = time_windowed(
                lambda: client.send("echo", body),
                lambda: _checked(_received(client.receive(10.0))[1]),
                load)
            measured[label] = {"latencies": latencies, "rate": rate}
        results.put(measured)
    except BaseException as error:
        results.put({"error": f"{type(error).__name__}: {error}"})
        raise
    finally:
        client.close()


def wait_for_echo_worker(client) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECS
    while time.monotonic() < deadline:
        workers = client.request("broker", {"kind": "broker.workers"}, 2.0)["workers"]
        if any(worker["service"] == "echo" for worker in workers):
            return
        time.sleep(0.05)
    raise TimeoutError(f"no echo worker announced itself in {READY_TIMEOUT_SECS} s")


def _received(reply):
    if reply is None:
        raise TimeoutError("no echo reply within 10 s")
    return reply


def _checked(reply: dict) -> dict:
    if reply.get("ok") is False or "data" not in reply:
        raise RuntimeError(f"echo request failed: {reply.get('code')} "
                           f"{reply.get('message')}")
    return reply


# Processes of the direct pair


def run_direct_echo(endpoint: str) -> None:
    """Echo every message a DEALER sends until SIGTERM."""
    context = zmq.Context()
    socket = context.socket(zmq.ROUTER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.bind(endpoint)
    running = True

    def stop(*_args):
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        if socket.poll(100):
            socket.send_multipart(socket.recv_multipart())
    socket.close()
    context.term()


def run_direct_client(endpoint: str, loads: dict[str, Load], results) -> None:
    from broker import protocol

    context = zmq.Context()
    socket = context.socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    counter = iter(range(1 << 62))

    def send(body: bytes) -> None:
        socket.send_multipart([str(next(counter)).encode(), body])

    def receive() -> list[bytes]:
        if not socket.poll(10_000):
            raise TimeoutError("no direct echo within 10 s")
        return socket.recv_multipart()

    try:
        measured = {}
        for label, load in loads.items():
            body = protocol.pack(echo_body(SIZES[label]))

            def round_trip(body=body):
                send(body)
                return receive()

            latencies = time_sequential(round_trip, load)
            rate = time_windowed(lambda body=body: send(body), receive, load)
            measured[label] = {"latencies": latencies, "rate": rate}
        results.put(measured)
    except BaseException as error:
        results.put({"error": f"{type(error).__name__}: {error}"})
        raise
    finally:
        socket.close()
        context.term()


# Timing loops shared by both clients


def time_sequential(round_trip, load: Load) -> list[float]:
    """Return the seconds of each of ``load.sequential`` round trips."""
    for _ in range(min(50, load.sequential)):
        round_trip()
    latencies = []
    deadline = time.monotonic() + load.max_secs
    while len(latencies) < load.sequential and time.monotonic() < deadline:
        started = time.perf_counter()
        round_trip()
        latencies.append(time.perf_counter() - started)
    return latencies


def time_windowed(send, receive, load: Load) -> float:
    """Return replies per second with ``WINDOW`` requests kept in flight."""
    deadline = time.monotonic() + load.max_secs
    started = time.perf_counter()
    sent = received = 0
    while sent < min(WINDOW, load.windowed):
        send()
        sent += 1
    while received < sent:
        receive()
        received += 1
        if sent < load.windowed and time.monotonic() < deadline:
            send()
            sent += 1
    return received / (time.perf_counter() - started)


# Running both sides


def measure_brokered(loads: dict[str, Load], worker_target=run_echo_worker) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = get_context("spawn")
    results = context.Queue()
    broker = context.Process(target=run_broker, args=(endpoint,), daemon=True)
    worker = context.Process(target=worker_target, args=(endpoint,), daemon=True)
    client = context.Process(target=run_broker_client, args=(endpoint, loads, results),
                             daemon=True)
    return _run_processes([broker, worker], client, results)


def measure_direct(loads: dict[str, Load]) -> dict:
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    context = get_context("spawn")
    results = context.Queue()
    server = context.Process(target=run_direct_echo, args=(endpoint,), daemon=True)
    client = context.Process(target=run_direct_client, args=(endpoint, loads, results),
                             daemon=True)
    return _run_processes([server], client, results)


def _run_processes(servers: list, client, results) -> dict:
    for process in servers:
        process.start()
        time.sleep(0.2)
    client.start()
    try:
        measured = results.get(timeout=300)
        client.join(30)
    finally:
        for process in [client, *reversed(servers)]:
            if process.is_alive():
                process.terminate()
                process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
    if "error" in measured:
        raise RuntimeError(f"benchmark client failed: {measured['error']}")
    return measured


def run(quick: bool = False, loads: dict[str, Load] | None = None) -> list[Figure]:
    loads = loads or (QUICK_LOAD if quick else FULL_LOAD)
    brokered = measure_brokered(loads)
    minimal = measure_brokered(loads, run_minimal_echo_worker)
    inline = measure_brokered(loads, run_inline_echo_worker)
    direct = measure_direct(loads)
    figures = []
    for label in loads:
        figures.extend(figures_for_size(label, brokered[label], direct[label]))
        figures.append(Figure(
            BENCHMARK, f"{label} messages/s, {WINDOW} in flight, minimal worker",
            minimal[label]["rate"], "msg/s", reference=direct[label]["rate"],
            reference_name="direct pair",
            note="the real broker with a one-loop echo worker in place of "
            "broker.worker.Worker"))
        figures.append(Figure(
            BENCHMARK, f"{label} messages/s, {WINDOW} in flight, inline handler",
            inline[label]["rate"], "msg/s", reference=direct[label]["rate"],
            reference_name="direct pair",
            note="broker.worker.Worker answering the kind in its socket thread, "
            "as the pipeline answers status polls"))
    return figures


def figures_for_size(label: str, brokered: dict, direct: dict) -> list[Figure]:
    details = {"window": WINDOW, "sequential_requests": len(brokered["latencies"])}
    small = SIZES[label] <= 1024
    figures = [
        Figure(BENCHMARK, f"{label} messages/s, {WINDOW} in flight", brokered["rate"],
               "msg/s", reference=direct["rate"], reference_name="direct pair",
               min_ratio=TARGET_RATIO, details=details),
        Figure(BENCHMARK, f"{label} p50 round trip",
               percentile_ms(brokered["latencies"], 50), "ms",
               reference=percentile_ms(direct["latencies"], 50),
               reference_name="direct pair"),
        Figure(BENCHMARK, f"{label} p99 round trip",
               percentile_ms(brokered["latencies"], 99), "ms",
               reference=percentile_ms(direct["latencies"], 99),
               reference_name="direct pair",
               max_value=TARGET_SMALL_P99_MS if small else None),
    ]
    sequential_rate = len(brokered["latencies"]) / sum(brokered["latencies"])
    direct_sequential_rate = len(direct["latencies"]) / sum(direct["latencies"])
    figures.append(Figure(BENCHMARK, f"{label} messages/s, 1 in flight",
                          sequential_rate, "msg/s", reference=direct_sequential_rate,
                          reference_name="direct pair"))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="send about a tenth of the requests")
    arguments = parser.parse_args()
    figures = run(arguments.quick)
    print(format_table(figures))
    write_json(RESULTS_FOLDER / "broker_hop.json",
               {"machine": machine(), "figures": [f.as_dict() for f in figures]})


if __name__ == "__main__":
    main()
