"""The sample app (apps/hello), run as the image runs it, without a container: it answers its
version (built into the image as APP_VERSION) on `/health` and `/`. Its builds and releases on
the lab: tests/lab/test_lab_delivery.py."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests
from fixtures_delivery import HELLO

from lab.processes import free_port

pytestmark = pytest.mark.slow  # the app's server, a process of its own


def _get_json(url: str, timeout_s: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return requests.get(url, timeout=2).json()
        except requests.RequestException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_the_sample_app_answers_its_version_without_a_container(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        ["python3", str(HELLO / "app.py")],
        env={"PORT": str(port), "HOST": "127.0.0.1", "APP_VERSION": "abc123"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert _get_json(f"http://127.0.0.1:{port}/health") == {
            "status": "ok",
            "app": "hello",
            "version": "abc123",
        }
        root = requests.get(f"http://127.0.0.1:{port}/", timeout=2)
        assert root.text == "hello from abc123\n" and root.headers["X-App-Version"] == "abc123"
        assert requests.get(f"http://127.0.0.1:{port}/nope", timeout=2).status_code == 404
    finally:
        proc.terminate()
        assert proc.wait(timeout=5) == 0  # SIGTERM: a clean stop
