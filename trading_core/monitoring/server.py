"""A small threaded HTTP server for the live agent: Prometheus metrics, health probes, status API and dashboard.

Endpoints (GET, and HEAD without a body):

- ``/metrics``: Prometheus text exposition of :class:`~trading_core.monitoring.live_metrics.LiveMetrics`;
- ``/healthz``: liveness, 200 ``{"status": "ok"}`` while the status provider reports ``loop_alive: true`` (the
  trading loop thread is alive), else 503 with the reason (a provider that does not report it, or raises, fails);
- ``/readyz``: readiness, 200 when ``ready()`` holds (model loaded, broker reachable, data fresh), else 503 with the
  reason; ``ready`` may return a bool or a ``(ready, reason)`` pair;
- ``/api/status``: the provider's status dict as JSON (see :class:`StatusPayload`); NaN and infinities become
  ``null`` because browsers' ``JSON.parse`` rejects them, datetimes become ISO 8601 text, enums their name;
- ``/`` and ``/dashboard``: the self-contained dashboard page (``dashboard.html``, no external resources).

The server runs on a daemon thread; each request on its own thread, so a slow scrape never blocks a probe. It
binds to 127.0.0.1 by default: expose it further only behind a proxy that adds authentication.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import Any, TypedDict
from urllib.parse import urlsplit

import numpy as np

from trading_core.monitoring.live_metrics import LiveMetrics

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
HTML_CONTENT_TYPE = "text/html; charset=utf-8"
# The dashboard may only talk to this server: no CDN, no external script, style, font or image.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

Readiness = bool | tuple[bool, str]


class StatusPayload(TypedDict, total=False):
    """Keys the dashboard reads from ``/api/status`` (all optional; ``loop_alive`` drives ``/healthz``)."""

    loop_alive: bool
    session_id: str
    model_version: str
    model: str  # "<name> v<k> (<alias>)"; the dashboard shows "v<model_version>" without it
    shadow: str  # "shadow: <name> v<k> (<alias>)" or "no shadow: <why>"
    session_status: str  # running, finished, stopped or killed: an ended session shows its final state
    stop_reason: str
    broker: str
    trading_state: str
    kill_switch: bool
    equity_curve: list[dict[str, Any]]  # [{"t": ISO time or epoch seconds, "equity": float}]
    positions: list[dict[str, Any]]  # [{"symbol", "qty", "price", "value"}]
    cash: float
    equity: float
    drawdown: float
    var_95: float
    last_bar_time: str
    recent_alerts: list[dict[str, Any]]  # Alert.to_payload() dicts
    recent_interventions: list[dict[str, Any]]  # e.g. {"time", "rule", "symbol", "reason"}


def to_jsonable(value: Any) -> Any:
    """``value`` with every part turned into plain JSON types (see the module docstring for the conventions).

    :param value: a status value (dicts, lists, numpy scalars and arrays, datetimes, enums, ...)
    """
    if isinstance(value, Enum):  # before int: IntEnums such as TradingState show their name
        return value.name
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float | np.floating | Decimal):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, datetime | date):
        return None if type(value).__name__ == "NaTType" else value.isoformat()
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, list | tuple | set | frozenset):
        return [to_jsonable(item) for item in value]
    return str(value)


def load_dashboard_html() -> bytes:
    """The dashboard page shipped as package data."""
    return files("trading_core.monitoring").joinpath("dashboard.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    monitor: MonitoringServer


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "TradingMonitor/1.0"

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def log_message(self, format: str, *args: Any) -> None:
        # Scrapes and probes arrive every few seconds: keep them out of the agent's log unless debugging.
        logger.debug("%s - %s", self.address_string(), format % args)

    def _respond(self, send_body: bool) -> None:
        # Exact paths only: the dashboard fetches the relative "api/status", which a trailing slash would move.
        path = urlsplit(self.path).path
        try:
            status, content_type, body, headers = self.server.monitor.route(path)
        except Exception:
            logger.exception("monitoring endpoint %s failed", path)
            status, content_type, headers = HTTPStatus.INTERNAL_SERVER_ERROR, JSON_CONTENT_TYPE, {}
            body = b'{"error": "internal error"}'
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:
            self.wfile.write(body)


def _json(status: int, payload: Any) -> tuple[int, str, bytes, dict[str, str]]:
    return status, JSON_CONTENT_TYPE, json.dumps(to_jsonable(payload), allow_nan=False).encode(), {}


class MonitoringServer:
    """HTTP monitoring endpoints of one live agent; use as a context manager or call :meth:`start`/:meth:`stop`.

    :param status_provider: returns the current status dict (:class:`StatusPayload`); called on every
        ``/api/status`` and ``/healthz`` request, from server threads, so it must be thread-safe and quick
    :param metrics: the agent's metrics, served at ``/metrics``
    :param ready: readiness check, ``bool`` or ``(bool, reason)``; called on every ``/readyz`` request
    :param host: address to bind to
    :param port: port to bind to; 0 picks a free one (read it from :attr:`url`)
    """

    def __init__(
        self,
        status_provider: Callable[[], Mapping[str, Any]],
        metrics: LiveMetrics,
        ready: Callable[[], Readiness],
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.status_provider = status_provider
        self.metrics = metrics
        self.ready = ready
        self.host, self.port = host, port
        self._dashboard = load_dashboard_html()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:54321``."""
        if self._server is None:
            raise RuntimeError("the monitoring server is not running")
        host, port = self._server.server_address[:2]
        # A wildcard bind is reachable locally through the loopback address.
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}"

    def start(self) -> MonitoringServer:
        """Bind and serve on a daemon thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the monitoring server is already running")
        server = _Server((self.host, self.port), _Handler)
        server.monitor = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="monitoring-server", daemon=True
        )
        self._thread.start()
        logger.info("monitoring server listening on %s", self.url)
        return self

    def stop(self) -> None:
        """Stop serving and release the port (no-op when not running)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    def __enter__(self) -> MonitoringServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def route(self, path: str) -> tuple[int, str, bytes, dict[str, str]]:
        """Status code, content type, body and extra headers of a GET on ``path``.

        :param path: request path without query string
        """
        if path == "/metrics":
            return HTTPStatus.OK, self.metrics.content_type, self.metrics.exposition(), {}
        if path == "/healthz":
            return self._health()
        if path == "/readyz":
            return self._readiness()
        if path == "/api/status":
            return _json(HTTPStatus.OK, self.status_provider())
        if path in ("/", "/dashboard", "/dashboard.html"):
            return (
                HTTPStatus.OK,
                HTML_CONTENT_TYPE,
                self._dashboard,
                {"Content-Security-Policy": DASHBOARD_CSP},
            )
        return _json(HTTPStatus.NOT_FOUND, {"error": f"no such endpoint: {path}"})

    def _health(self) -> tuple[int, str, bytes, dict[str, str]]:
        try:
            alive = self.status_provider().get("loop_alive")
        except Exception as error:
            logger.exception("status provider failed during the liveness probe")
            return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "reason": type(error).__name__})
        if alive is True:
            return _json(HTTPStatus.OK, {"status": "ok"})
        reason = (
            "status provider does not report loop_alive" if alive is None else "trading loop is not alive"
        )
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "error", "reason": reason})

    def _readiness(self) -> tuple[int, str, bytes, dict[str, str]]:
        try:
            answer = self.ready()
        except Exception as error:
            logger.exception("readiness check failed")
            return _json(
                HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not ready", "reason": type(error).__name__}
            )
        is_ready, reason = answer if isinstance(answer, tuple) else (bool(answer), "")
        if is_ready:
            return _json(HTTPStatus.OK, {"status": "ready"})
        return _json(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "not ready", "reason": reason or "not ready"})
