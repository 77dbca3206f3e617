"""The promotion gate: out-of-sample backtest figures against thresholds, for one run or a candidate over seeds."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from trading_core.evaluation.metrics import PerformanceMetrics


@dataclass(frozen=True)
class PromotionThresholds:
    """Limits a candidate must meet on the test period to become ``champion``.

    :param min_sharpe: lowest acceptable annualised Sharpe ratio
    :param max_drawdown: largest acceptable peak-to-trough loss (fraction)
    :param max_var_95: largest acceptable one-day historical VaR95 (fraction of the portfolio)
    :param must_beat_buy_and_hold: require a higher Sharpe than equal-weight buy-and-hold
    """

    min_sharpe: float = 1.0
    max_drawdown: float = 0.15
    max_var_95: float = 0.02
    must_beat_buy_and_hold: bool = True


@dataclass(frozen=True)
class GateResult:
    """One criterion of the gate with the measured value and the limit."""

    name: str
    passed: bool
    value: float
    threshold: float
    description: str


def evaluate_gate(
    metrics: PerformanceMetrics, benchmark: PerformanceMetrics, thresholds: PromotionThresholds
) -> list[GateResult]:
    """Every gate criterion, evaluated on out-of-sample metrics after costs."""
    results = [
        GateResult(
            "min_sharpe",
            metrics.sharpe >= thresholds.min_sharpe,
            metrics.sharpe,
            thresholds.min_sharpe,
            f"Sharpe {metrics.sharpe:.2f} vs required >= {thresholds.min_sharpe:.2f}",
        ),
        GateResult(
            "max_drawdown",
            metrics.max_drawdown <= thresholds.max_drawdown,
            metrics.max_drawdown,
            thresholds.max_drawdown,
            f"max drawdown {metrics.max_drawdown:.1%} vs allowed <= {thresholds.max_drawdown:.1%}",
        ),
        GateResult(
            "max_var_95",
            metrics.var_95 <= thresholds.max_var_95,
            metrics.var_95,
            thresholds.max_var_95,
            f"VaR95 {metrics.var_95:.2%} vs allowed <= {thresholds.max_var_95:.2%}",
        ),
    ]
    if thresholds.must_beat_buy_and_hold:
        results.append(
            GateResult(
                "beats_buy_and_hold",
                metrics.sharpe > benchmark.sharpe,
                metrics.sharpe,
                benchmark.sharpe,
                f"Sharpe {metrics.sharpe:.2f} vs equal-weight buy-and-hold {benchmark.sharpe:.2f}",
            )
        )
    return results


@dataclass(frozen=True)
class CandidateThresholds:
    """The gate on a candidate judged over several training runs (seeds).

    The limits shared with the registered candidate's gate default to :class:`PromotionThresholds`; the seed
    sweep's gate on the registered candidate defaults to ``min_p25_sharpe`` and ``min_deflated_sharpe`` here.

    :param min_sharpe: lowest acceptable out-of-sample Sharpe of the run validation picks (the registered
        candidate's ``min_sharpe``)
    :param min_p25_sharpe: lowest acceptable 25th percentile over runs of the out-of-sample Sharpe
    :param max_drawdown: largest acceptable out-of-sample max drawdown of any run
    :param min_deflated_sharpe: lowest acceptable deflated Sharpe ratio of the representative run
    :param must_beat_buy_and_hold: require a median Sharpe above equal-weight buy-and-hold
    """

    min_sharpe: float = PromotionThresholds.min_sharpe
    min_p25_sharpe: float = 0.5
    max_drawdown: float = PromotionThresholds.max_drawdown
    min_deflated_sharpe: float = 0.5
    must_beat_buy_and_hold: bool = PromotionThresholds.must_beat_buy_and_hold


@dataclass(frozen=True)
class CandidateVerdict:
    """A candidate's out-of-sample evidence and the gate's verdict on it."""

    name: str
    runs: int
    sharpe: float
    p25_sharpe: float
    median_sharpe: float
    worst_drawdown: float
    deflated_sharpe: float
    gate: tuple[GateResult, ...]

    @property
    def passed(self) -> bool:
        return all(result.passed for result in self.gate)

    def row(self) -> dict[str, object]:
        failed = [result.name for result in self.gate if not result.passed]
        return {
            "candidate": self.name,
            "runs": self.runs,
            "sharpe": self.sharpe,
            "p25_sharpe": self.p25_sharpe,
            "median_sharpe": self.median_sharpe,
            "worst_drawdown": self.worst_drawdown,
            "deflated_sharpe": self.deflated_sharpe,
            "verdict": "pass" if self.passed else "fail: " + ", ".join(failed),
        }


def judge_candidate(
    name: str,
    test_sharpes: Sequence[float],
    test_drawdowns: Sequence[float],
    representative_sharpe: float,
    deflated_sharpe: float,
    benchmark_sharpe: float,
    thresholds: CandidateThresholds,
) -> CandidateVerdict:
    """The gate over every run of one candidate (one algorithm over seeds, or an ensemble): the figures of
    :func:`judge_figures` summarised from each run's.

    :param test_sharpes: out-of-sample Sharpe ratio of each run
    :param test_drawdowns: out-of-sample max drawdown of each run
    :param representative_sharpe: out-of-sample Sharpe of the run validation picks as the representative
    :param deflated_sharpe: DSR of that representative run
    :param benchmark_sharpe: equal-weight buy-and-hold Sharpe ratio over the same period
    """
    sharpes = np.asarray(test_sharpes, dtype=np.float64)
    if sharpes.size == 0 or sharpes.size != len(test_drawdowns):
        raise ValueError(f"{name}: need one drawdown per Sharpe ratio and at least one run")
    return judge_figures(
        name,
        runs=int(sharpes.size),
        sharpe=representative_sharpe,
        p25_sharpe=float(np.quantile(sharpes, 0.25)),
        median_sharpe=float(np.median(sharpes)),
        worst_drawdown=float(np.max(test_drawdowns)),
        deflated_sharpe=deflated_sharpe,
        benchmark_sharpe=benchmark_sharpe,
        thresholds=thresholds,
    )


def judge_figures(
    name: str,
    *,
    runs: int,
    sharpe: float,
    p25_sharpe: float,
    median_sharpe: float,
    worst_drawdown: float,
    deflated_sharpe: float,
    benchmark_sharpe: float,
    thresholds: CandidateThresholds,
) -> CandidateVerdict:
    """The gate on a candidate's out-of-sample figures over its runs (e.g. a leaderboard row).

    :param runs: how many runs the figures summarise
    :param sharpe: Sharpe of the run validation picks as the representative
    :param p25_sharpe: 25th percentile over runs of the Sharpe
    :param median_sharpe: median over runs of the Sharpe
    :param worst_drawdown: largest max drawdown of any run
    :param deflated_sharpe: DSR of the representative run
    :param benchmark_sharpe: equal-weight buy-and-hold Sharpe ratio over the same period
    """
    p25, median = float(p25_sharpe), float(median_sharpe)
    worst = float(worst_drawdown) + 0.0  # + 0.0: a flat curve's -0.0 reads as 0.0
    gate = [
        GateResult(
            "min_sharpe",
            sharpe >= thresholds.min_sharpe,
            sharpe,
            thresholds.min_sharpe,
            f"Sharpe {sharpe:.2f} vs required >= {thresholds.min_sharpe:.2f}",
        ),
        GateResult(
            "p25_sharpe",
            p25 >= thresholds.min_p25_sharpe,
            p25,
            thresholds.min_p25_sharpe,
            f"25th percentile Sharpe over {runs} runs {p25:.2f} vs required >= {thresholds.min_p25_sharpe:.2f}",
        ),
        GateResult(
            "max_drawdown",
            worst <= thresholds.max_drawdown,
            worst,
            thresholds.max_drawdown,
            f"worst max drawdown {worst:.1%} vs allowed <= {thresholds.max_drawdown:.1%}",
        ),
        GateResult(
            "deflated_sharpe",
            deflated_sharpe >= thresholds.min_deflated_sharpe,
            deflated_sharpe,
            thresholds.min_deflated_sharpe,
            f"deflated Sharpe {deflated_sharpe:.2f} vs required >= {thresholds.min_deflated_sharpe:.2f}",
        ),
    ]
    if thresholds.must_beat_buy_and_hold:
        gate.append(
            GateResult(
                "beats_buy_and_hold",
                median > benchmark_sharpe,
                median,
                benchmark_sharpe,
                f"median Sharpe {median:.2f} vs equal-weight buy-and-hold {benchmark_sharpe:.2f}",
            )
        )
    return CandidateVerdict(
        name, int(runs), float(sharpe), p25, median, worst, float(deflated_sharpe), tuple(gate)
    )


def yardstick_gate(
    candidate: str,
    p25_sharpe: float,
    runs: int,
    benchmark_sharpe: float,
    allocator: str | None,
    allocator_sharpe: float | None,
) -> list[GateResult]:
    """The registered candidate against the yardsticks on test Sharpe at its runs' 25th percentile: equal-weight
    buy-and-hold and the classical allocator validation picked (when the leaderboard has one).

    :param p25_sharpe: 25th percentile over the candidate's runs (seeds) of the test Sharpe
    :param runs: how many runs that percentile is over
    """
    results = [
        GateResult(
            "p25_beats_buy_and_hold",
            p25_sharpe > benchmark_sharpe,
            p25_sharpe,
            benchmark_sharpe,
            f"{candidate}: 25th percentile test Sharpe over {runs} runs {p25_sharpe:.2f} vs equal-weight "
            f"buy-and-hold {benchmark_sharpe:.2f}",
        )
    ]
    if allocator is not None and allocator_sharpe is not None:
        results.append(
            GateResult(
                "p25_beats_allocator",
                p25_sharpe > allocator_sharpe,
                p25_sharpe,
                allocator_sharpe,
                f"{candidate}: 25th percentile test Sharpe over {runs} runs {p25_sharpe:.2f} vs allocator "
                f"{allocator} (validation's pick) {allocator_sharpe:.2f}",
            )
        )
    return results


GATE_RECORD_TAG_PREFIX = "gate."


@dataclass(frozen=True)
class GateRecord:
    """One gate step's verdict on one registered version, bound to the pipeline run that reached it.

    Promotion trusts a verdict only when it names the version being promoted and the run promoting it: with
    runs that overlap, a step could otherwise have judged another run's version.

    :param step: the gate step that judged (e.g. ``backtest``)
    :param version: the registry version it judged
    :param run_id: the pipeline run it judged in
    :param failed: names of the criteria that failed (none: the step passed)
    """

    step: str
    version: str
    run_id: str
    failed: tuple[str, ...] = ()

    @property
    def passed(self) -> bool:
        return not self.failed

    @classmethod
    def of(cls, step: str, version: str, run_id: str, gate: Sequence[GateResult]) -> GateRecord:
        """The record of a step's gate results."""
        return cls(step, version, run_id, tuple(result.name for result in gate if not result.passed))

    @property
    def tag_key(self) -> str:
        """The registry tag holding this record on its version."""
        return GATE_RECORD_TAG_PREFIX + self.step

    def tag_value(self) -> str:
        return json.dumps({"version": self.version, "run_id": self.run_id, "failed": list(self.failed)})

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> list[GateRecord]:
        """Every gate record among a version's tags; a record that does not parse is refused by name."""
        records = []
        for key, value in sorted(tags.items()):
            if not key.startswith(GATE_RECORD_TAG_PREFIX):
                continue
            try:
                fields = json.loads(value)
                records.append(
                    cls(
                        key.removeprefix(GATE_RECORD_TAG_PREFIX),
                        str(fields["version"]),
                        str(fields["run_id"]),
                        tuple(str(name) for name in fields["failed"]),
                    )
                )
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(
                    f"gate record tag {key!r} does not parse ({error}): {value[:200]!r}"
                ) from None
        return records


def binding_problems(
    version: str,
    run_id: str,
    registered_by: str | None,
    records: Sequence[GateRecord],
    required: Sequence[str],
) -> list[str]:
    """Why the records do not bind ``version`` to run ``run_id``: another run registered it, a required step left
    no record, or a record names another version or run. Empty when every record is of that version and run.

    :param registered_by: the run that registered the version (``None``: unknown)
    :param records: the gate records read (several per step allowed, e.g. the step's output and the registry's)
    :param required: the steps whose records the promotion needs
    """
    problems = []
    if registered_by != run_id:
        problems.append(
            f"version {version} was registered by run {registered_by or 'unknown'}, not this run {run_id}"
        )
    for step in required:
        if not any(record.step == step for record in records):
            problems.append(f"no {step} gate record for version {version}")
    for record in records:
        if record.version != version:
            problems.append(f"the {record.step} gate record is of version {record.version}, not {version}")
        elif record.run_id != run_id:
            problems.append(
                f"the {record.step} gate record of version {version} is from run {record.run_id}, not this run {run_id}"
            )
    # One problem per line, in the order found: a step read twice (output and registry) is named once.
    return list(dict.fromkeys(problems))


def promotion_refusal(
    version: str,
    run_id: str,
    registered_by: str | None,
    records: Sequence[GateRecord],
    required: Sequence[str],
) -> str | None:
    """Why run ``run_id`` may not promote ``version``, or ``None`` when it may.

    It may when it registered the version itself and every required step left a passing record of that version
    from that run; every record read must name both, so one stale or foreign record refuses the promotion
    (:func:`binding_problems`), and so does a bound record of a failed step.
    """
    reasons = binding_problems(version, run_id, registered_by, records, required)
    reasons += [
        f"{record.step} failed {', '.join(record.failed)}"
        for record in records
        if record.version == version and record.run_id == run_id and not record.passed
    ]
    return "; ".join(dict.fromkeys(reasons)) or None


def failed_criteria(step: str, gate: Sequence[GateResult]) -> list[str]:
    """Each criterion a gate step failed, as one line with its figure and threshold."""
    return [f"{step} {result.name}: {result.description}" for result in gate if not result.passed]


# How the pipeline chooses the one version it gates (trading_core.evaluation.leaderboard.Leaderboard.pick).
SELECTION_RULE = (
    "Only the registered candidate is gated and can be promoted: validation picks it among the RL agents (the "
    "trained recipe and every zoo agent) by the 25th percentile over seeds of the validation Sharpe, then the "
    "median. Test figures never choose, so a zoo agent that passes the gate on test is promoted only if "
    "validation picked it. Ensembles fit their weights and choices on validation, so they have no unseen "
    "validation figures to be picked on: they are registered apart with alias challenger and never promoted."
)


def promotion_note(
    candidate: str, kind: str, pick: str | None, validation_p25: float, pick_validation_p25: float
) -> str:
    """Why a candidate was or was not the one gated for promotion (:data:`SELECTION_RULE`).

    :param kind: the candidate's leaderboard kind (``agent``, ``ensemble``, ...)
    :param pick: the candidate validation picked to register
    :param validation_p25: the candidate's 25th-percentile validation Sharpe over seeds
    :param pick_validation_p25: the pick's
    """
    if candidate == pick:
        return "registered as validation's pick: promoted only when its own gate steps pass"
    if kind == "ensemble":
        return "not registrable: fit on validation, so it has no unseen validation figures; challenger only"
    if pick is None:
        return "not registered: validation picked no candidate"
    return (
        f"not registered: validation picked {pick} (p25 validation Sharpe {pick_validation_p25:.2f} vs "
        f"{validation_p25:.2f})"
    )
