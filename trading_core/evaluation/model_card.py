"""A registered agent's model card and its registry description, written from recorded facts and gate checks.

The facts (data, periods, features, costs, risk limits) are fixed when the version is backtested; the gate's
checks arrive step by step (backtest, stress tests, seed sweep), so card and description are rendered again
after every step from everything recorded so far.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from trading_core.evaluation.promotion import GateResult

# Run metrics a description and a card headline, in this order, with their formats.
KEY_METRICS = {
    "test_sharpe": "{:.2f}",
    "test_total_return": "{:.1%}",
    "test_max_drawdown": "{:.1%}",
    "test_buy_and_hold_sharpe": "{:.2f}",
    "test_buy_and_hold_total_return": "{:.1%}",
    "test_turnover": "{:.2f}",
    "test_cost_drag": "{:.2%}",
    "test_total_cost": "{:,.0f}",
    "stress_worst_max_drawdown": "{:.1%}",
    "seed_sweep_test_sharpe_p25": "{:.2f}",
    "deflated_sharpe": "{:.2f}",
}


@dataclass(frozen=True)
class GateCheck:
    """One recorded check of a gate step on a version."""

    step: str
    result: GateResult

    def row(self) -> dict[str, object]:
        return {
            "step": self.step,
            "check": self.result.name,
            "passed": self.result.passed,
            "value": self.result.value,
            "threshold": self.result.threshold,
            "description": self.result.description,
        }


def verdict(checks: Sequence[GateCheck], steps_expected: Sequence[str] = ()) -> str:
    """One line: passed, rejected (naming each failed check) or pending (steps not yet recorded)."""
    if not checks:
        return "gate pending: no check recorded yet"
    failed = [c for c in checks if not c.result.passed]
    if failed:
        reasons = "; ".join(f"{c.step}/{c.result.name}: {c.result.description}" for c in failed)
        return f"REJECTED: {len(failed)} of {len(checks)} gate checks failed ({reasons})"
    pending = [s for s in steps_expected if s not in {c.step for c in checks}]
    if pending:
        return f"passing so far: {len(checks)} of {len(checks)} checks passed, pending {', '.join(pending)}"
    return f"PASSED: all {len(checks)} gate checks passed"


def key_metrics(metrics: Mapping[str, float]) -> dict[str, str]:
    """The key metrics present in a run's metrics, formatted."""
    return {name: fmt.format(metrics[name]) for name, fmt in KEY_METRICS.items() if name in metrics}


def _table(rows: Sequence[Mapping[str, object]]) -> str:
    if not rows:
        return "_none_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def version_description(
    checks: Sequence[GateCheck], metrics: Mapping[str, float], steps_expected: Sequence[str] = ()
) -> str:
    """The registry description of a version: the gate's verdict and the key test metrics (Markdown)."""
    figures = key_metrics(metrics)
    lines = [f"**{verdict(checks, steps_expected)}**", ""]
    lines += [f"- {name}: {value}" for name, value in figures.items()]
    lines += [
        "",
        "Full record: `evaluation/promotion_gate.json`; model card: `model_card.md` (run artifacts).",
    ]
    return "\n".join(lines)


def model_card_markdown(
    facts: Mapping[str, object],
    checks: Sequence[GateCheck],
    metrics: Mapping[str, float],
    steps_expected: Sequence[str] = (),
) -> str:
    """The model card: what the agent is, what it was trained and tested on, its costs and risk limits, its
    out-of-sample figures and every gate check.

    :param facts: ``model``, ``algorithm``, ``data``, ``periods``, ``tickers``, ``features``, ``costs`` and
        ``risk_limits`` as recorded when the version was backtested (missing ones read "not recorded")
    """

    def fact(key: str) -> object:
        return facts.get(key, "not recorded")

    periods = facts.get("periods") or {}
    costs = facts.get("costs") or {}
    risk = facts.get("risk_limits")
    features = facts.get("features") or []
    sections = [
        f"# Model card: {fact('model')}",
        "",
        f"**Gate:** {verdict(checks, steps_expected)}",
        "",
        "## Model",
        f"- algorithm: {fact('algorithm')} (candidate {fact('candidate')}, seed {fact('seed')})",
        f"- forecaster observed: {fact('forecaster')}",
        "## Data",
        f"- source: {fact('data')}",
        f"- tickers: {', '.join(map(str, facts.get('tickers') or [])) or 'not recorded'}",
        f"- data sha256: {fact('data_sha256')}",
        *[f"- {name}: {span}" for name, span in dict(periods).items()],
        "## Features",
        f"{len(features)} per-asset features after cash, closes and holdings: "
        + (", ".join(map(str, features)) or "not recorded"),
        "## Costs and fills",
        *([f"- {name}: {value}" for name, value in dict(costs).items()] or ["- not recorded"]),
        "## Risk limits",
        *(
            [f"- {name}: {value}" for name, value in dict(risk).items()]
            if isinstance(risk, Mapping)
            else [f"- {risk if risk is not None else 'off'}"]
        ),
        "## Out-of-sample figures (test period, after costs)",
        _table([{"metric": k, "value": v} for k, v in key_metrics(metrics).items()]),
        "## Promotion gate (every check)",
        _table([c.row() for c in checks]),
        "",
    ]
    return "\n".join(sections)
