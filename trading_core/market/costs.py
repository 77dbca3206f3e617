"""Transaction costs: broker commissions, market impact and the cost model that combines them with a half-spread.

The per-step functions (commission models, impact models, :meth:`CostModel.execute`) are vectorised numpy
called by the simulator with ``[n_envs, n_assets]`` arrays on every step. The causal estimators they are fed
(half-spreads from quotes, Corwin–Schultz and Abdi–Ranaldo; ADV; volatility) live in
:mod:`trading_core.features.market_statistics`, shared with the microstructure features, and are re-exported here.

References:

- Almgren, R. and Chriss, N. (2000). Optimal Execution of Portfolio Transactions. Journal of Risk 3, 5-39
  (linear temporary and permanent impact).
- Almgren, R., Thum, C., Hauptmann, E. and Li, H. (2005). Direct Estimation of Equity Market Impact. Risk 18
  (square-root temporary impact).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# The bar statistics and spread estimators live with the features (a lower layer, so features can use them);
# they are re-exported here, where the cost model's callers have always found them.
from trading_core.features.market_statistics import (  # noqa: F401
    abdi_ranaldo_half_spread,
    abdi_ranaldo_half_spread_of_mean,
    abdi_ranaldo_pair_term,
    corwin_schultz_half_spread,
    corwin_schultz_two_bar_spread,
    fixed_half_spread,
    quote_half_spread,
    trailing_adv,
    trailing_mean,
    trailing_volatility,
)
from trading_core.features.market_statistics import require_non_negative as _require_non_negative

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
