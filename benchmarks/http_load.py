"""Load the HTTP API with concurrent clients on 127.0.0.1.

Two cheap endpoints of the running group are measured: status polls
(``GET /search?identifier=``, handled by the pipeline through the
broker) and ``GET /stats`` (cached for a few seconds by the API). The
reference is a trivial Falcon resource served by the same
``http_api.server.ApiServer`` with the same configuration, so waitress
runs with identical settings. Each of ``CLIENTS`` clients keeps one
HTTP/1.1 connection and sends requests one after another, up to a count
and a time limit. Target: requests per second of at least half the
trivial responder's, with no errors.

This module needs a running, indexed group; ``run_all`` provides one.
"""

from __future__ import annotations

import http.client
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from multiprocessing import get_context
from pathlib import Path

from benchmarks.common import Figure, free_port, percentile_ms

BENCHMARK = "HTTP API"
CLIENTS = 32
# The load generator runs in two processes, so one GIL does not cap it.
LOAD_PROCESSES = 2
TARGET_RATIO = 0.5
FULL_REQUESTS_PER_CLIENT = 250
QUICK_REQUESTS_PER_CLIENT = 30
FULL_MAX_SECS = 20.0
QUICK_MAX_SECS = 5.0
SEARCHES_FOR_IDENTIFIERS = 4
TRIVIAL_PATH = "/trivial"


# The reference server


class TrivialResource:
    def on_get(self, req, resp) -> None:
        resp.media = {"status": "END", "results": []}


def build_trivial_app(config):
    import falcon

    app = falcon.App()
    app.add_route(TRIVIAL_PATH, TrivialResource())
    return app


def serve_trivial(config_path: str, port: int) -> None:
    """Serve the trivial app through ApiServer until the process is terminated."""
    import http_api.server as server_module
    from broker.config import load_config

    config = load_config(Path(config_path), environ={})
    config = replace(config, http=replace(config.http, port=port))
    # ApiServer takes its application from create_app; swapping the
    # function keeps every waitress setting of the real server.
    server_module.create_app = build_trivial_app
    server_module.ApiServer(config).run()


def wait_until_listening(port: int, timeout_secs: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_secs
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", TRIVIAL_PATH)
            connection.getresponse().read()
            connection.close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"trivial responder not listening on port {port}")


# The load generator


def drive_clients(port: int, paths: list[str], clients: int, first_client: int,
                  max_requests: int, max_secs: float) -> dict:
    """Run ``clients`` threads, each sending GET requests for ``paths`` in turn."""
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + max_secs

    def client(number: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine, failures = [], []
        for index in range(max_requests):
            if time.monotonic() >= deadline:
                break
            path = paths[(number + index) % len(paths)]
            started = time.perf_counter()
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as error:
                failures.append(f"{path}: {type(error).__name__}: {error}")
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            mine.append(time.perf_counter() - started)
            if status != 200:
                failures.append(f"{path}: HTTP {status}")
        connection.close()
        with lock:
            latencies.extend(mine)
            errors.extend(failures)

    threads = [threading.Thread(target=client, args=(first_client + offset,))
               for offset in range(clients)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "errors": errors, "started": started,
            "finished": time.monotonic()}


def measure_load(port: int, paths: list[str], quick: bool) -> dict:
    """Return requests per second, latencies and errors of one load run."""
    max_requests = QUICK_REQUESTS_PER_CLIENT if quick else FULL_REQUESTS_PER_CLIENT
    max_secs = QUICK_MAX_SECS if quick else FULL_MAX_SECS
    per_process = CLIENTS // LOAD_PROCESSES
    context = get_context("spawn")
    with ProcessPoolExecutor(LOAD_PROCESSES, mp_context=context) as executor:
        futures = [
            executor.submit(drive_clients, port, paths, per_process,
                            number * per_process, max_requests, max_secs)
            for number in range(LOAD_PROCESSES)
        ]
        parts = [future.result() for future in futures]
    latencies = [value for part in parts for value in part["latencies"]]
    errors = [error for part in parts for error in part["errors"]]
    secs = max(p["finished"] for p in parts) - min(p["started"] for p in parts)
    return {"rate": len(latencies) / secs, "latencies": latencies, "errors": errors}


# The benchmark


def search_identifiers(service, query_images: list[bytes]) -> list[str]:
    """Submit a few searches and return their identifiers to poll."""
    identifiers = []
    for image in query_images[:SEARCHES_FOR_IDENTIFIERS]:
        status, document = service.http("POST", "/search", body=image)
        if status != 200 or not isinstance(document, dict):
            raise RuntimeError(f"POST /search returned HTTP {status}: "
                               f"{document!r:.200}")
        identifiers.append(document["identifier"])
    return identifiers


def run(service, query_images: list[bytes], quick: bool = False) -> list[Figure]:
    """Measure the API of ``service`` beside the trivial responder."""
    identifiers = search_identifiers(service, query_images)
    port = free_port()
    context = get_context("spawn")
    trivial = context.Process(target=serve_trivial,
                              args=(str(service.config_path), port), daemon=True)
    trivial.start()
    try:
        wait_until_listening(port)
        reference = measure_load(port, [TRIVIAL_PATH], quick)
    finally:
        trivial.terminate()
        trivial.join(10)
        if trivial.is_alive():
            trivial.kill()
    api_port = service.config.http.port
    scenarios = {
        "status poll GET /search?identifier=": [
            f"/search?identifier={identifier}" for identifier in identifiers],
        "GET /stats": ["/stats"],
    }
    figures = [_figures_of("trivial responder", reference, None)[0]]
    for name, paths in scenarios.items():
        figures.extend(_figures_of(name, measure_load(api_port, paths, quick),
                                   reference))
    return figures


def _figures_of(name: str, measured: dict, reference: dict | None) -> list[Figure]:
    errors = measured["errors"]
    details = {"clients": CLIENTS, "requests": len(measured["latencies"]),
               "errors": len(errors), "error_samples": errors[:5]}
    note = f"{len(errors)} errors" + (f", first: {errors[0]}" if errors else "")
    if reference is None:
        return [Figure(BENCHMARK, f"{name}, requests/s", measured["rate"], "req/s",
                       note=note, details=details)]
    return [
        Figure(BENCHMARK, f"{name}, requests/s", measured["rate"], "req/s",
               reference=reference["rate"], reference_name="trivial responder",
               min_ratio=TARGET_RATIO, note=note, details=details),
        Figure(BENCHMARK, f"{name}, p99", percentile_ms(measured["latencies"], 99),
               "ms", reference=percentile_ms(reference["latencies"], 99),
               reference_name="trivial responder"),
        Figure(BENCHMARK, f"{name}, errors", float(len(errors)), "", max_value=0),
    ]
