"""The dashboard in a real headless Chromium: served by MonitoringServer with a provider holding a SYNTHETIC
(seeded random-walk) equity curve, screenshotted and dumped as rendered DOM.

Set ``DASHBOARD_SCREENSHOT=/some/file.png`` to keep a copy of the screenshot for a human to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trading_core.market.limits import TradingState
from trading_core.monitoring import Alert, LiveMetrics, MonitoringServer

CHROMIUM = next(
    (path for name in ("chromium", "chromium-browser", "google-chrome") if (path := shutil.which(name))), None
)
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no headless browser: none of chromium, chromium-browser, google-chrome is on PATH "
    "(apt-get install -y chromium)",
)

CURVE_DAYS = 120
POSITIONS = {"AAPL": (120, 171.2), "MSFT": (60, 402.9), "JPM": (-40, 189.5), "KO": (300, 60.1)}


def synthetic_status(seed: int = 7) -> dict[str, Any]:
    """A status as the live agent would report it, around a SYNTHETIC equity curve (seeded random walk, not
    real trading results)."""
    rng = np.random.default_rng(seed)
    equity = 100_000.0 * np.cumprod(1.0 + rng.normal(0.0006, 0.009, CURVE_DAYS))
    start = datetime(2024, 1, 2, 21, tzinfo=UTC)
    curve = [{"t": start + timedelta(days=i), "equity": value} for i, value in enumerate(equity)]
    positions = [
        {"symbol": symbol, "qty": qty, "price": price, "value": qty * price}
        for symbol, (qty, price) in POSITIONS.items()
    ]
    invested = sum(position["value"] for position in positions)
    alert = Alert(
        "breaker_trip", "warning", "circuit breaker tripped: trading state REDUCING", curve[-3]["t"]
    )
    return {
        "loop_alive": True,
        "session_id": "synthetic-demo",
        "model_version": "3",
        "model": "rl_trading_agent v3 (champion)",
        "shadow": "shadow: rl_trading_agent v4 (challenger)",
        "session_status": "running",
        "stop_reason": None,
        "broker": "alpaca-paper",
        "trading_state": TradingState.REDUCING,
        "kill_switch": False,
        "equity_curve": curve,
        "positions": positions,
        "cash": float(equity[-1] - invested),
        "equity": float(equity[-1]),
        "drawdown": float(1.0 - equity[-1] / equity.max()),
        "var_95": 0.0142,
        "last_bar_time": curve[-1]["t"],
        "recent_alerts": [alert.to_payload("synthetic-demo")],
        "recent_interventions": [
            {"time": curve[-2]["t"], "rule": "max_weight", "symbol": "MSFT", "reason": "weight 0.31 > 0.25"}
        ],
    }


@pytest.fixture(scope="module")
def dashboard_url() -> Iterator[str]:
    status = synthetic_status()
    with MonitoringServer(lambda: status, LiveMetrics(), lambda: True) as server:
        yield server.url + "/dashboard"


def run_chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}",  # a private profile: runs never share state
        "--virtual-time-budget=5000",
        "--window-size=1280,900",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_screenshot_is_not_blank(dashboard_url: str, tmp_path: Path) -> None:
    screenshot = tmp_path / "dashboard.png"
    result = run_chromium(tmp_path, f"--screenshot={screenshot}", dashboard_url)
    assert screenshot.exists(), (
        f"chromium wrote no screenshot (rc {result.returncode}): {result.stderr[-2000:]}"
    )
    try:
        from PIL import Image

        pixels = np.asarray(Image.open(screenshot).convert("RGB"), dtype=float)
    except ImportError:
        from matplotlib import image

        pixels = image.imread(screenshot)[..., :3] * 255.0
    assert pixels.shape == (900, 1280, 3)
    assert pixels.std() > 10.0  # a blank or single-colour page has (almost) no variance
    distinct_colours = np.unique(pixels.reshape(-1, 3).astype(np.uint8), axis=0)
    assert len(distinct_colours) > 50  # text, chart line and cards, not a flat error page
    if keep := os.environ.get("DASHBOARD_SCREENSHOT"):
        shutil.copyfile(screenshot, keep)


def test_rendered_dom_has_the_equity_path_and_position_rows(dashboard_url: str, tmp_path: Path) -> None:
    result = run_chromium(tmp_path, "--dump-dom", dashboard_url)
    dom = result.stdout
    assert "<html" in dom, f"no DOM from chromium (rc {result.returncode}): {result.stderr[-2000:]}"

    path = re.search(r'<path id="equity-path" d="([^"]*)"', dom)
    assert path is not None, "equity SVG path missing"
    commands = re.findall(r"[ML]", path.group(1))
    assert commands[0] == "M" and len(commands) == CURVE_DAYS  # one point per day of the synthetic curve

    rows = re.findall(r'<tr class="position-row" data-symbol="([A-Z]+)">', dom)
    assert sorted(rows) == sorted(POSITIONS)
    assert 'id="trading-state">REDUCING<' in dom
    assert 'class="alert-row"' in dom and "circuit breaker tripped" in dom
    assert "weight 0.31 &gt; 0.25" in dom
    assert 'id="connection" class="ok"' in dom
    assert 'id="model">rl_trading_agent v3 (champion)<' in dom
    assert 'id="shadow">shadow: rl_trading_agent v4 (challenger)<' in dom
    assert 'id="session-status" class="status-running">running<' in dom
    assert '<div id="ended" hidden=""></div>' in dom  # no banner while the session runs


def finished_status() -> dict[str, Any]:
    """The synthetic session after its replay ended: the loop is gone, its final state stays."""
    return {
        **synthetic_status(),
        "loop_alive": False,
        "trading_state": TradingState.ACTIVE,
        "session_status": "finished",
        "stop_reason": "the bars ran out",
        "model": "rl_trading_agent v1 (challenger)",
        "shadow": "no shadow: v1, which holds 'challenger', is the one trading",
    }


def test_an_ended_session_shows_its_final_state_and_says_it_ended(tmp_path: Path) -> None:
    status = finished_status()
    with MonitoringServer(lambda: status, LiveMetrics(), lambda: False) as server:
        dom = run_chromium(tmp_path, "--dump-dom", server.url + "/dashboard").stdout
    assert 'id="session-status" class="status-finished">finished<' in dom
    assert (
        '<div id="ended">Session finished (the bars ran out): the final state, kept up until the command is '
        "stopped (Ctrl-C).</div>"
    ) in dom
    assert 'id="model">rl_trading_agent v1 (challenger)<' in dom
    assert "no shadow: v1, which holds 'challenger', is the one trading" in dom
    assert f'id="equity">{"$" + format(round(status["equity"]), ",")}<' in dom  # the final equity
    assert sorted(re.findall(r'<tr class="position-row" data-symbol="([A-Z]+)">', dom)) == sorted(POSITIONS)
    assert "circuit breaker tripped" in dom  # the alerts of the session stay listed
