"""A warm ``vaekit`` command for tests that run many short commands (tests/test_docs.py).

Starting ``vaekit`` costs seconds of imports (PyTorch, scikit-learn, matplotlib) before any work; the guide's
blocks run dozens of commands. ``WarmCli`` starts one server process that imports vaekit once, and writes a
``vaekit`` script that hands its arguments, working directory, environment and standard streams to the server
over a Unix socket. The server forks a child per command, which runs ``vaekit.cli.main`` exactly as the console
script does (same streams, same exit code) and exits. The server itself never runs PyTorch, so each child
starts with a clean thread pool.

Where Unix sockets with file-descriptor passing are missing, ``WarmCli.start`` returns ``None`` and the tests
use the installed console script.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

PRELOAD = ["torch", "numpy", "vaekit", "vaekit.cli", "vaekit.api", "vaekit.anomaly", "vaekit.anomaly.explain",
           "vaekit.anomaly.regret", "vaekit.evaluation", "vaekit.generation.latent", "vaekit.export", "vaekit.plots",
           "vaekit.training.trainer", "vaekit.serve", "sklearn.datasets", "sklearn.mixture", "sklearn.metrics",
           "sklearn.decomposition",
           "PIL.Image", "matplotlib.figure", "matplotlib.backends.backend_agg", "tqdm.auto", "onnx", "onnxruntime",
           "onnxscript"]

CLIENT = """\
#!{python} -S
# Written by tests/warm_cli.py: runs `vaekit` in a process forked from a server that has vaekit imported.
import json, os, socket, struct, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
s.connect({socket_path!r})
header = json.dumps({{"argv": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}}).encode()
socket.send_fds(s, [header], [0, 1, 2])
reply = s.recv(4)
sys.exit(struct.unpack("i", reply)[0] if len(reply) == 4 else 70)
"""


def _run_child(header: dict, fds: list[int]) -> None:
    """In the forked child: become the client's `vaekit` process and exit with main()'s code."""
    code = 1
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(header["cwd"])
        os.environ.clear()
        os.environ.update(header["env"])
        sys.argv = ["vaekit", *header["argv"]]
        import torch

        threads = os.environ.get("OMP_NUM_THREADS")
        if threads and threads.isdigit():
            torch.set_num_threads(int(threads))
        from vaekit.cli import main

        code = main(header["argv"])
    except SystemExit as exc:  # argparse: --help, usage errors
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - a traceback, as the console script would print it
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001
                pass
        os._exit(code)


def _answer(conn: socket.socket, pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    try:
        conn.send(struct.pack("i", code if code >= 0 else 128 - code))
    finally:
        conn.close()


def serve(socket_path: str) -> None:
    """The server: import once, then fork a child per connection."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from vaekit.cli import build_parser

    build_parser()  # imports every command module
    server = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server.bind(socket_path)
    server.listen(8)
    print("ready", flush=True)
    while True:
        conn, _ = server.accept()
        message, fds, _, _ = socket.recv_fds(conn, 1 << 22, 3)
        header = json.loads(message)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            server.close()
            conn.close()
            _run_child(header, fds)
        for fd in fds:
            os.close(fd)
        threading.Thread(target=_answer, args=(conn, pid), daemon=True).start()


class WarmCli:
    """The server process and the directory holding its ``vaekit`` script (put it first on PATH)."""

    def __init__(self, directory: Path, process: subprocess.Popen) -> None:
        self.bin = directory / "bin"
        self.process = process

    @classmethod
    def start(cls, directory: Path, env: dict[str, str], timeout: float = 120.0) -> "WarmCli | None":
        if not hasattr(socket, "AF_UNIX") or not hasattr(socket, "send_fds") or not hasattr(socket, "SOCK_SEQPACKET"):
            return None
        socket_path = str(directory / "vaekit.sock")
        if len(socket_path) > 100:
            return None
        process = subprocess.Popen([sys.executable, __file__, socket_path], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, text=True)
        started = time.monotonic()
        line = process.stdout.readline()
        if line.strip() != "ready" or time.monotonic() - started > timeout:
            process.kill()
            return None
        bin_dir = directory / "bin"
        bin_dir.mkdir()
        script = bin_dir / "vaekit"
        script.write_text(CLIENT.format(python=sys.executable, socket_path=socket_path), encoding="utf-8")
        script.chmod(0o755)
        return cls(directory, process)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


if __name__ == "__main__":
    serve(sys.argv[1])
