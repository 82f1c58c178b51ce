"""The service on a real socket: the command line, clean stops, size limits over TCP, a free event loop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

import vaekit

pytest.importorskip("fastapi", reason="the serve extra is not installed: pip install 'vaekit[serve]'")
httpx = pytest.importorskip("httpx2", reason="httpx2 (a dev dependency) is needed to talk to the server")

from vaekit.cli import main  # noqa: E402
from vaekit.serve import Explorer, ServeLimits, create_app  # noqa: E402
from vaekit.serve.server import BackgroundServer, is_loopback  # noqa: E402


def test_the_command_serves_on_loopback_until_interrupted(trained_run):
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "vaekit", "serve", str(trained_run), "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert line.startswith("vaekit: serving") and "http://127.0.0.1:" in line, line + process.stderr.read()
        url = line.split(" at ")[1].split(" ")[0]
        info = httpx.get(url + "api/info", timeout=30).json()
        assert info["latent_dim"] == 4 and info["reference"]["source"] == "digits"
        assert httpx.get(url, timeout=30).status_code == 200
    finally:
        process.send_signal(signal.SIGINT)
        code = process.wait(timeout=30)
    assert code == 0, process.stderr.read()


def test_a_taken_port_is_one_line_and_exit_code_2(trained_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(trained_run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"127.0.0.1:{port}" in err and "in use" in err


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "192.168.1.5", "::", "example.org"))


@pytest.fixture(scope="module")
def vae(trained_run):
    return vaekit.load(trained_run)


def test_oversized_bodies_get_their_413_over_tcp_and_the_server_goes_on(vae):
    app = create_app(Explorer(vae, limits=ServeLimits(max_upload_bytes=32 * 1024)))
    with BackgroundServer(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        declared = client.post("/api/encode", files={"file": ("x.png", b"\0" * 2**20, "image/png")})
        assert declared.status_code == 413 and "at most 32768 bytes" in declared.json()["detail"]
        streamed = client.post("/api/decode", content=(b" " * 8192 for _ in range(128)),
                               headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert client.post("/api/decode", json={"z": [[0.0] * 4]}).status_code == 200


def test_kept_alive_connections_answer_without_nagle_delays(vae):
    with BackgroundServer(create_app(Explorer(vae))) as url, httpx.Client(base_url=url, timeout=30) as client:
        times = []
        for _ in range(15):
            started = time.perf_counter()
            assert client.post("/api/decode", json={"z": [[0.0] * 4]}).status_code == 200
            times.append(time.perf_counter() - started)
    # With Nagle's algorithm on, each answer on a reused connection waits ~40 ms for a delayed ACK.
    assert sorted(times)[len(times) // 2] < 0.025, times


def test_inference_does_not_block_the_event_loop(vae):
    explorer = Explorer(vae)
    decode = explorer.decode

    def slow_decode(z, label=None):
        time.sleep(1.5)
        return decode(z, label)

    explorer.decode = slow_decode
    with BackgroundServer(create_app(explorer)) as url:
        slow = {}
        thread = threading.Thread(target=lambda: slow.setdefault(
            "response", httpx.post(url + "api/decode", json={"z": [[0.0] * 4]}, timeout=30)))
        thread.start()
        time.sleep(0.3)  # the decode is now running on the model's thread
        started = time.perf_counter()
        health = httpx.get(url + "api/health", timeout=30)
        answered_in = time.perf_counter() - started
        thread.join(30)
    assert health.json() == {"status": "ok", "pending": 1}
    assert answered_in < 0.5, answered_in
    assert slow["response"].status_code == 200
