"""Pre-trade risk manager for B parallel portfolios, modelled on NautilusTrader's ``RiskEngine``.

Every step an agent proposes target holdings in shares ``[B, N]``; :meth:`RiskManager.review` approves or reduces
them before any order leaves, applying the rules of :data:`RULES` in order, and every reduced target carries its
rule and a reason with numbers. :meth:`RiskManager.on_bar` runs after each bar close and moves every portfolio
between the explicit trading states of :class:`TradingState`.

Conventions:

- Equity is the pre-trade mark at the decision prices, ``cash + sum(holdings * prices)``; every limit is a
  fraction of it (the cost buffer is a reserve for costs, not a cost, so it does not lower the equity).
- Limits hold for the approved post-trade portfolio, not only for the order: a position that grew past a limit
  because prices moved is cut back even when the agent did not ask to trade it.
- Portfolios whose equity is zero or negative cannot be measured against fractional limits; they are treated
  like HALTED ones that may still sell: long positions may only shrink, shorts are held, nothing is bought.
  This ``no_equity`` rule is a solvency guard, not a limit, so it stays on under ``RiskLimits.disabled()``.
- Whatever order the rules run in, the approved portfolio meets all of them at once: the cash rule scales buys
  only, which can unbalance a hedged book, so a last ``final_scale`` step scales the whole target down until the
  exposure, weight, VaR and cash limits hold together. That is always possible when a flat portfolio is
  affordable (positive equity and ``cost_buffer * short notional <= (1 + max_margin) * equity``); otherwise the
  manager does its best and flattens. Limits hold to a relative 1e-12 (rounding).

Everything in :meth:`~RiskManager.review` and :meth:`~RiskManager.on_bar` is vectorised over portfolios and
assets; the only Python loops run over the fixed sequence of rules (and a fixed-length, vectorised bisection in
the rare case where only sells can meet the cash floor of a book with shorts). Reason strings are built lazily, only when
:meth:`RiskReview.interventions` or :meth:`RiskManager.transitions` is called.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum
from statistics import NormalDist
from typing import Any

import numpy as np

PERIODS_PER_YEAR = 252
MIN_VAR_ROWS = 20  # fewer trailing returns than this give no usable VaR estimate: the VaR rule is skipped

# Rule names in the order review() applies them. "halted" and "halt_liquidation" are decided first and exclude
# each other per portfolio (a HALTED portfolio is either frozen or flattened once); "final_scale" runs last.
RULES: tuple[str, ...] = (
    "halted",
    "reducing",
    "no_equity",
    "no_short",
    "max_weight",
    "gross_exposure",
    "net_exposure",
    "var_limit",
    "cash",
    "final_scale",
    "halt_liquidation",
)
_RULE = {name: index for index, name in enumerate(RULES)}
# Rules that cap or move single positions report one intervention per asset; the others scale the whole
# target vector and report one intervention per portfolio.
_PER_ASSET_RULES = frozenset(
    {"halted", "reducing", "no_equity", "no_short", "max_weight", "halt_liquidation"}
)

# Relative slack before a scaling rule fires: scaled figures meet their limits only up to rounding, and a rescale
# for a 1e-16 excess would only add noise to the intervention log. Approved portfolios meet every limit to it.
_FINAL_TOLERANCE = 1e-12
_BISECTION_STEPS = 60


class TradingState(IntEnum):
    """Trading state of one portfolio, as in NautilusTrader."""

    ACTIVE = 0  # every rule applies, orders flow
    REDUCING = 1  # orders may only shrink positions toward zero
    HALTED = 2  # no orders, except a single flatten on entering the state


@dataclass(frozen=True)
class RiskLimits:
    """Limits of the risk manager; ``None`` switches a limit off.

    :param max_weight: largest ``|position value| / equity`` per asset after the trade
    :param max_gross_exposure: largest ``sum |position values| / equity`` after the trade
    :param max_net_exposure: largest ``|sum position values| / equity`` after the trade
    :param allow_short: allow negative target holdings
    :param max_margin: cash may fall to ``-max_margin * equity`` after the trade; 0 keeps cash non-negative
    :param cost_buffer: fraction of the buy notional held back in cash for costs
    :param var_limit: largest 1-day value at risk of the post-trade portfolio, as a fraction of equity
    :param var_method: ``historical`` (empirical quantile) or ``parametric`` (normal, sample covariance)
    :param var_confidence: VaR confidence level, e.g. 0.95
    :param drawdown_reduce: drawdown from peak equity at which a portfolio goes REDUCING (while it lasts)
    :param max_drawdown_halt: drawdown from peak equity at which a portfolio is HALTED until ``reset()``
    :param daily_loss_limit: one-bar loss that HALTS a portfolio for ``cooldown_bars`` bars
    :param volatility_halt: trailing annualised portfolio volatility above which a portfolio is REDUCING
    :param turbulence_halt: market turbulence index above which portfolios are REDUCING
    :param cooldown_bars: bars a daily-loss halt lasts (at least one bar)
    :param liquidate_on_halt: entering HALTED flattens the portfolio once (target 0)
    """

    max_weight: float | None = 0.25
    max_gross_exposure: float | None = 1.0
    max_net_exposure: float | None = 1.0
    allow_short: bool = False
    max_margin: float = 0.0
    cost_buffer: float = 0.002
    var_limit: float | None = 0.02
    var_method: str = "historical"
    var_confidence: float = 0.95
    drawdown_reduce: float | None = 0.10
    max_drawdown_halt: float | None = 0.20
    daily_loss_limit: float | None = 0.05
    volatility_halt: float | None = None
    turbulence_halt: float | None = None
    cooldown_bars: int = 5
    liquidate_on_halt: bool = True

    def __post_init__(self) -> None:
        if self.var_method not in ("historical", "parametric"):
            raise ValueError(f"var_method must be 'historical' or 'parametric', got {self.var_method!r}")
        if not 0.0 < self.var_confidence < 1.0:
            raise ValueError(f"var_confidence must lie in (0, 1), got {self.var_confidence}")
        if self.max_margin < 0.0 or self.cost_buffer < 0.0 or self.cooldown_bars < 0:
            raise ValueError("max_margin, cost_buffer and cooldown_bars must be non-negative")
        for name in (
            "max_weight",
            "max_gross_exposure",
            "max_net_exposure",
            "var_limit",
            "drawdown_reduce",
            "max_drawdown_halt",
            "daily_loss_limit",
            "volatility_halt",
        ):
            value = getattr(self, name)
            if value is not None and not value >= 0.0:
                raise ValueError(f"{name} must be non-negative or None, got {value}")

    @classmethod
    def disabled(cls) -> RiskLimits:
        """Every limit off: shorts and unlimited margin allowed, no cost buffer, no state changes (FinRL parity)."""
        return cls(
            max_weight=None,
            max_gross_exposure=None,
            max_net_exposure=None,
            allow_short=True,
            max_margin=math.inf,
            cost_buffer=0.0,
            var_limit=None,
            drawdown_reduce=None,
            max_drawdown_halt=None,
            daily_loss_limit=None,
            volatility_halt=None,
            turbulence_halt=None,
            liquidate_on_halt=False,
        )


@dataclass(frozen=True)
class Intervention:
    """One change a rule made to one portfolio's target.

    Per-asset rules (``halted``, ``halt_liquidation``, ``reducing``, ``no_equity``, ``no_short``,
    ``max_weight``) name the asset and give ``requested`` / ``approved`` in shares. Rules that scale the whole
    target (``gross_exposure``, ``net_exposure``, ``var_limit``, ``final_scale``) have ``asset=None`` and give
    the measured quantity before and after (exposure or VaR as a fraction of equity; the scale factor for
    ``final_scale``); ``cash`` gives the post-trade cash before and after.
    """

    env: int
    step: int
    rule: str
    asset: int | None
    requested: float
    approved: float
    reason: str


@dataclass
class _RuleRecord:
    """What one rule did in one review: targets before and after, and its per-portfolio figures."""

    rule: int
    before: np.ndarray | None  # None for rules that scale the whole target: their figures are in info
    after: np.ndarray | None
    info: dict[str, np.ndarray]


@dataclass
class RiskReview:
    """Outcome of one :meth:`RiskManager.review`.

    :param approved: approved target shares ``[B, N]``
    :param rule_hits: ``[B, len(RULES)]``, which rules changed something in each portfolio
    """

    approved: np.ndarray
    rule_hits: np.ndarray
    _records: list[_RuleRecord] = field(default_factory=list, repr=False)
    _context: dict[str, Any] = field(default_factory=dict, repr=False)

    def interventions(self, step: int) -> list[Intervention]:
        """The changes of this review with readable reasons, ordered by portfolio then rule.

        :param step: step (bar index) to stamp on each intervention
        """
        out: list[Intervention] = []
        if not self._records:
            return out
        for env in np.flatnonzero(self.rule_hits.any(axis=1)):
            for record in self._records:
                if self.rule_hits[env, record.rule]:
                    out.extend(self._describe(int(env), step, record))
        return out

    def _describe(self, env: int, step: int, record: _RuleRecord) -> list[Intervention]:
        ctx = self._context
        limits: RiskLimits = ctx["limits"]
        rule = RULES[record.rule]
        equity = float(ctx["equity"][env])
        if rule in _PER_ASSET_RULES:
            before, after = record.before[env], record.after[env]
            holdings, prices = ctx["holdings"][env], ctx["prices"][env]
            out = []
            for asset in np.flatnonzero(before != after):
                req, app, held = float(before[asset]), float(after[asset]), float(holdings[asset])
                price = float(prices[asset])
                if rule == "halted":
                    reason = f"trading HALTED: order of {req - held:+.6g} shares blocked, position held at {held:.6g}"
                elif rule == "halt_liquidation":
                    reason = (
                        f"entered HALTED with liquidate_on_halt: portfolio flattened once, holdings {held:.6g} "
                        f"-> 0 (target was {req:.6g})"
                    )
                elif rule == "reducing":
                    reason = (
                        f"trading REDUCING: target may only move toward 0 from holdings {held:.6g}; "
                        f"{req:.6g} -> {app:.6g} shares"
                    )
                elif rule == "no_equity":
                    reason = (
                        f"equity {equity:,.2f} <= 0: no buys, long positions may only shrink; "
                        f"{req:.6g} -> {app:.6g} shares"
                    )
                elif rule == "no_short":
                    reason = f"short selling not allowed: target {req:.6g} -> {app:.6g} shares"
                else:
                    weight = abs(req) * price / equity
                    reason = (
                        f"weight {weight:.2%} of equity {equity:,.2f} > max_weight {limits.max_weight:.2%}: "
                        f"{req:.6g} -> {app:.6g} shares at {price:.6g}"
                    )
                out.append(Intervention(env, step, rule, int(asset), req, app, reason))
            return out
        info = {key: float(value[env]) for key, value in record.info.items()}
        if rule in ("gross_exposure", "net_exposure"):
            limit = limits.max_gross_exposure if rule == "gross_exposure" else limits.max_net_exposure
            label = "gross" if rule == "gross_exposure" else "net"
            reason = (
                f"{label} exposure {info['measured']:.2%} of equity {equity:,.2f} > limit {limit:.2%}: "
                f"target scaled by {info['scale']:.6f}"
            )
            return [
                Intervention(
                    env, step, rule, None, info["measured"], info["measured"] * info["scale"], reason
                )
            ]
        if rule == "var_limit":
            reason = (
                f"1-day {limits.var_method} VaR({limits.var_confidence:.0%}) {info['measured']:.3%} of equity "
                f"> var_limit {limits.var_limit:.3%} over {ctx['var_rows']} bars: target scaled by {info['scale']:.6f}"
            )
            return [
                Intervention(
                    env, step, rule, None, info["measured"], info["measured"] * info["scale"], reason
                )
            ]
        if rule == "cash":
            tiers = f"buys scaled by {info['open_scale']:.6f}"
            if info["cover_scale"] < 1.0:
                tiers = f"opening buys scaled by {info['open_scale']:.6f}, short covers by {info['cover_scale']:.6f}"
            reason = (
                f"post-trade cash {info['requested']:,.2f} < floor {info['floor']:,.2f} "
                f"(max_margin {limits.max_margin:g} x equity {equity:,.2f}, cost_buffer {limits.cost_buffer:.2%} "
                f"of buys): {tiers}; cash after {info['approved']:,.2f}"
            )
            return [Intervention(env, step, rule, None, info["requested"], info["approved"], reason)]
        binding = ", ".join(name for name in _FINAL_CONSTRAINTS if info[name] < 1.0)
        reason = f"limits breached after the buy-only cash rule ({binding}): whole target scaled by {info['scale']:.6f}"
        return [Intervention(env, step, rule, None, 1.0, info["scale"], reason)]


_FINAL_CONSTRAINTS = ("max_weight", "gross_exposure", "net_exposure", "var_limit", "no_short", "cash")


# --------------------------------------------------------------------------------------------------------------
# Pure risk functions
# --------------------------------------------------------------------------------------------------------------


def normal_quantile(confidence: float) -> float:
    """Standard normal quantile ``z`` with ``P(Z <= z) = confidence``."""
    return NormalDist().inv_cdf(confidence)


def sample_covariance(returns_window: np.ndarray) -> np.ndarray:
    """Sample covariance ``[N, N]`` (``ddof=1``) of a returns window ``[L, N]``; same as ``np.cov(rowvar=False)``."""
    centred = returns_window - returns_window.mean(axis=0)
    return centred.T @ centred / (returns_window.shape[0] - 1)


def parametric_var(weights: np.ndarray, cov: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Normal (variance-covariance) 1-day VaR ``z * sqrt(w' cov w)`` of each weight vector.

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``), fractions of equity
    :param cov: covariance of asset returns ``[N, N]``
    :param confidence: VaR confidence level
    :return: VaR per portfolio ``[B]`` as a fraction of equity (non-negative)
    """
    weights = np.asarray(weights, dtype=np.float64)
    variance = np.einsum("...i,...i->...", weights @ cov, weights)
    # Rounding can leave a tiny negative variance for a (near-)riskless portfolio.
    return normal_quantile(confidence) * np.sqrt(np.maximum(variance, 0.0))


