"""Running the app with uvicorn in a background thread: the caller learns the bound port (``port=0`` picks a free
one) and stops the server by itself (:meth:`ServerThread.stop`)."""

from __future__ import annotations

import threading
import time

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ServerThread:
    """A uvicorn server for ``app`` on ``host:port`` in a daemon thread."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning") -> None:
        import uvicorn

        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, access_log=False, lifespan="on")
        self.server = uvicorn.Server(config)
        self.host = host
        self._thread = threading.Thread(target=self.server.run, name="vlmo-serve", daemon=True)

    def start(self, timeout: float = 60.0) -> ServerThread:
        """Start and wait until the socket is bound (raises ``RuntimeError`` when it fails to start in time)."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start on {self.host}")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def wait(self) -> None:
        """Block until the server stops (Ctrl+C in the calling thread stops it)."""
        try:
            while self._thread.is_alive():
                self._thread.join(0.5)
        except KeyboardInterrupt:
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
