"""Load test of ``vaekit serve`` on loopback: many concurrent requests, oversized and malformed ones mixed in.

Starts ``vaekit serve RUN --port 0`` as a separate process on 127.0.0.1, sends every kind of request
once (warm-up), notes the server's resident memory (RSS), then keeps ``--concurrency`` clients busy for
``--duration`` seconds with a seeded random mix of valid requests and bad ones (oversized bodies, both
declared and streamed; wrong field; not an image; a decompression bomb; NaN; wrong shape; too many
samples; bad JSON; strings; path-like values; ...). Checks that the service stays up, answers every
valid request with 2xx and every bad one with the expected 4xx (never 5xx, never a dropped
connection), and that its RSS after the warm-up does not keep growing. Reports requests/second and
p50/p99 latency per kind of request, prints a table and writes JSON; exits 1 when a check fails.

    python benchmarks/serve_load.py runs/fm20 --duration 60 --json benchmarks/results/serve_load.json
    python benchmarks/serve_load.py --quick            # 5 s on a small digits model trained on the spot

Traffic goes to 127.0.0.1 only, and the run is bounded in time (``--duration``) and in count
(``--max-requests``). The client runs on the same machine as the server and shares its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from common import machine  # benchmarks/common.py

try:
    import httpx2 as httpx
except ImportError:  # pragma: no cover - the older name of the same client
    import httpx

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 60.0
DEFAULT_QUICK_RUN = Path("runs/bench-serve-digits")


# --- the requests --------------------------------------------------------------------------------

@dataclass
class RequestKind:
    """One kind of request: how to send it, what answer is right, and how often it is picked."""

    name: str
    method: str
    path: str
    expect: tuple[int, ...]          # acceptable status codes
    weight: float
    valid: bool
    json: Any = None
    content: bytes | None = None
    files: dict | None = None
    headers: dict = field(default_factory=dict)
    stream_bytes: int = 0            # send this many bytes as a chunked body (no Content-Length)


def png_bytes(image: np.ndarray) -> bytes:
    """An example (channels, h, w) in [0, 1] as a PNG file."""
    from PIL import Image

    pixels = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels[0], "L") if pixels.shape[0] == 1 else Image.fromarray(pixels.transpose(1, 2, 0), "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def png_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims a huge image: a decoder that trusted it would allocate ~900 MB."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096))
            + chunk(b"IEND", b""))


def request_mix(info: dict, example: np.ndarray) -> list[RequestKind]:
    """The valid and bad requests of the load test for a model described by ``/api/info``."""
    latent_dim, limits = info["latent_dim"], info["limits"]
    rng = np.random.default_rng(0)
    z8 = rng.normal(size=(8, latent_dim)).round(4).tolist()
    image = info["kind"] == "image"
    upload = (("x.png", png_bytes(example), "image/png") if image
              else ("x.json", json.dumps(example.reshape(-1).tolist()).encode(), "application/json"))
    json_example = ("x.json", json.dumps(example.tolist()).encode(), "application/json")
    oversize = limits["max_upload_bytes"] + 512 * 1024
    kinds = [
        RequestKind("health", "GET", "/api/health", (200,), 1.0, True),
        RequestKind("info", "GET", "/api/info", (200,), 0.5, True),
        RequestKind("page", "GET", "/", (200,), 0.3, True),
        RequestKind("sample n=16", "POST", "/api/sample", (200,), 1.0, True, json={"n": 16}),
        RequestKind("decode 8", "POST", "/api/decode", (200,), 2.0, True, json={"z": z8}),
        RequestKind("interpolate 16", "POST", "/api/interpolate", (200,), 1.0, True,
                    json={"z_start": z8[0], "z_end": z8[1], "steps": 16, "method": "spherical"}),
        RequestKind("encode (upload)", "POST", "/api/encode", (200,), 1.0, True, files={"file": upload}),
        RequestKind("reconstruct (JSON)", "POST", "/api/reconstruct", (200,), 0.5, True, files={"file": json_example}),
        RequestKind("analyze (upload)", "POST", "/api/analyze", (200,), 1.0, True, files={"file": upload}),
        RequestKind("score (upload)", "POST", "/api/score", (200,), 0.5, True, files={"file": upload}),
        # --- bad requests, each with the answer it must get ----------------------------------------
        RequestKind("BAD oversized (declared)", "POST", "/api/analyze", (413,), 0.1, False,
                    files={"file": ("big.png", b"\0" * oversize, "image/png")}),
        RequestKind("BAD oversized (streamed)", "POST", "/api/decode", (413,), 0.1, False,
                    stream_bytes=oversize, headers={"content-type": "application/json"}),
        RequestKind("BAD wrong field", "POST", "/api/analyze", (422,), 0.3, False, files={"image": upload}),
        RequestKind("BAD text, not a file", "POST", "/api/encode", (422,), 0.2, False, content=b"file=%2Fetc%2Fpasswd",
                    headers={"content-type": "application/x-www-form-urlencoded"}),
        RequestKind("BAD not an image", "POST", "/api/analyze", (415,), 0.3, False,
                    files={"file": ("x.png", os.urandom(2048), "image/png")}),
        RequestKind("BAD truncated PNG", "POST", "/api/analyze", (422,), 0.2, False,
                    files={"file": ("x.png", png_bytes(example)[:60], "image/png")}) if image else None,
        RequestKind("BAD image bomb", "POST", "/api/analyze", (413,), 0.2, False,
                    files={"file": ("bomb.png", png_bomb(), "image/png")}) if image else None,
        RequestKind("BAD NaN", "POST", "/api/decode", (422,), 0.3, False,
                    content=json.dumps({"z": [[float("nan")] * latent_dim]}).encode(),
                    headers={"content-type": "application/json"}),
        RequestKind("BAD wrong shape", "POST", "/api/decode", (422,), 0.3, False, json={"z": [[0.0] * (latent_dim + 1)]}),
        RequestKind("BAD too many samples", "POST", "/api/sample", (422,), 0.3, False,
                    json={"n": limits["max_samples"] + 1}),
        RequestKind("BAD JSON syntax", "POST", "/api/decode", (422,), 0.3, False, content=b'{"z": [[0, 1,',
                    headers={"content-type": "application/json"}),
        RequestKind("BAD dtype (strings)", "POST", "/api/decode", (422,), 0.3, False, json={"z": [["a"] * latent_dim]}),
        RequestKind("BAD path-like value", "POST", "/api/interpolate", (422,), 0.2, False,
                    json={"z_start": "/etc/passwd", "z_end": z8[1], "method": "../../etc/passwd"}),
        RequestKind("BAD NaN in upload", "POST", "/api/encode", (422,), 0.2, False,
                    files={"file": ("x.json", b"[" + b"NaN," * (example.size - 1) + b"NaN]", "application/json")}),
        RequestKind("BAD deep nesting", "POST", "/api/decode", (400, 422), 0.1, False, content=b"[" * 100000,
                    headers={"content-type": "application/json"}),
        RequestKind("BAD path traversal", "GET", "/static/..%2f..%2f..%2fetc%2fpasswd", (404,), 0.1, False),
    ]
    return [k for k in kinds if k is not None]


# --- the server process ----------------------------------------------------------------------------

class ServerProcess:
    """``vaekit serve RUN --port 0`` in a child process; ``url`` once it listens."""

    def __init__(self, run: str, extra: list[str]) -> None:
        command = [sys.executable, "-m", "vaekit", "serve", run, "--host", HOST, "--port", "0", *extra]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.url = self._wait_for_url()

    def _drain_stderr(self) -> None:
        for line in self.process.stderr:
            self.stderr_lines.append(line.rstrip())

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                if self.process.poll() is not None:
                    raise RuntimeError(f"vaekit serve exited with {self.process.returncode}: "
                                       + " | ".join(self.stderr_lines[-5:]))
                continue
            match = re.search(r"at (http://\S+/) ", line)
            if match:
                return match.group(1).rstrip("/")
        self.stop()
        raise RuntimeError("vaekit serve did not start in time")

    def rss(self) -> int:
        import psutil

        return psutil.Process(self.process.pid).memory_info().rss

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


class RssSampler(threading.Thread):
    """Samples the server's RSS every ``interval`` seconds: (seconds since start, bytes)."""

    def __init__(self, server: ServerProcess, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.server, self.interval = server, interval
        self.samples: list[tuple[float, int]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self.stopped.is_set():
            try:
                self.samples.append((time.monotonic() - start, self.server.rss()))
            except Exception:  # the process ended; the report says so
                return
            self.stopped.wait(self.interval)


# --- the load ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    kind: str
    status: int | None        # None: no answer (connection error or timeout)
    seconds: float
    error: str | None = None


async def send(client: "httpx.AsyncClient", kind: RequestKind) -> Outcome:
    started = time.perf_counter()
    try:
        if kind.stream_bytes:
            async def body():
                sent = 0
                while sent < kind.stream_bytes:
                    chunk = b" " * min(65536, kind.stream_bytes - sent)
                    sent += len(chunk)
                    yield chunk
            response = await client.request(kind.method, kind.path, content=body(), headers=kind.headers)
        else:
            response = await client.request(kind.method, kind.path, json=kind.json, content=kind.content,
                                            files=kind.files, headers=kind.headers)
        await response.aread()
        return Outcome(kind.name, response.status_code, time.perf_counter() - started)
    except httpx.HTTPError as err:
        return Outcome(kind.name, None, time.perf_counter() - started, f"{type(err).__name__}: {err}")


async def load(url: str, kinds: list[RequestKind], duration: float, concurrency: int, max_requests: int,
               seed: int) -> list[Outcome]:
    """``concurrency`` clients sending a seeded random mix of ``kinds`` until ``duration`` or ``max_requests``."""
    outcomes: list[Outcome] = []
    rng = random.Random(seed)
    weights = [k.weight for k in kinds]
    deadline = time.monotonic() + duration
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        async def client_loop() -> None:
            while time.monotonic() < deadline and len(outcomes) < max_requests:
                outcomes.append(await send(client, rng.choices(kinds, weights)[0]))
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
    return outcomes


async def warm_up(url: str, kinds: list[RequestKind], rounds: int = 2) -> list[Outcome]:
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
        return [await send(client, kind) for _ in range(rounds) for kind in kinds]


# --- report ------------------------------------------------------------------------------------------

def summarize(kinds: list[RequestKind], outcomes: list[Outcome], duration: float) -> list[dict]:
    rows = []
    for kind in kinds:
        mine = [o for o in outcomes if o.kind == kind.name]
        if not mine:
            continue
        ms = np.array([o.seconds * 1000 for o in mine])
        statuses: dict[str, int] = {}
        for o in mine:
            statuses[str(o.status)] = statuses.get(str(o.status), 0) + 1
        rows.append({"kind": kind.name, "valid": kind.valid, "expected": list(kind.expect), "count": len(mine),
                     "per_second": len(mine) / duration, "p50_ms": float(np.percentile(ms, 50)),
                     "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max()), "statuses": statuses,
                     "unexpected": sum(o.status not in kind.expect for o in mine),
                     "errors": sorted({o.error for o in mine if o.error})[:3]})
    return rows


def rss_report(samples: list[tuple[float, int]], baseline: int) -> dict:
    mib = 2**20
    values = np.array([s[1] for s in samples], dtype=np.float64)
    times = np.array([s[0] for s in samples])
    half = times >= times[-1] / 2 if len(times) else np.array([], dtype=bool)
    slope = float(np.polyfit(times[half], values[half], 1)[0]) * 60 / mib if half.sum() >= 5 else None
    return {"baseline_mib": baseline / mib, "end_mib": float(values[-1]) / mib, "peak_mib": float(values.max()) / mib,
            "growth_mib": float(values[-1] - baseline) / mib, "peak_growth_mib": float(values.max() - baseline) / mib,
            "second_half_slope_mib_per_min": slope, "samples": len(values)}


def print_report(result: dict) -> None:
    s = result["settings"]
    print(f"vaekit serve load test: {s['run']}, {s['duration_s']:.0f} s, {s['concurrency']} concurrent clients, "
          f"on {result['machine']['cpu']} ({result['machine']['cores']} cores, client and server together)")
    print(f"{'request':<26}{'count':>7}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  statuses")
    for r in result["rows"]:
        flag = "" if r["unexpected"] == 0 else f"  <-- {r['unexpected']} unexpected (want {r['expected']})"
        statuses = ", ".join(f"{k}: {v}" for k, v in sorted(r["statuses"].items()))
        print(f"{r['kind']:<26}{r['count']:>7}{r['per_second']:>8.1f}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}"
              f"{r['max_ms']:>9.1f}  {statuses}{flag}")
    t = result["totals"]
    print(f"{'all':<26}{t['count']:>7}{t['per_second']:>8.1f}{t['p50_ms']:>9.1f}{t['p99_ms']:>9.1f}")
    m = result["rss"]
    slope = m["second_half_slope_mib_per_min"]
    print(f"server RSS: {m['baseline_mib']:.1f} MiB after warm-up, {m['end_mib']:.1f} MiB at the end, peak "
          f"{m['peak_mib']:.1f} MiB (growth {m['growth_mib']:+.1f} MiB; second-half trend "
          f"{'n/a' if slope is None else f'{slope:+.1f} MiB/min'})")
    for name, ok in result["checks"].items():
        print(f"check {'PASS' if ok else 'FAIL'}  {name}")


def run_load_test(run: str, *, duration: float = 30.0, concurrency: int = 16, seed: int = 0,
                  max_requests: int = 200_000, max_rss_growth_mib: float = 64.0,
                  server_args: list[str] | None = None) -> dict:
    """Start the server, warm up, load it, stop it; return the report (``checks`` says what passed)."""
    import vaekit
    from vaekit.cli.common import load_run_data_or_own

    vae = vaekit.load(run)
    example = load_run_data_or_own(None, vae, run)[0][0]
    server = ServerProcess(run, ["--reference-size", "300", *(server_args or [])])
    try:
        info = httpx.get(server.url + "/api/info", timeout=REQUEST_TIMEOUT_S).json()
        kinds = request_mix(info, example)
        warm = asyncio.run(warm_up(server.url, kinds))
        baseline = server.rss()
        sampler = RssSampler(server)
        sampler.start()
        started = time.monotonic()
        outcomes = asyncio.run(load(server.url, kinds, duration, concurrency, max_requests, seed))
        elapsed = time.monotonic() - started
        sampler.stopped.set()
        sampler.join()
        alive_after = server.alive() and httpx.get(server.url + "/api/health", timeout=10).status_code == 200
    finally:
        exit_code = server.stop()
    rows = summarize(kinds, outcomes, elapsed)
    all_ms = np.array([o.seconds * 1000 for o in outcomes])
    valid_names = {k.name for k in kinds if k.valid}
    rss = rss_report(sampler.samples, baseline)
    checks = {
        "the server stayed up and answers /api/health": bool(alive_after),
        "every valid request got 2xx": all(r["unexpected"] == 0 for r in rows if r["kind"] in valid_names),
        "every bad request got its 4xx": all(r["unexpected"] == 0 for r in rows if r["kind"] not in valid_names),
        "no 5xx answer": not any(o.status is not None and o.status >= 500 for o in outcomes + warm),
        "no dropped connection or timeout": not any(o.status is None for o in outcomes + warm),
        f"RSS grew by at most {max_rss_growth_mib:g} MiB after the warm-up": rss["peak_growth_mib"] <= max_rss_growth_mib,
        "warm-up answered every request as expected": all(
            o.status in next(k.expect for k in kinds if k.name == o.kind) for o in warm),
    }
    return {
        "settings": {"run": run, "duration_s": elapsed, "concurrency": concurrency, "seed": seed,
                     "max_requests": max_requests, "limits": info["limits"], "server_args": server_args or []},
        "machine": {**machine(), "http_client": f"{httpx.__name__} {httpx.__version__}"},
        "rows": rows,
        "totals": {"count": len(outcomes), "per_second": len(outcomes) / elapsed,
                   "valid_per_second": sum(o.kind in valid_names for o in outcomes) / elapsed,
                   "p50_ms": float(np.percentile(all_ms, 50)), "p99_ms": float(np.percentile(all_ms, 99))},
        "rss": rss,
        "rss_samples": [(round(t, 2), b) for t, b in sampler.samples[::5]],
        "server_exit_code": exit_code,
        "server_stderr": server.stderr_lines[-20:],
        "checks": {name: bool(ok) for name, ok in checks.items()},
        "passed": bool(all(checks.values())),
    }


def quick_run() -> str:
    """A small digits model for ``--quick`` without a RUN (trained once, kept in runs/)."""
    if not (DEFAULT_QUICK_RUN / "model.safetensors").is_file():
        import vaekit

        vaekit.VAE(latent_dim=8, hidden=(128,), epochs=10, seed=0, device="cpu").fit(
            vaekit.load_dataset("digits"), run_dir=DEFAULT_QUICK_RUN)
    return str(DEFAULT_QUICK_RUN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", help="run directory (default with --quick: a small digits model)")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--max-requests", type=int, default=200_000, help="stop after this many requests")
    parser.add_argument("--max-rss-growth-mb", type=float, default=64.0,
                        help="fail when the server's RSS grows more than this after the warm-up (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="5 seconds, 8 clients")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    args = parser.parse_args(argv)
    if args.run is None and not args.quick:
        parser.error("name a RUN, or use --quick")
    run = args.run or quick_run()
    duration, concurrency = (5.0, 8) if args.quick else (args.duration, args.concurrency)
    result = run_load_test(run, duration=duration, concurrency=concurrency, seed=args.seed,
                           max_requests=args.max_requests, max_rss_growth_mib=args.max_rss_growth_mb)
    print_report(result)
    if args.json:
        from vaekit.fileio import atomic_write_json

        atomic_write_json(args.json, result)
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
