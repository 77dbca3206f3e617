"""Transaction costs: broker commissions, bid-ask spread estimates, trailing market statistics and market impact.

Everything here is vectorised numpy over arrays of any shape. The per-step functions (commission models,
impact models, :meth:`CostModel.execute`) are called by the simulator with ``[n_envs, n_assets]`` arrays on
every step; the estimators (half-spreads, ADV, volatility) run once per market panel on ``[T, N]`` arrays and
are strictly causal: row ``t`` only uses rows ``<= t``, so the estimate known at a decision never peeks ahead.

References:

- Corwin, S. A. and Schultz, P. (2012). A Simple Way to Estimate Bid-Ask Spreads from Daily High and Low
  Prices. The Journal of Finance 67(2), 719-760.
- Almgren, R. and Chriss, N. (2000). Optimal Execution of Portfolio Transactions. Journal of Risk 3, 5-39
  (linear temporary and permanent impact).
- Almgren, R., Thum, C., Hauptmann, E. and Li, H. (2005). Direct Estimation of Equity Market Impact. Risk 18
  (square-root temporary impact).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# ----------------------------------------------------------------------------------------------------------
# Commission models
# ----------------------------------------------------------------------------------------------------------


@runtime_checkable
class CommissionModel(Protocol):
    """Broker commission in currency for absolute traded shares at an execution price."""

    def __call__(self, shares: np.ndarray, price: np.ndarray) -> np.ndarray:
        """
        :param shares: absolute traded shares (``>= 0``)
        :param price: execution price per share, broadcastable with ``shares``
        :return: commission in currency, exactly ``0.0`` where ``shares == 0``
        """
        ...


def _require_non_negative(**values: float | None) -> None:
    for name, value in values.items():
        # `not value >= 0` also rejects NaN.
        if value is not None and not value >= 0:
            raise ValueError(f"{name} must be a non-negative number, got {value!r}")


@dataclass(frozen=True)
class ProportionalCommission:
    """A fixed fraction of the traded value, as in FinRL's ``buy_cost_pct`` / ``sell_cost_pct``.

    :param rate: commission as a fraction of notional (FinRL's default is ``0.001``)
    """

    rate: float

    def __post_init__(self) -> None:
        _require_non_negative(rate=self.rate)

    def __call__(self, shares: np.ndarray, price: np.ndarray) -> np.ndarray:
        return self.rate * np.multiply(shares, price)


@dataclass(frozen=True)
class BpsCommission:
    """A fixed number of basis points of the traded value.

    :param bps: commission in basis points of notional (1 bp = 0.01 %)
    """

    bps: float

    def __post_init__(self) -> None:
        _require_non_negative(bps=self.bps)

    def __call__(self, shares: np.ndarray, price: np.ndarray) -> np.ndarray:
        return (self.bps * 1e-4) * np.multiply(shares, price)


@dataclass(frozen=True)
class PerShareCommission:
    """A fee per share with a minimum per order and an optional cap as a fraction of the traded value.

    The cap wins over the minimum, as in Interactive Brokers' schedules: an order of 100 shares at $0.20 pays
    1 % of $20, not the $1 minimum.

    :param per_share: fee per share
    :param minimum: smallest fee of a non-zero order
    :param maximum_pct: largest fee as a fraction of notional; ``None`` for no cap
    """

    per_share: float
    minimum: float = 0.0
    maximum_pct: float | None = None

    def __post_init__(self) -> None:
        _require_non_negative(per_share=self.per_share, minimum=self.minimum, maximum_pct=self.maximum_pct)

    def __call__(self, shares: np.ndarray, price: np.ndarray) -> np.ndarray:
        fee = self.per_share * np.asarray(shares, dtype=np.float64)
        if self.minimum > 0:
            fee = np.maximum(fee, self.minimum)
        if self.maximum_pct is not None:
            fee = np.minimum(fee, self.maximum_pct * np.multiply(shares, price))
        # The minimum applies per order, and no order means no fee.
        return np.where(np.not_equal(shares, 0), fee, 0.0)


@dataclass(frozen=True)
class PerOrderCommission:
    """A flat fee for every non-zero order, whatever its size.

    :param fee: fee per order
    """

    fee: float

    def __post_init__(self) -> None:
        _require_non_negative(fee=self.fee)

    def __call__(self, shares: np.ndarray, price: np.ndarray) -> np.ndarray:
        traded = np.broadcast_to(
            np.not_equal(shares, 0), np.broadcast_shapes(np.shape(shares), np.shape(price))
        )
        return np.where(traded, self.fee, 0.0)


@dataclass(frozen=True)
class ZeroCommission:
    """No commission (commission-free brokers such as Alpaca for US equities)."""

    def __call__(self, shares: np.ndarray, price: np.ndarray) -> np.ndarray:
        return np.zeros(np.broadcast_shapes(np.shape(shares), np.shape(price)))


BROKER_PRESETS: dict[str, CommissionModel] = {
    "zero": ZeroCommission(),
    "alpaca": ZeroCommission(),
    # IBKR Pro US stocks: fixed $0.005/share (min $1.00) and tiered's highest tier $0.0035/share (min $0.35),
    # both capped at 1 % of trade value; exchange, regulatory and clearing fees are left out.
    "interactive_brokers_fixed": PerShareCommission(per_share=0.005, minimum=1.0, maximum_pct=0.01),
    "interactive_brokers_tiered": PerShareCommission(per_share=0.0035, minimum=0.35, maximum_pct=0.01),
    "finrl": ProportionalCommission(0.001),
    "flat_retail": PerOrderCommission(4.95),
    "bps_5": BpsCommission(5.0),
}


def commission_model(name: str) -> CommissionModel:
    """Look up a broker preset by name.

    :param name: a key of :data:`BROKER_PRESETS`
    :return: the commission model
    """
    try:
        return BROKER_PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(BROKER_PRESETS))
        raise ValueError(f"unknown commission preset {name!r}; known presets: {known}") from None


# ----------------------------------------------------------------------------------------------------------
# Trailing market statistics
# ----------------------------------------------------------------------------------------------------------


def _check_window(window: int) -> None:
    if int(window) != window or window < 1:
        raise ValueError(f"window must be a positive integer, got {window!r}")


def _trailing_sum(values: np.ndarray, window: int) -> np.ndarray:
    """Sum over rows ``t-window+1 .. t`` along axis 0 from one cumulative sum: O(T) whatever the window."""
    cumulative = np.cumsum(values, axis=0)
    total = cumulative.copy()
    total[window:] -= cumulative[:-window]
    return total


def _trailing_sum_count(values: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trailing sum and count of the finite entries, and the zero-filled values the sum was taken over."""
    finite = np.isfinite(values)
    filled = np.where(finite, values, 0.0)
    return _trailing_sum(filled, window), _trailing_sum(finite.astype(np.float64), window), filled


def trailing_mean(values: np.ndarray, window: int, *, empty: float = 0.0) -> np.ndarray:
    """Causal rolling mean along axis 0 over the last ``window`` rows, using as many rows as exist.

    Matches ``pandas.DataFrame.rolling(window, min_periods=1).mean()``: non-finite entries (NaN, ±inf) are
    skipped. Where the window holds no finite entry, pandas gives NaN; this returns ``empty`` instead.

    :param values: array ``[T, ...]``, time on axis 0
    :param window: number of trailing rows, including the current one
    :param empty: value for windows without a single finite entry
    :return: array of the same shape as ``values``
    """
    _check_window(window)
    values = np.asarray(values, dtype=np.float64)
    total, count, _ = _trailing_sum_count(values, window)
    mean = np.divide(total, count, out=np.full_like(total, empty), where=count > 0)
    return mean


def trailing_adv(volume: np.ndarray, window: int = 20) -> np.ndarray:
    """Average daily volume in shares over the trailing ``window`` bars, today's bar included.

    The first bars average the bars that exist (row 0 is its own volume). Missing volumes are skipped; a
    window without any volume gives 0.0, which :meth:`CostModel.execute` treats as no liquidity
    (participation 1.0) rather than free trading.

    :param volume: traded shares ``[T, N]``
    :param window: number of trailing bars
    :return: ADV ``[T, N]``, ``>= 0``
    """
    # Cumulative-sum differences can leave a tiny negative remainder after large volumes; volume cannot be.
    return np.maximum(trailing_mean(volume, window, empty=0.0), 0.0)


def trailing_volatility(close: np.ndarray, window: int = 20, *, fallback: float = 0.0) -> np.ndarray:
    """Sample standard deviation (``ddof=1``) of the daily simple returns over the trailing ``window`` returns.

    Row ``t`` uses the returns ``close[s] / close[s-1] - 1`` for ``s`` in ``t-window+1 .. t``; the return into
    a bar with a missing or non-positive close on either side is skipped. Rows with fewer than two returns in
    their window (always rows 0 and 1) get ``fallback``: back-filling the first real estimate would leak the
    future into the first decisions. With the default 0.0 there is no volatility-driven impact until two
    returns exist.

    :param close: closes ``[T, N]``
    :param window: number of trailing returns
    :param fallback: value for rows without two returns
    :return: daily return volatility ``[T, N]``, ``>= 0``
    """
    _check_window(window)
    close = np.asarray(close, dtype=np.float64)
    returns = np.full_like(close, np.nan)
    usable = np.isfinite(close) & (close > 0)
    pair = usable[1:] & usable[:-1]
    np.divide(close[1:], close[:-1], out=returns[1:], where=pair)
    returns[1:][pair] -= 1.0
    total, count, filled = _trailing_sum_count(returns, window)
    squares = _trailing_sum(filled * filled, window)
    enough = count >= 2
    safe_count = np.where(enough, count, 2.0)
    variance = (squares - total * total / safe_count) / (safe_count - 1.0)
    # Sum-of-squares minus squared-sum can round to a hair below zero for (near) constant returns.
    return np.where(enough, np.sqrt(np.maximum(variance, 0.0)), fallback)


# ----------------------------------------------------------------------------------------------------------
# Half-spread estimators
# ----------------------------------------------------------------------------------------------------------


def fixed_half_spread(shape: tuple[int, ...], bps: float) -> np.ndarray:
    """A constant spread.

    :param shape: output shape, usually ``(T, N)``
    :param bps: the FULL bid-ask spread in basis points; half of it is returned
    :return: half-spread as a fraction of price
    """
    _require_non_negative(bps=bps)
    return np.full(shape, 0.5 * bps * 1e-4)


def quote_half_spread(bid: np.ndarray, ask: np.ndarray) -> np.ndarray:
    """Half the quoted spread relative to the mid price: ``(ask - bid) / (ask + bid)``.

    Crossed quotes (``ask < bid``) give 0.0. Missing or non-positive quotes give NaN: there is no sensible
    value to invent, so fill those (e.g. forward or with :func:`fixed_half_spread`) before simulating.

    :param bid: bid prices
    :param ask: ask prices, same shape as ``bid``
    :return: half-spread as a fraction of the mid price
    """
    bid = np.asarray(bid, dtype=np.float64)
    ask = np.asarray(ask, dtype=np.float64)
    valid = np.isfinite(bid) & np.isfinite(ask) & (bid > 0) & (ask > 0)
    half = np.full(np.broadcast_shapes(bid.shape, ask.shape), np.nan)
    np.divide(ask - bid, ask + bid, out=half, where=valid)
    return np.where(valid, np.maximum(half, 0.0), np.nan)


_CS_K = 3.0 - 2.0 * math.sqrt(2.0)


def corwin_schultz_half_spread(
    high: np.ndarray, low: np.ndarray, window: int = 20, fallback_bps: float = 10.0
) -> np.ndarray:
    """Corwin & Schultz (2012) high-low spread estimator, made causal.

    The two-day estimate at row ``t`` uses bars ``t-1`` and ``t`` (the paper pairs ``t`` with ``t+1``, which
    would look one bar ahead)::

        beta  = ln(H[t-1] / L[t-1])^2 + ln(H[t] / L[t])^2
        gamma = ln(max(H[t-1], H[t]) / min(L[t-1], L[t]))^2
        alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2))
        S     = 2 (e^alpha - 1) / (1 + e^alpha)

    Negative two-day estimates are set to 0, as in the paper, and then averaged over the last ``window``
    rows (``t-window+1 .. t``, as many as exist). No overnight-return adjustment is applied. Two-day estimates
    from missing or non-positive prices are skipped; rows without any estimate (row 0) get ``fallback_bps``.

    :param high: bar highs ``[T, N]``
    :param low: bar lows ``[T, N]``
    :param window: number of two-day estimates averaged
    :param fallback_bps: FULL spread in basis points for rows without an estimate
    :return: half-spread as a fraction of price ``[T, N]``, ``>= 0`` and never NaN
    """
    _check_window(window)
    _require_non_negative(fallback_bps=fallback_bps)
    high = np.asarray(high, dtype=np.float64)
    low = np.asarray(low, dtype=np.float64)
    spread = np.full(np.broadcast_shapes(high.shape, low.shape), np.nan)
    if spread.shape[0] > 1:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            range_sq = np.log(high / low) ** 2
            beta = range_sq[1:] + range_sq[:-1]
            gamma = np.log(np.maximum(high[1:], high[:-1]) / np.minimum(low[1:], low[:-1])) ** 2
            alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / _CS_K - np.sqrt(gamma / _CS_K)
            # 2 (e^a - 1) / (1 + e^a) == 2 tanh(a / 2), which cannot overflow.
            two_day = 2.0 * np.tanh(0.5 * alpha)
        # Non-finite estimates (bad prices) stay NaN, so the trailing mean skips them.
        spread[1:] = np.where(np.isfinite(two_day), np.maximum(two_day, 0.0), np.nan)
    return 0.5 * trailing_mean(spread, window, empty=fallback_bps * 1e-4)


# ----------------------------------------------------------------------------------------------------------
# Market impact
# ----------------------------------------------------------------------------------------------------------


@runtime_checkable
class ImpactModel(Protocol):
    """Price impact of an order as a fraction of the reference price."""

    def temporary(self, participation: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """
        :param participation: ``|shares| / ADV``
        :param sigma: daily return volatility
        :return: temporary impact as a fraction of price (paid by this order only)
        """
        ...

    def permanent(self, participation: np.ndarray) -> np.ndarray:
        """
        :param participation: ``|shares| / ADV``
        :return: permanent impact as a fraction of price (the price level shift the order leaves behind)
        """
        ...


@dataclass(frozen=True)
class LinearImpact:
    """Linear temporary and permanent impact (Almgren & Chriss 2000); the project's seed model.

    :param alpha: temporary impact per unit participation, in units of daily volatility
    :param beta: permanent impact per unit participation, as a fraction of price
    """

    alpha: float = 0.1
    beta: float = 0.05

    def __post_init__(self) -> None:
        _require_non_negative(alpha=self.alpha, beta=self.beta)

    def temporary(self, participation: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return self.alpha * np.multiply(participation, sigma)

    def permanent(self, participation: np.ndarray) -> np.ndarray:
        return self.beta * np.asarray(participation, dtype=np.float64)


@dataclass(frozen=True)
class SquareRootImpact:
    """Square-root temporary impact ``eta * sigma * sqrt(participation)`` (Almgren et al. 2005), linear permanent.

    :param eta: temporary impact coefficient, in units of daily volatility
    :param beta: permanent impact per unit participation, as a fraction of price
    """

    eta: float = 1.0
    beta: float = 0.0

    def __post_init__(self) -> None:
        _require_non_negative(eta=self.eta, beta=self.beta)

    def temporary(self, participation: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return self.eta * np.multiply(sigma, np.sqrt(participation))

    def permanent(self, participation: np.ndarray) -> np.ndarray:
        return self.beta * np.asarray(participation, dtype=np.float64)


@dataclass(frozen=True)
class NoImpact:
    """Orders of any size trade at the quoted price."""

    def temporary(self, participation: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        return np.zeros(np.broadcast_shapes(np.shape(participation), np.shape(sigma)))

    def permanent(self, participation: np.ndarray) -> np.ndarray:
        return np.zeros(np.shape(participation))


# ----------------------------------------------------------------------------------------------------------
# The combined model
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Execution:
    """Prices and costs of a batch of orders, element-wise.

    Against the reference price, a buy of ``q`` shares costs ``q * ref + total_cost`` and a sell raises
    ``q * ref - total_cost``.
    """

    fill_price: np.ndarray  # per share, what the trade is executed at
    commission: np.ndarray  # currency, >= 0
    spread_cost: np.ndarray  # currency, >= 0: |q| * ref * half_spread
    impact_cost: np.ndarray  # currency, >= 0: |q| * ref * (temporary + permanent / 2)

    @property
    def total_cost(self) -> np.ndarray:
        """Commission, spread and impact together, in currency."""
        return self.commission + self.spread_cost + self.impact_cost


def _participation(abs_shares: np.ndarray, adv: np.ndarray | float) -> np.ndarray:
    """``|shares| / ADV``: 0 for infinite ADV, 1.0 (the whole day's volume) for ADV that is ``<= 0`` or NaN."""
    adv = np.asarray(adv, dtype=np.float64)
    if adv.ndim == 0:
        value = float(adv)
        # `value > 0` is False for NaN, so unknown liquidity is treated like none.
        if value > 0:
            return abs_shares / value
        return np.ones(abs_shares.shape)
    participation = np.ones(np.broadcast_shapes(abs_shares.shape, adv.shape))
    np.divide(abs_shares, adv, out=participation, where=adv > 0)
    return participation


def _as_shape(values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` as a writable array of ``shape``; copies only when an input's broadcasting left it smaller."""
    if np.shape(values) == shape and isinstance(values, np.ndarray):
        return values
    return np.array(np.broadcast_to(values, shape), dtype=np.float64)


@dataclass(frozen=True)
class CostModel:
    """Commission plus half-spread plus market impact for signed share orders.

    A buy fills at ``ref * (1 + half_spread + temporary + permanent / 2)`` and a sell at
    ``ref * (1 - ...)``: permanent impact counts half because the price moves through it during the execution.
    The commission is charged on ``|shares| * fill_price``.

    :param commission: broker commission
    :param impact: market impact
    """

    commission: CommissionModel = ProportionalCommission(0.001)
    impact: ImpactModel = NoImpact()

    @classmethod
    def finrl(cls, rate: float = 0.001) -> CostModel:
        """FinRL's cost model: proportional commission at the reference price, no spread, no impact.

        Buying ``q`` shares at ``p`` then changes cash by ``-(q p + q p rate)``, FinRL's ``p q (1 + rate)``.

        :param rate: FinRL's ``buy_cost_pct`` / ``sell_cost_pct``
        """
        return cls(commission=ProportionalCommission(rate), impact=NoImpact())

    def execute(
        self,
        shares: np.ndarray,
        ref_price: np.ndarray,
        half_spread: np.ndarray | float = 0.0,
        adv: np.ndarray | float = np.inf,
        sigma: np.ndarray | float = 0.0,
    ) -> Execution:
        """Price signed orders against the reference price and the market state known at the decision.

        Participation is ``|shares| / adv``: 0 where ``adv`` is ``inf`` (no impact), 1.0 where ``adv`` is
        ``<= 0`` or NaN (no known liquidity: the order is as large as a whole day's volume). A sell cannot fill
        below zero: in the degenerate case where spread plus impact exceed the whole price, the impact (then the
        spread) is reduced until the seller receives nothing. Negative spreads and volatilities count as 0.
        ``half_spread`` and ``sigma`` must not be NaN.

        :param shares: signed shares, ``+`` buys and ``-`` sells
        :param ref_price: reference price per share (the next open, or the decision close)
        :param half_spread: half the bid-ask spread as a fraction of price
        :param adv: average daily volume in shares
        :param sigma: daily return volatility
        :return: fill prices and the costs, element-wise, in the broadcast shape of the inputs
        """
        shares = np.asarray(shares, dtype=np.float64)
        ref_price = np.asarray(ref_price, dtype=np.float64)
        abs_shares = np.abs(shares)
        side = np.sign(shares)
        spread = np.maximum(half_spread, 0.0)

        if isinstance(self.impact, NoImpact):
            # Skip the participation arithmetic on the common no-impact path.
            impact: np.ndarray | float = 0.0
        else:
            participation = _participation(abs_shares, adv)
            volatility = np.maximum(sigma, 0.0)
            impact = self.impact.temporary(participation, volatility) + 0.5 * self.impact.permanent(
                participation
            )
        slippage = spread + impact

        if np.max(slippage) > 1.0:
            # Rare: cap a sell's slippage at the whole price so its fill (and commission) stays >= 0.
            sells = shares < 0
            spread = np.where(sells, np.minimum(spread, 1.0), spread)
            impact = np.where(sells, np.minimum(impact, 1.0 - spread), impact)
            slippage = spread + impact

        fill_price = ref_price * (1.0 + side * slippage)
        reference_value = abs_shares * ref_price
        commission = self.commission(abs_shares, fill_price)
        spread_cost = reference_value * spread
        impact_cost = reference_value * impact
        shape = np.shape(fill_price)
        parts = (fill_price, commission, spread_cost, impact_cost)
        # The usual case, on the backtest's hot path: every part already has the orders' shape.
        if all(isinstance(part, np.ndarray) and part.shape == shape for part in parts):
            return Execution(*parts)
        shape = np.broadcast_shapes(*(np.shape(part) for part in parts))
        return Execution(
            fill_price=_as_shape(fill_price, shape),
            commission=_as_shape(commission, shape),
            spread_cost=_as_shape(spread_cost, shape),
            impact_cost=_as_shape(impact_cost, shape),
        )
