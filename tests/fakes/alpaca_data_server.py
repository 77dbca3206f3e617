"""A local HTTP server speaking the subset of Alpaca's market-data API that alpaca-py's bars client uses.

It serves real bars from a frame, pages them ``page_size`` bars at a time through ``next_page_token``, checks
the API-key headers, and can answer the first requests with injected HTTP errors (429, 5xx).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pandas as pd


class FakeAlpacaDataServer:
    """Serve ``GET /v2/stocks/bars`` from a long-format bars frame on a loopback port."""

    def __init__(
        self, bars: pd.DataFrame, page_size: int = 250, api_key: str = "test-key", secret: str = "test-secret"
    ):
        self.bars = bars.sort_values(["tic", "date"]).reset_index(drop=True)
        self.page_size = page_size
        self.api_key, self.secret = api_key, secret
        self.injected_errors: deque[int] = deque()
        self.requests: list[dict[str, list[str]]] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> FakeAlpacaDataServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _page(self, query: dict[str, list[str]]) -> dict:
        symbols = query["symbols"][0].split(",")
        start = pd.Timestamp(query["start"][0]).tz_localize(None) if "start" in query else None
        end = pd.Timestamp(query["end"][0]).tz_localize(None) if "end" in query else None
        rows = self.bars[self.bars["tic"].isin(symbols)]
        dates = pd.to_datetime(rows["date"])
        if start is not None:
            rows = rows[dates >= start.normalize()]
            dates = pd.to_datetime(rows["date"])
        if end is not None:
            rows = rows[dates <= end]
        offset = int(query.get("page_token", ["0"])[0] or 0)
        page = rows.iloc[offset : offset + self.page_size]
        bars: dict[str, list[dict]] = {}
        for row in page.itertuples(index=False):
            timestamp = pd.Timestamp(row.date).tz_localize("America/New_York").tz_convert("UTC")
            bars.setdefault(row.tic, []).append(
                {
                    "t": timestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "o": row.open,
                    "h": row.high,
                    "l": row.low,
                    "c": row.close,
                    "v": row.volume,
                    "n": 1000,
                    "vw": (row.high + row.low + row.close) / 3,
                }
            )
        next_offset = offset + self.page_size
        return {"bars": bars, "next_page_token": str(next_offset) if next_offset < len(rows) else None}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                return

            def _reply(self, status: int, body: dict) -> None:
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parsed = urlparse(self.path)
                query = parse_qs(parsed.query)
                server.requests.append(query)
                if (
                    self.headers.get("APCA-API-KEY-ID") != server.api_key
                    or self.headers.get("APCA-API-SECRET-KEY") != server.secret
                ):
                    self._reply(401, {"message": "unauthorized"})
                    return
                if server.injected_errors:
                    status = server.injected_errors.popleft()
                    self._reply(status, {"code": status, "message": f"injected {status}"})
                    return
                if parsed.path != "/v2/stocks/bars":
                    self._reply(404, {"message": f"no route {parsed.path}"})
                    return
                self._reply(200, server._page(query))

        return Handler
