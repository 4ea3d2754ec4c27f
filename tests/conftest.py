"""Fixtures for the tooling tests."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pytest
from fakerepo import FakeRepo, pristine_wheel

CORE_WHEEL = "apache_airflow_core-3.1.3-py3-none-any.whl"


@pytest.fixture(scope="session")
def wheel() -> Path:
    return pristine_wheel()


@pytest.fixture
def fake_repo(tmp_path, wheel) -> FakeRepo:
    return FakeRepo(tmp_path / "repo", wheel)



@pytest.fixture(scope="session")
def celery_wheel() -> Path:
    return pristine_wheel("provider('celery')")


@pytest.fixture
def local_index(wheel, tmp_path):
    """A PEP 691 index on loopback that serves the real wheel and counts downloads."""
    served = {"downloads": 0, "listings": 0}
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.rstrip("/") == "/simple/apache-airflow-core":
                served["listings"] += 1
                body = json.dumps({"files": [{"filename": CORE_WHEEL, "url": f"http://127.0.0.1:{port}/files/{CORE_WHEEL}",
                                              "hashes": {"sha256": digest}}]}).encode()
            elif self.path == f"/files/{CORE_WHEEL}":
                served["downloads"] += 1
                body = wheel.read_bytes()
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}/simple", served
    server.shutdown()
