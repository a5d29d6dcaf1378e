"""Bad HTTP input against the real service: every case gets a clear 4xx.

The raw requests of the b18 cases are sent over a plain socket to the
service's own ``/query`` and ``/search`` paths; bad image files go to
``POST /search``. Each response must be a 4xx with a JSON error code and
message, and the service must keep answering afterwards.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.service import PROJECT_ROOT, RunningService

CASES = PROJECT_ROOT.parent / "shared" / "cases"
RAW_REQUESTS = sorted(CASES.glob("b18_*.http")) if CASES.is_dir() else []
BAD_IMAGES = {
    "b08_empty_0_bytes.jpg": "IMAGE_MISSING",
    "b08_html_page_named.jpg": "NOT_AN_IMAGE",
    "b08_json_error_named.png": "NOT_AN_IMAGE",
    "b08_xml_access_denied_named.jpg": "NOT_AN_IMAGE",
    "b08_svg_named.png": "NOT_AN_IMAGE",
    "b06_baseline_truncated_60pct.jpg": "TRUNCATED_IMAGE",
    "b06_png_truncated_70pct.png": "TRUNCATED_IMAGE",
    "b07_png_header_only_30000x30000.png": "QUERY_IMAGE_TOO_BIG",
    "b07_jpeg_sof_claims_65500x65500.jpg": "QUERY_IMAGE_TOO_BIG",
    "b07_gif_screen_claims_65535x65535.gif": "QUERY_IMAGE_TOO_BIG",
}

pytestmark = pytest.mark.skipif(not CASES.is_dir(), reason="cases not found")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    running = RunningService(tmp_path_factory.mktemp("input"), indexers=1)
    yield running
    running.close()


def send_raw(port: int, request: bytes, timeout: float = 40.0) -> tuple[int, dict]:
    """Send raw bytes and read the whole response; return (status, JSON body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer = b"".join(chunks)
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


@pytest.mark.parametrize("path", ["/query", "/search"])
@pytest.mark.parametrize("case", RAW_REQUESTS, ids=lambda p: p.stem)
def test_raw_request_gets_clear_4xx(service, case, path):
    request = case.read_bytes().replace(b"/v1/match", path.encode(), 1)
    port = service.config.http.port

    started = time.monotonic()
    status, body = send_raw(port, request)

    assert 400 <= status < 500, body
    assert body["error"], body
    assert body["message"], body
    assert time.monotonic() - started < 30
    assert service.http("GET", "/stats")[0] == 200


@pytest.mark.parametrize("name, code", sorted(BAD_IMAGES.items()))
def test_bad_image_gets_clear_4xx(service, name, code):
    status, body = service.http("POST", "/search", (CASES / name).read_bytes())

    assert 400 <= status < 500, body
    assert body["error"] == code
    assert body["message"]


def test_oversized_upload_rejected(service):
    limit = service.config.http.max_upload_bytes

    status, body = service.http("POST", "/search", b"\xff" * (limit + 1))

    assert status == 413
    assert body["error"] == "QUERY_IMAGE_TOO_BIG"


def test_multipart_without_file_rejected(service):
    boundary = "b0undary"
    form = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\n"
            f"hello\r\n--{boundary}--\r\n").encode()

    status, body = service.http(
        "POST", "/search", form,
        {"Content-Type": f"multipart/form-data; boundary={boundary}"})

    assert status == 400
    assert body["error"] == "IMAGE_MISSING"


@pytest.mark.parametrize("path, code", [
    ("/search", "IDENTIFIER_MISSING"),
    ("/search?identifier=", "IDENTIFIER_MISSING"),
    ("/search?identifier=00ff", "NO_SUCH_REQUEST"),
    ("/search?identifier=a&identifier=b", "INVALID_PARAMETER"),
])
def test_bad_identifier_rejected(service, path, code):
    status, body = service.http("GET", path)

    assert 400 <= status < 500
    assert body["error"] == code


def test_unknown_account_rejected(service):
    image = (CASES / "b00_reference_artwork.png").read_bytes()

    unknown = service.http("POST", "/search?account_name=nobody_at_all", image)
    invalid = service.http("POST", "/search?account_name=not%20valid!", image)

    assert unknown[0] == 404
    assert unknown[1]["error"] == "TWITTER_ACCOUNT_NOT_INDEXED"
    assert invalid[0] == 400
    assert invalid[1]["error"] == "INVALID_TWITTER_ACCOUNT"


def test_unknown_path_is_json_404(service):
    status, body = service.http("GET", "/nope")

    assert status == 404
    assert body["error"] == "NOT_FOUND"


def test_wrong_method_is_json_405(service):
    status, body = service.http("DELETE", "/stats")

    assert status == 405
    assert body["error"] == "METHOD_NOT_ALLOWED"
