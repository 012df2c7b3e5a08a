"""Serving `/metrics`: a small HTTP server for the library, an ASGI app for the service."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from prometheus_client import CollectorRegistry, make_asgi_app, start_http_server


class MetricsServer:
    """A running `/metrics` HTTP server (a daemon thread); `close()` stops it and frees the port."""

    def __init__(self, server: Any, thread: threading.Thread, host: str) -> None:
        self._server = server
        self._thread = thread
        self.host = host
        self.port: int = int(server.server_port)
        self._closed = False

    @property
    def url(self) -> str:
        """The address to scrape, e.g. `http://127.0.0.1:9464/metrics`."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop serving and release the socket; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout_s)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def serve_metrics(
    registry: CollectorRegistry, host: str = "127.0.0.1", port: int = 0
) -> MetricsServer:
    """Serve `registry` at http://host:port/metrics until `.close()`; port 0 picks a free one."""
    server, thread = start_http_server(port, addr=host, registry=registry)
    return MetricsServer(server, thread, host)


class MetricsASGIApp:
    """ASGI app answering with `registry` in Prometheus' text format.

    A class instance, not a function, on purpose: Starlette's `Route` treats a plain function as
    a request handler but an instance as an ASGI app, so it answers at exactly `/metrics`
    (`app.mount` would redirect `/metrics` to `/metrics/`)::

        from starlette.routing import Route
        app.router.routes.append(Route("/metrics", make_metrics_app(registry), methods=["GET"]))
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._app = make_asgi_app(registry)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self._app(scope, receive, send)


def make_metrics_app(registry: CollectorRegistry) -> MetricsASGIApp:
    """The ASGI app for `/metrics` on `registry` (see `MetricsASGIApp`)."""
    return MetricsASGIApp(registry)