def _lower_tail_quantile(pnl: np.ndarray, q: float) -> np.ndarray:
    """``np.quantile(pnl, q, axis=-1)`` with linear interpolation, several times faster at these sizes."""
    n = pnl.shape[-1]
    virtual = q * (n - 1)
    lo = int(math.floor(virtual))
    hi = min(lo + 1, n - 1)
    gamma = virtual - lo
    ordered = np.sort(pnl, axis=-1)  # faster than np.partition with two pivots at these sizes
    below, above = ordered[..., lo], ordered[..., hi]
    # numpy's _lerp: interpolate from the nearer end so the result matches np.quantile to the last bit.
    diff = above - below
    return below + diff * gamma if gamma < 0.5 else above - diff * (1.0 - gamma)


def historical_var(weights: np.ndarray, returns_window: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Historical 1-day VaR: ``-quantile_{1-confidence}(returns_window @ w)`` (linear interpolation).

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``)
    :param returns_window: trailing asset returns ``[L, N]``
    :param confidence: VaR confidence level
    :return: VaR per portfolio ``[B]`` as a fraction of equity (negative when even the tail is a gain)
    """
    weights = np.asarray(weights, dtype=np.float64)
    pnl = weights @ np.asarray(returns_window, dtype=np.float64).T  # [B, L]
    return -_lower_tail_quantile(pnl, 1.0 - confidence)


def historical_cvar(weights: np.ndarray, returns_window: np.ndarray, confidence: float = 0.95) -> np.ndarray:
    """Historical expected shortfall: mean loss of the ``floor((1 - confidence) * L)`` worst returns (at least one).

    Counting the tail instead of comparing against the VaR cut-off keeps the estimate positively homogeneous
    when returns tie at the cut-off; every counted return lies at or below the historical VaR quantile, so
    CVaR >= VaR.

    :param weights: portfolio weights ``[B, N]`` (or ``[N]``)
    :param returns_window: trailing asset returns ``[L, N]``
    :param confidence: VaR confidence level
    :return: CVaR per portfolio ``[B]`` as a fraction of equity
    """
    weights = np.asarray(weights, dtype=np.float64)
    pnl = np.sort(weights @ np.asarray(returns_window, dtype=np.float64).T, axis=-1)
    # The small epsilon keeps e.g. (1 - 0.9) * 20 = 2.0000000000000004 from counting as 3.
    count = max(int(np.floor((1.0 - confidence) * pnl.shape[-1] + 1e-9)), 1)
    return -pnl[..., :count].mean(axis=-1)


def capped_kelly_fraction(
    mean_return: np.ndarray | float, variance: np.ndarray | float, cap: float = 0.25, fraction: float = 0.5
) -> np.ndarray:
    """Fractional Kelly position size ``fraction * mean / variance`` clipped to ``[0, cap]``.

    :param mean_return: expected per-period excess return(s)
    :param variance: per-period return variance(s)
    :param cap: largest fraction of equity
    :param fraction: Kelly multiplier (0.5 = half-Kelly, which keeps most of the growth at far less variance)
    :return: fraction of equity to hold, same shape as the broadcast inputs
    """
    mean_return = np.asarray(mean_return, dtype=np.float64)
    variance = np.asarray(variance, dtype=np.float64)
    shape = np.broadcast_shapes(mean_return.shape, variance.shape)
    # A riskless positive edge is worth the cap; a riskless non-positive one nothing.
    kelly = np.where(np.broadcast_to(mean_return > 0.0, shape), np.inf, 0.0)
    np.divide(fraction * mean_return, variance, out=kelly, where=np.broadcast_to(variance > 0.0, shape))
    return np.clip(kelly, 0.0, cap)


def inverse_volatility_weights(vol: np.ndarray) -> np.ndarray:
    """Long-only weights proportional to ``1 / vol`` along the last axis, summing to 1.

    Assets with a non-positive or non-finite volatility get no weight; a row without any usable volatility
    falls back to equal weights.

    :param vol: volatilities ``[..., N]``
    :return: weights of the same shape
    """
    vol = np.asarray(vol, dtype=np.float64)
    usable = np.isfinite(vol) & (vol > 0.0)
    inverse = np.zeros_like(vol)
    np.divide(1.0, vol, out=inverse, where=usable)
    total = inverse.sum(axis=-1, keepdims=True)
    equal = np.full_like(vol, 1.0 / vol.shape[-1])
    return np.where(total > 0.0, inverse / np.where(total > 0.0, total, 1.0), equal)


def risk_parity_weights(cov: np.ndarray, iterations: int = 500, tol: float = 1e-12) -> np.ndarray:
    """Long-only equal-risk-contribution weights: every ``w_i (cov w)_i`` equal, weights summing to 1.

    Solves Spinu's convex formulation ``min_y 1/2 y' cov y - sum_i log(y_i) / N`` by damped Newton steps (its
    optimum has ``y_i (cov y)_i = 1/N``) and normalises ``y``. Unlike the plain multiplicative fixed-point
    update this converges for every positive-definite covariance, quadratically near the optimum.

    :param cov: covariance ``[N, N]`` with a positive diagonal
    :param iterations: most Newton steps
    :param tol: stop when the largest relative gap between risk contributions falls below this
    :return: weights ``[N]``
    """
    cov = np.asarray(cov, dtype=np.float64)
    n = cov.shape[0]
    if cov.shape != (n, n) or np.any(np.diag(cov) <= 0.0):
        raise ValueError("risk parity needs a square covariance with positive variances")
    diagonal = np.diag(cov)
    budget = 1.0 / n
    y = 1.0 / np.sqrt(diagonal)
    y /= np.sqrt(y @ cov @ y)  # at the optimum y' cov y = sum of budgets = 1

    def objective(point: np.ndarray) -> float:
        return 0.5 * point @ cov @ point - budget * np.log(point).sum()

    for _ in range(iterations):
        marginal = cov @ y
        contributions = y * marginal
        if np.max(np.abs(contributions - budget)) <= tol * budget:
            break
        gradient = marginal - budget / y
        step = -np.linalg.solve(cov + np.diag(budget / y**2), gradient)
        decrement = -(gradient @ step)  # squared Newton decrement: twice the predicted decrease
        if decrement <= 1e-30:
            break
        t = 1.0
        while np.any(y + t * step <= 0.0):  # stay inside the domain y > 0
            t *= 0.5
        if decrement > 1e-8:
            # Far from the optimum: backtrack until the objective decreases (Armijo). Closer in, the decrease
            # drowns in rounding of the objective while full Newton steps converge quadratically anyway.
            current = objective(y)
            while objective(y + t * step) > current - 1e-4 * t * decrement and t > 1e-10:
                t *= 0.5
        y = y + t * step
    return y / y.sum()


# --------------------------------------------------------------------------------------------------------------
# Risk manager
# --------------------------------------------------------------------------------------------------------------

# Plain ints: comparing an array with an IntEnum member goes through slow scalar conversion on every call.
_ACTIVE, _REDUCING, _HALTED = int(TradingState.ACTIVE), int(TradingState.REDUCING), int(TradingState.HALTED)

# Causes of a state transition, as bits, so on_bar logs arrays and transitions() writes the sentences.
_CAUSE_DRAWDOWN_HALT = 1
_CAUSE_DAILY_LOSS = 2
_CAUSE_COOLDOWN = 4
_CAUSE_DRAWDOWN_REDUCE = 8
_CAUSE_VOLATILITY = 16
_CAUSE_TURBULENCE = 32
_CAUSE_RESET = 64


class RiskManager:
    """Batched pre-trade risk checks and trading states for ``n_envs`` portfolios over ``n_assets`` assets.

    :param limits: the limits
    :param n_envs: number of portfolios B
    :param n_assets: number of assets N
    :param vol_window: bars of portfolio returns kept for the trailing volatility
    :param vol_min_periods: fewest returns before the volatility halt can trigger (a 2-bar estimate is noise)
    """

    def __init__(
        self,
        limits: RiskLimits,
        n_envs: int,
        n_assets: int,
        vol_window: int = 20,
        vol_min_periods: int = 5,
    ) -> None:
        if n_envs < 1 or n_assets < 1:
            raise ValueError("a risk manager needs at least one portfolio and one asset")
        self.limits, self.n_envs, self.n_assets = limits, n_envs, n_assets
        self.vol_window, self.vol_min_periods = vol_window, max(2, vol_min_periods)
        self._z = normal_quantile(limits.var_confidence)
        self.state = np.full(n_envs, TradingState.ACTIVE, dtype=np.int64)
        self.peak_equity = np.full(n_envs, np.nan)
        self.previous_equity = np.full(n_envs, np.nan)
        self.drawdown = np.zeros(n_envs)
        self.bar_loss = np.zeros(n_envs)
        self.volatility = np.full(n_envs, np.nan)
        self.turbulence = np.zeros(n_envs)
        self.cooldown = np.zeros(n_envs, dtype=np.int64)
        self._hard_halt = np.zeros(n_envs, dtype=bool)  # max-drawdown halts last until reset()
        self._pending_liquidation = np.zeros(n_envs, dtype=bool)
        # Ring buffer of one-bar equity returns, one write position per portfolio so partial resets stay simple.
        self._returns = np.zeros((vol_window, n_envs))
        self._write = np.zeros(n_envs, dtype=np.int64)
        self._filled = np.zeros(n_envs, dtype=np.int64)
        self._columns = np.arange(n_envs)
        self._bar = 0
        self._log: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

    # ---------------------------------------------------------------------------------------------- states

    def _select(self, envs: np.ndarray | None) -> np.ndarray:
        if envs is None:
            return self._columns
        envs = np.asarray(envs)
        if envs.dtype == bool:
            if envs.shape != (self.n_envs,):
                raise ValueError(f"env mask must have shape ({self.n_envs},), got {envs.shape}")
            return np.flatnonzero(envs)
        return envs.astype(np.int64).ravel()

    def reset(self, equity: np.ndarray | float, envs: np.ndarray | None = None) -> None:
        """Start portfolios afresh: peak and previous equity set to ``equity``, state ACTIVE, history cleared.

        :param equity: current equity, ``[B]``, one value per selected portfolio, or a scalar
        :param envs: bool mask ``[B]`` or indices of the portfolios to reset; ``None`` resets all (and the bar count)
        """
        index = self._select(envs)
        equity = np.asarray(equity, dtype=np.float64)
        if equity.ndim == 0:
            values = np.full(index.shape, float(equity))
        elif equity.shape == (self.n_envs,):
            values = equity[index]
        elif equity.shape == index.shape:
            values = equity
        else:
            raise ValueError(
                f"equity of shape {equity.shape} matches neither {self.n_envs} nor the selection"
            )
        was = self.state[index]
        self.peak_equity[index] = values
        self.previous_equity[index] = values
        self.state[index] = TradingState.ACTIVE
        self.drawdown[index] = 0.0
        self.bar_loss[index] = 0.0
        self.volatility[index] = np.nan
        self.turbulence[index] = 0.0
        self.cooldown[index] = 0
        self._hard_halt[index] = False
        self._pending_liquidation[index] = False
        self._returns[:, index] = 0.0
        self._write[index] = 0
        self._filled[index] = 0
        if envs is None:
            self._bar = 0
        changed = was != TradingState.ACTIVE
        if changed.any():
            moved = index[changed]
            self._log.append(
                (
                    self._bar,
                    moved,
                    np.full(moved.shape, TradingState.ACTIVE),
                    np.full(moved.shape, _CAUSE_RESET),
                    np.zeros((4, moved.size)),
                )
            )

    def _vector(self, value: np.ndarray | float) -> np.ndarray:
        value = np.asarray(value, dtype=np.float64)
        return value if value.shape == (self.n_envs,) else np.full(self.n_envs, value, dtype=np.float64)

    def on_bar(self, equity: np.ndarray, turbulence: float | np.ndarray | None = None) -> np.ndarray:
        """Update every portfolio after marking it to a bar close and move it between trading states.

        Priority: a max-drawdown halt (until ``reset()``), then a daily-loss halt (``cooldown_bars`` bars), then
        REDUCING while the drawdown is at or over ``drawdown_reduce`` or the trailing volatility or turbulence is
        above its threshold, else ACTIVE. Entering HALTED arms the one-time liquidation of ``liquidate_on_halt``.

        :param equity: equity of each portfolio ``[B]`` at the close
        :param turbulence: market turbulence index (scalar or ``[B]``); ``None`` means no reading
        :return: ``[B]`` bool, the portfolios whose state changed
        """
        limits = self.limits
        equity = self._vector(equity).copy()
        self._bar += 1
        previous = self.previous_equity
        has_previous = previous > 0.0  # NaN (never reset) and bankrupt portfolios give no return
        bar_return = np.divide(equity, previous, out=np.ones(self.n_envs), where=has_previous) - 1.0
        self.bar_loss = -bar_return  # 0 where there is no previous equity
        self.peak_equity = peak = np.fmax(self.peak_equity, equity)
        positive_peak = peak > 0.0
        # A portfolio that never had positive equity is fully under water.
        self.drawdown = 1.0 - np.divide(equity, peak, out=np.zeros(self.n_envs), where=positive_peak)
        self.previous_equity = equity

        if limits.volatility_halt is not None:
            self._record_return(bar_return, has_previous)
        # No reading means no turbulence signal this bar (NaN compares False), not a stale one.
        self.turbulence = self._vector(np.nan if turbulence is None else turbulence).copy()

        if limits.max_drawdown_halt is not None:
            self._hard_halt |= self.drawdown >= limits.max_drawdown_halt
        self.cooldown = np.maximum(self.cooldown - 1, 0)
        loss_hit = None
        if limits.daily_loss_limit is not None:
            loss_hit = self.bar_loss >= limits.daily_loss_limit
            if loss_hit.any():
                self.cooldown[loss_hit] = limits.cooldown_bars
        halted = self._hard_halt | (self.cooldown > 0)
        if loss_hit is not None:
            halted |= loss_hit  # a zero-bar cooldown still halts the bar of the loss

        reasons = {}
        if limits.drawdown_reduce is not None:
            reasons[_CAUSE_DRAWDOWN_REDUCE] = self.drawdown >= limits.drawdown_reduce
        if limits.volatility_halt is not None:
            reasons[_CAUSE_VOLATILITY] = self.volatility > limits.volatility_halt
        if limits.turbulence_halt is not None:
            reasons[_CAUSE_TURBULENCE] = self.turbulence > limits.turbulence_halt
        reducing = (
            np.logical_or.reduce(list(reasons.values())) if reasons else np.zeros(self.n_envs, dtype=bool)
        )

        new_state = np.where(halted, _HALTED, np.where(reducing, _REDUCING, _ACTIVE))
        changed = new_state != self.state
        if changed.any():
            if limits.liquidate_on_halt:
                self._pending_liquidation |= changed & halted
            moved = np.flatnonzero(changed)
            # Causes as bits, so the log keeps small arrays and transitions() writes the sentences.
            cause = (
                self._hard_halt[moved] * _CAUSE_DRAWDOWN_HALT | (self.cooldown[moved] > 0) * _CAUSE_COOLDOWN
            )
            if loss_hit is not None:
                cause |= loss_hit[moved] * _CAUSE_DAILY_LOSS
            for bit, active in reasons.items():
                cause |= active[moved] * bit
            figures = np.stack([self.drawdown, self.bar_loss, self.volatility, self.turbulence])[:, moved]
            self._log.append((self._bar, moved, new_state[moved], cause, figures))
        self._pending_liquidation &= halted
        self.state = new_state
        return changed

    def _record_return(self, bar_return: np.ndarray, valid: np.ndarray) -> None:
        """Push one-bar returns into the ring buffer and refresh the trailing annualised volatility."""
        columns = self._columns if valid.all() else np.flatnonzero(valid)
        slots = self._write[columns]
        # Empty slots hold 0, so plain sums over the buffer are sums over the stored returns.
        self._returns[slots, columns] = bar_return[columns]
        self._write[columns] = (slots + 1) % self.vol_window
        self._filled[columns] = np.minimum(self._filled[columns] + 1, self.vol_window)
        count = self._filled.astype(np.float64)
        usable = self._filled >= self.vol_min_periods
        total = self._returns.sum(axis=0)
        squares = np.einsum("wb,wb->b", self._returns, self._returns)
        n = np.where(usable, count, 2.0)
        # Daily returns are O(1e-2), so the one-pass variance loses nothing that matters here.
        variance = np.maximum(squares - total * total / n, 0.0) / (n - 1.0)
        self.volatility = np.where(usable, np.sqrt(variance * PERIODS_PER_YEAR), np.nan)

    def transitions(self) -> list[tuple[int, int, str, str]]:
        """State changes since the last call as ``(env, step, new_state_name, reason)``; clears the log."""
        limits = self.limits
        out: list[tuple[int, int, str, str]] = []
        for step, envs, states, causes, figures in self._log:
            for j, env in enumerate(envs):
                state, cause = TradingState(int(states[j])), int(causes[j])
                drawdown, loss, vol, turbulence = (float(x) for x in figures[:, j])
                parts = []
                if cause & _CAUSE_RESET:
                    parts.append("reset")
                if cause & _CAUSE_DRAWDOWN_HALT:
                    parts.append(
                        f"drawdown {drawdown:.2%} >= max_drawdown_halt {limits.max_drawdown_halt:.2%}"
                    )
                if cause & _CAUSE_DAILY_LOSS:
                    parts.append(
                        f"one-bar loss {loss:.2%} >= daily_loss_limit {limits.daily_loss_limit:.2%}, "
                        f"halted for {limits.cooldown_bars} bars"
                    )
                elif cause & _CAUSE_COOLDOWN and not cause & _CAUSE_DRAWDOWN_HALT:
                    parts.append("daily-loss cooldown running")
                if state != TradingState.HALTED:
                    if cause & _CAUSE_DRAWDOWN_REDUCE:
                        parts.append(
                            f"drawdown {drawdown:.2%} >= drawdown_reduce {limits.drawdown_reduce:.2%}"
                        )
                    if cause & _CAUSE_VOLATILITY:
                        parts.append(
                            f"trailing volatility {vol:.2%} > volatility_halt {limits.volatility_halt:.2%}"
                        )
                    if cause & _CAUSE_TURBULENCE:
                        parts.append(
                            f"turbulence {turbulence:.4g} > turbulence_halt {limits.turbulence_halt:.4g}"
                        )
                if not parts:
                    figures_now = [f"drawdown {drawdown:.2%}", f"one-bar loss {loss:.2%}"]
                    if limits.volatility_halt is not None:
                        figures_now.append(f"volatility {vol:.2%}")
                    if limits.turbulence_halt is not None:
                        figures_now.append(f"turbulence {turbulence:.4g}")
                    parts.append("limits back in bounds: " + ", ".join(figures_now))
                out.append((int(env), int(step), state.name, "; ".join(parts)))
        self._log.clear()
        return out

    # ---------------------------------------------------------------------------------------------- review

    def _var(self, weights: np.ndarray, returns_window: np.ndarray, cov: np.ndarray | None) -> np.ndarray:
        if cov is not None:
            return self._z * np.sqrt(np.maximum(np.einsum("bi,bi->b", weights @ cov, weights), 0.0))
        return -_lower_tail_quantile(weights @ returns_window.T, 1.0 - self.limits.var_confidence)

    def review(
        self,
        target: np.ndarray,
        holdings: np.ndarray,
        prices: np.ndarray,
        cash: np.ndarray,
        returns_window: np.ndarray | None = None,
    ) -> RiskReview:
        """Approve or reduce target holdings so the post-trade portfolios meet every limit.

        :param target: proposed target shares ``[B, N]``
        :param holdings: current shares ``[B, N]``
        :param prices: decision prices ``[B, N]`` (or ``[N]``)
        :param cash: current cash ``[B]``
        :param returns_window: trailing daily asset returns ``[L, N]`` known now; VaR is skipped without it or
            with fewer than 20 rows
        :return: the approved targets, which rules hit, and lazily written interventions
        """
        limits = self.limits
        shape = (self.n_envs, self.n_assets)
        target = np.array(target, dtype=np.float64)  # a copy, so the records never alias the caller's array
        if target.shape != shape:
            raise ValueError(f"target must have shape {shape}, got {target.shape}")
        h = np.asarray(holdings, dtype=np.float64)
        p = np.asarray(prices, dtype=np.float64)
        if p.shape != shape:
            p = np.broadcast_to(p, shape)
        cash = np.asarray(cash, dtype=np.float64)
        equity = cash + np.einsum("bn,bn->b", h, p)

        hits = np.zeros((self.n_envs, len(RULES)), dtype=bool)
        records: list[_RuleRecord] = []

        def record(rule: str, before: Any, after: Any, hit: np.ndarray, **info: np.ndarray) -> None:
            hits[:, _RULE[rule]] = hit
            records.append(_RuleRecord(_RULE[rule], before, after, info))

        state = self.state
        halted = state == _HALTED
        any_halted = bool(halted.any())
        ok = equity > 0.0  # NaN equity is not ok either
        if any_halted:
            ok &= ~halted
        all_ok = bool(ok.all())
        any_ok = all_ok or bool(ok.any())
        # Divisions by equity only matter where it is positive; elsewhere divide by 1 and mask the result.
        safe_equity = equity if all_ok else np.where(ok, equity, 1.0)
        a = target

        frozen = None
        if any_halted:
            liquidate = halted & self._pending_liquidation
            frozen = np.where(liquidate[:, None], 0.0, h)
            hit = halted & ~liquidate & (target != h).any(axis=1)
            if hit.any():
                record("halted", target, frozen, hit)
            hit = liquidate & (target != 0.0).any(axis=1)
            if hit.any():
                record("halt_liquidation", target, frozen, hit)
            # The flatten is offered once, on the first review after halting.
            self._pending_liquidation[:] = False

        reducing = state == _REDUCING
        if reducing.any():
            # Each position may only move toward zero without crossing it: |a| <= |h|, same sign or 0.
            moved = np.minimum(np.maximum(a, np.minimum(h, 0.0)), np.maximum(h, 0.0))
            moved = np.where(reducing[:, None], moved, a)
            hit = (moved != a).any(axis=1)
            if hit.any():
                record("reducing", a, moved, hit)
                a = moved

        if not all_ok:
            broke = ~ok & ~halted
            if broke.any():
                moved = np.where(h > 0.0, np.minimum(np.maximum(a, 0.0), h), h)
                moved = np.where(broke[:, None], moved, a)
                hit = (moved != a).any(axis=1)
                if hit.any():
                    record("no_equity", a, moved, hit)
                    a = moved

        # Halted and bankrupt portfolios are settled above: the limits below apply to the others only.
        if not any_ok:
            return self._finish(target, a, frozen, halted, records, hits, equity, h, p, 0)
        ok_column = None if all_ok else ok[:, None]

        if not limits.allow_short:
            short = a < 0.0
            if ok_column is not None:
                short &= ok_column
            if short.any():
                moved = np.where(short, 0.0, a)
                record("no_short", a, moved, short.any(axis=1))
                a = moved

        if limits.max_weight is not None:
            cap = limits.max_weight * equity if all_ok else np.where(ok, limits.max_weight * equity, np.inf)
            over = np.abs(a) * p > cap[:, None]  # zero prices never exceed the cap
            if over.any():
                moved = a.copy()
                np.divide(np.copysign(cap[:, None], a), p, out=moved, where=over)
                record("max_weight", a, moved, over.any(axis=1))
                a = moved

        # Gross, net and VaR limits all scale the whole target; they are measured on the unscaled target and
        # their factors multiplied once (each figure is positively homogeneous in the target).
        scale = None
        values = None
        bound = 1.0 + _FINAL_TOLERANCE
        for rule, limit in (
            ("gross_exposure", limits.max_gross_exposure),
            ("net_exposure", limits.max_net_exposure),
        ):
            if limit is None:
                continue
            if values is None:
                values = a * p
            total = np.abs(values).sum(axis=1) if rule == "gross_exposure" else np.abs(values.sum(axis=1))
            measured = total / safe_equity if scale is None else total * scale / safe_equity
            over = measured > limit * bound
            if ok_column is not None:
                over &= ok
            if over.any():
                factor = np.where(over, limit / np.where(over, measured, 1.0), 1.0)
                record(rule, None, None, over, measured=measured, scale=factor)
                scale = factor if scale is None else scale * factor

        var_window, cov, var_after = None, None, None
        if (
            limits.var_limit is not None
            and returns_window is not None
            and len(returns_window) >= MIN_VAR_ROWS
        ):
            var_window = np.asarray(returns_window, dtype=np.float64)
            if limits.var_method == "parametric":
                cov = sample_covariance(var_window)
            if values is None:
                values = a * p
            var = self._var(values / safe_equity[:, None], var_window, cov)
            if scale is not None:
                var = var * scale
            over = var > limits.var_limit * bound
            if ok_column is not None:
                over &= ok
            if over.any():
                factor = np.where(over, limits.var_limit / np.where(over, var, 1.0), 1.0)
                record("var_limit", None, None, over, measured=var, scale=factor)
                scale = factor if scale is None else scale * factor
                var = var * factor
            var_after = var

        if scale is not None:
            a = a * scale[:, None]

        if limits.max_margin < math.inf:  # unlimited margin: cash never binds and nothing else moved off-ray
            a = self._cash_rule(a, h, p, cash, safe_equity, ok, all_ok, var_window, cov, var_after, record)
        return self._finish(
            target,
            a,
            frozen,
            halted,
            records,
            hits,
            equity,
            h,
            p,
            0 if var_window is None else len(var_window),
        )

    def _finish(
        self,
        target: np.ndarray,
        a: np.ndarray,
        frozen: np.ndarray | None,
        halted: np.ndarray,
        records: list[_RuleRecord],
        hits: np.ndarray,
        equity: np.ndarray,
        h: np.ndarray,
        p: np.ndarray,
        var_rows: int,
    ) -> RiskReview:
        # A copy once anything changed: the records must not move if the caller edits the approved array.
        approved = np.where(halted[:, None], frozen, a) if frozen is not None else a.copy() if records else a
        context = {
            "limits": self.limits,
            "equity": equity,
            # Copies: the caller may update its holdings in place before it asks for the interventions.
            "holdings": h.copy() if records else h,
            "prices": np.array(p) if records else p,
            "var_rows": var_rows,
        }
        return RiskReview(approved=approved, rule_hits=hits, _records=records, _context=context)

    def _cash_rule(
        self,
        a: np.ndarray,
        h: np.ndarray,
        p: np.ndarray,
        cash: np.ndarray,
        safe_equity: np.ndarray,
        ok: np.ndarray,
        all_ok: bool,
        var_window: np.ndarray | None,
        cov: np.ndarray | None,
        var_after: np.ndarray | None,
        record: Any,
    ) -> np.ndarray:
        """Scale buys down until post-trade cash meets its floor, then make sure every limit still holds."""
        limits = self.limits
        cost_buffer = limits.cost_buffer
        floor = -limits.max_margin * safe_equity
        any_short_book = bool((h < 0.0).any() or (a < 0.0).any())
        order = a - h
        buys = np.maximum(order, 0.0)
        buy_notional = np.einsum("bn,bn->b", buys, p)
        post_cash = cash - np.einsum("bn,bn->b", order, p) - cost_buffer * buy_notional
        short_of_cash = post_cash < floor
        if not all_ok:
            short_of_cash &= ok
        cash_hit = short_of_cash & (buy_notional > 0.0)
        if cash_hit.any():
            keep = 1.0 + cost_buffer
            if any_short_book:
                # Opening buys go first; buys that cover shorts reduce risk and are cut only if that is not enough.
                opening = np.maximum(a - np.maximum(h, 0.0), 0.0)
                covering = buys - opening
                opening_notional = np.einsum("bn,bn->b", opening, p)
                covering_notional = buy_notional - opening_notional
            else:
                opening, covering, opening_notional, covering_notional = buys, None, buy_notional, None
            without_opening = post_cash + keep * opening_notional
            needs = cash_hit & (opening_notional > 0.0)
            open_scale = np.ones_like(post_cash)
            np.divide(without_opening - floor, keep * opening_notional, out=open_scale, where=needs)
            open_scale = np.minimum(np.maximum(open_scale, 0.0), 1.0)
            moved = a - (1.0 - open_scale)[:, None] * opening
            approved_cash = post_cash + keep * (1.0 - open_scale) * opening_notional
            cover_scale = np.ones_like(post_cash)
            if covering is not None:
                needs = cash_hit & (without_opening < floor) & (covering_notional > 0.0)
                if needs.any():
                    without_buys = without_opening + keep * covering_notional
                    np.divide(without_buys - floor, keep * covering_notional, out=cover_scale, where=needs)
                    cover_scale = np.minimum(np.maximum(cover_scale, 0.0), 1.0)
                    moved = moved - (1.0 - cover_scale)[:, None] * covering
                    approved_cash = approved_cash + keep * (1.0 - cover_scale) * covering_notional
            record(
                "cash",
                a,
                moved,
                cash_hit,
                requested=post_cash,
                approved=approved_cash,
                floor=floor,
                open_scale=open_scale,
                cover_scale=cover_scale,
            )
            # The buy cut that meets the floor exactly leaves the order cut by (1 - scale) * buys.
            removed = (1.0 - open_scale) * opening_notional
            if covering_notional is not None:
                removed = removed + (1.0 - cover_scale) * covering_notional
            a, post_cash = moved, approved_cash
        else:
            removed = None

        # Cutting buys moves the target off the ray the earlier rules scaled along. Cutting the opening part of
        # buys only shrinks positions toward zero, which keeps every per-position limit and the gross exposure,
        # but it lowers the net exposure and can lift the VaR of a hedged book, by at most (largest one-asset
        # loss) x (notional removed) / equity. Cut short covers, and a floor no buy cut reaches (sells needed),
        # go to the full check. Only the portfolios that may breach pay for it.
        check = post_cash < floor - _FINAL_TOLERANCE * np.abs(safe_equity)
        if not all_ok:
            check &= ok
        if removed is not None:
            suspect = cover_scale < 1.0
            if limits.max_net_exposure is not None and any_short_book:  # a long book's net only falls
                net = np.abs(np.einsum("bn,bn->b", a, p)) / safe_equity
                suspect |= net > limits.max_net_exposure * (1.0 + _FINAL_TOLERANCE)
            if var_after is not None:
                if cov is not None:
                    lipschitz = abs(self._z) * float(np.sqrt(np.max(np.diag(cov))))
                else:
                    lipschitz = float(np.abs(var_window).max())
                suspect |= var_after + lipschitz * removed / safe_equity > limits.var_limit
            check |= cash_hit & suspect
        if check.any():
            a = self._final_scale(a, h, p, cash, safe_equity, floor, check, var_window, cov, record)
        return a

    def _final_scale(
        self,
        a: np.ndarray,
        h: np.ndarray,
        p: np.ndarray,
        cash: np.ndarray,
        equity: np.ndarray,
        cash_floor: np.ndarray,
        check: np.ndarray,
        var_window: np.ndarray | None,
        cov: np.ndarray | None,
        record: Any,
    ) -> np.ndarray:
        """Scale targets of the ``check`` portfolios toward zero until every limit holds at once.

        Every limit but cash is positively homogeneous, so its largest admissible scale is ``limit / measured``.
        Post-trade cash is concave in the target, hence admissible on a segment from zero (when a flat book is
        affordable): where the target is short of cash its largest admissible scale is found by bisection.
        """
        limits = self.limits
        rows = np.flatnonzero(check)
        sub, held, price, eq = a[rows], h[rows], p[rows], equity[rows]
        values = sub * price
        scales: dict[str, np.ndarray] = {name: np.ones(rows.size) for name in _FINAL_CONSTRAINTS}

        def admissible(measured: np.ndarray, limit: float) -> np.ndarray:
            over = measured > limit * (1.0 + _FINAL_TOLERANCE)
            return np.where(over, limit / np.where(over, measured, 1.0), 1.0)

        if limits.max_weight is not None:
            scales["max_weight"] = admissible(np.abs(values).max(axis=1) / eq, limits.max_weight)
        if limits.max_gross_exposure is not None:
            scales["gross_exposure"] = admissible(np.abs(values).sum(axis=1) / eq, limits.max_gross_exposure)
        if limits.max_net_exposure is not None:
            scales["net_exposure"] = admissible(np.abs(values.sum(axis=1)) / eq, limits.max_net_exposure)
        if var_window is not None and limits.var_limit is not None:
            scales["var_limit"] = admissible(
                self._var(values / eq[:, None], var_window, cov), limits.var_limit
            )
        if not limits.allow_short:
            # A short left by partially cut covers cannot be scaled away; only flat meets no-short.
            scales["no_short"] = np.where((sub < 0.0).any(axis=1), 0.0, 1.0)

        floor, start_cash, cost_buffer = cash_floor[rows], cash[rows], limits.cost_buffer

        def cash_change(
            scale: np.ndarray, vectors: np.ndarray, base: np.ndarray, prices: np.ndarray
        ) -> np.ndarray:
            order = scale[:, None] * vectors - base
            return -(order * prices).sum(axis=1) - cost_buffer * (np.maximum(order, 0.0) * prices).sum(axis=1)

        tolerance = _FINAL_TOLERANCE * np.abs(eq)
        short = np.flatnonzero(
            start_cash + cash_change(np.ones(rows.size), sub, held, price) < floor - tolerance
        )
        if short.size:
            lo, hi = np.zeros(short.size), np.ones(short.size)
            vectors, base, prices, needed = (
                sub[short],
                held[short],
                price[short],
                floor[short] - start_cash[short],
            )
            for _ in range(_BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                fits = cash_change(mid, vectors, base, prices) >= needed
                lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid)
            scales["cash"][short] = lo

        scale = np.minimum.reduce([scales[name] for name in _FINAL_CONSTRAINTS])
        hit_rows = (scale < 1.0) & (sub != 0.0).any(axis=1)
        if not hit_rows.any():
            return a
        moved = a.copy()
        moved[rows] = sub * scale[:, None]
        hit = np.zeros(self.n_envs, dtype=bool)
        hit[rows] = hit_rows
        full = {name: np.ones(self.n_envs) for name in (*_FINAL_CONSTRAINTS, "scale")}
        for name in _FINAL_CONSTRAINTS:
            full[name][rows] = scales[name]
        full["scale"][rows] = scale
        record("final_scale", a, moved, hit, **full)
        return moved


__all__ = [
    "RULES",
    "Intervention",
    "RiskLimits",
    "RiskManager",
    "RiskReview",
    "TradingState",
    "capped_kelly_fraction",
    "historical_cvar",
    "historical_var",
    "inverse_volatility_weights",
    "normal_quantile",
    "parametric_var",
    "risk_parity_weights",
    "sample_covariance",
]
