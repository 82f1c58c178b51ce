"""Running the service on uvicorn: the listening socket, connection limits, a clean stop on Ctrl-C."""

from __future__ import annotations

import errno
import socket
from typing import Any

from ..errors import ConfigError
from .security import is_loopback

__all__ = ["BackgroundServer", "bind_socket", "is_loopback", "make_server", "run", "url_of"]


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one), or a one-line error saying why not."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"the port must lie in 0..65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ConfigError(f"cannot listen on {host}: {err.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets. Without it small answers on a
    # kept-alive connection wait ~40 ms for the client's delayed ACK (Nagle's algorithm).
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise ConfigError(f"cannot listen on {host}:{port}: the port is in use; pick another with --port") from None
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def make_server(app: Any, *, max_connections: int, access_log: bool = False, log_level: str = "warning"):
    """A ``uvicorn.Server`` for ``app``: at most ``max_connections`` open connections and requests (more get 503)."""
    import uvicorn

    config = uvicorn.Config(app, log_level=log_level, access_log=access_log, limit_concurrency=max_connections,
                            timeout_keep_alive=5, server_header=False, ws="none", lifespan="on")
    return uvicorn.Server(config)


def run(app: Any, sock: socket.socket, *, max_connections: int, access_log: bool = False) -> None:
    """Serve ``app`` on an already bound socket until Ctrl-C or SIGTERM."""
    make_server(app, max_connections=max_connections, access_log=access_log).run(sockets=[sock])


class BackgroundServer:
    """The service on a background thread, for notebooks and tests: ``with BackgroundServer(app) as url: ...``.

    Listens on ``host:port`` (port 0 picks a free one); ``stop()`` (or leaving the ``with`` block) shuts it down.
    A ``host`` beyond loopback needs an app built with a token (``create_app(..., token=...)``), or ``no_auth=True``.
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, max_connections: int = 64,
                 no_auth: bool = False) -> None:
        self.app, self.host, self.port, self.max_connections = app, host, port, max_connections
        access = getattr(getattr(app, "state", None), "access", None)
        if access is not None and access.token is None and not no_auth and not is_loopback(host):
            raise ConfigError(f"listening on {host} opens the service to other machines, so it needs a token: build "
                              "the app with create_app(explorer, token=...), or pass no_auth=True")
        self.url: str | None = None
        self._server = None
        self._thread = None

    def start(self, timeout: float = 30.0) -> str:
        import threading
        import time

        sock = bind_socket(self.host, self.port)
        self.url = url_of(sock)
        self._server = make_server(self.app, max_connections=self.max_connections)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True,
                                        name="vaekit-serve")
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
