"""A GICS-like sector for every ticker: pytickersymbols' offline index constituents, a small fund table, a user
file over both, and ``Unknown`` (source ``unclassified``) for whatever none of them knows, never a guess.

pytickersymbols tags each stock with a handful of free-text industries from mixed vocabularies (Refinitiv's
economic sectors such as ``Consumer Cyclicals``, Wikipedia's ``Pharmaceutical industry``, ...). Each tag is mapped
to one of the eleven GICS sector names by the first keyword rule it matches; the stock's sector is the one most
of its tags name (ties: the rule listed first), its industry the shortest matching tag that is not a sector name.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Literal

import pandas as pd

from trading_core.data.schema import UNKNOWN_SECTOR
from trading_core.market.arrays import MarketArrays

GICS_SECTORS: tuple[str, ...] = (
    "Energy",
    "Materials",
    "Industrials",
    "Consumer Discretionary",
    "Consumer Staples",
    "Health Care",
    "Financials",
    "Information Technology",
    "Communication Services",
    "Utilities",
    "Real Estate",
)
# Funds that hold a mix of sectors (broad indices, commodities, volatility, leveraged products).
FUND_SECTOR = "ETF"
# Every label a sector map holds: the one vocabulary of the package, the fund table and the user file.
SECTORS: tuple[str, ...] = (*GICS_SECTORS, FUND_SECTOR, UNKNOWN_SECTOR)
SectorSource = Literal["file", "pytickersymbols", "etf", "unclassified"]
SECTOR_MAP_COLUMNS: tuple[str, ...] = ("tic", "sector", "industry", "source")


@dataclass(frozen=True)
class Classification:
    """One ticker's sector (a name of :data:`SECTORS`), its industry (free text) and where they came from."""

    sector: str
    industry: str
    source: SectorSource


# Keyword (lower case, matched inside a tag) -> GICS sector. Order matters: the first rule a tag matches wins,
# so the specific rules ("real estate investment trust health care", "managed healthcare insurance",
# "food & drug retailing", "automotive renewable energy") come before the general ones they contain.
_RULES: tuple[tuple[str, str], ...] = (
    ("reit", "Real Estate"),
    ("retis", "Real Estate"),
    ("real estate", "Real Estate"),
    ("immobilien", "Real Estate"),
    ("health", "Health Care"),
    ("pharma", "Health Care"),
    ("biotech", "Health Care"),
    ("medic", "Health Care"),
    ("life sciences", "Health Care"),
    ("telecom", "Communication Services"),
    ("broadcast", "Communication Services"),
    ("media", "Communication Services"),
    ("entertainment", "Communication Services"),
    ("publishing", "Communication Services"),
    ("advertising", "Communication Services"),
    ("video games", "Communication Services"),
    ("cable", "Communication Services"),
    ("wireless", "Communication Services"),
    ("payment", "Financials"),
    ("insurance", "Financials"),
    ("bank", "Financials"),
    ("financ", "Financials"),
    ("invest", "Financials"),
    ("asset management", "Financials"),
    ("exchange", "Financials"),
    ("lending", "Financials"),
    ("online food", "Consumer Discretionary"),
    ("food delivery", "Consumer Discretionary"),
    ("consumer non-cyclical", "Consumer Staples"),
    ("consumer defensive", "Consumer Staples"),
    ("consumer staples", "Consumer Staples"),
    ("food", "Consumer Staples"),
    ("beverage", "Consumer Staples"),
    ("drink", "Consumer Staples"),
    ("tobacco", "Consumer Staples"),
    ("household", "Consumer Staples"),
    ("personal", "Consumer Staples"),
    ("cosmetic", "Consumer Staples"),
    ("brewer", "Consumer Staples"),
    ("grocery", "Consumer Staples"),
    ("automo", "Consumer Discretionary"),
    ("auto ", "Consumer Discretionary"),
    ("auto,", "Consumer Discretionary"),
    ("consumer cyclical", "Consumer Discretionary"),
    ("cyclical consumer", "Consumer Discretionary"),
    ("consumer discretionary", "Consumer Discretionary"),
    ("hotel", "Consumer Discretionary"),
    ("hospitality", "Consumer Discretionary"),
    ("lodging", "Consumer Discretionary"),
    ("restaurant", "Consumer Discretionary"),
    ("retail", "Consumer Discretionary"),
    ("stores", "Consumer Discretionary"),
    ("apparel", "Consumer Discretionary"),
    ("clothing", "Consumer Discretionary"),
    ("footwear", "Consumer Discretionary"),
    ("accessories", "Consumer Discretionary"),
    ("sports equipment", "Consumer Discretionary"),
    ("home improvement", "Consumer Discretionary"),
    ("leisure", "Consumer Discretionary"),
    ("casino", "Consumer Discretionary"),
    ("travel", "Consumer Discretionary"),
    ("e-commerce", "Consumer Discretionary"),
    ("utilit", "Utilities"),
    ("electric power", "Utilities"),
    ("electricity", "Utilities"),
    ("natural gas utility", "Utilities"),
    ("semiconductor", "Information Technology"),
    ("software", "Information Technology"),
    ("computer", "Information Technology"),
    ("information technology", "Information Technology"),
    ("it services", "Information Technology"),
    ("technology", "Information Technology"),
    ("electronic", "Information Technology"),
    ("networking", "Information Technology"),
    ("cloud", "Information Technology"),
    ("internet", "Information Technology"),
    ("cybersecurity", "Information Technology"),
    ("oil", "Energy"),
    ("gas", "Energy"),
    ("petroleum", "Energy"),
    ("coal", "Energy"),
    ("fossil", "Energy"),
    ("energy", "Energy"),
    ("construction", "Industrials"),
    ("aerospace", "Industrials"),
    ("defen", "Industrials"),
    ("industrial", "Industrials"),
    ("machinery", "Industrials"),
    ("equipment", "Industrials"),
    ("conglomerate", "Industrials"),
    ("transport", "Industrials"),
    ("logistic", "Industrials"),
    ("freight", "Industrials"),
    ("railroad", "Industrials"),
    ("airline", "Industrials"),
    ("engineering", "Industrials"),
    ("chemic", "Materials"),
    ("material", "Materials"),
    ("mining", "Materials"),
    ("metal", "Materials"),
    ("steel", "Materials"),
    ("paper", "Materials"),
    ("packaging", "Materials"),
)
# Tags that name a whole sector rather than an industry (never picked as the industry).
_SECTOR_LEVEL_TAGS = frozenset(
    tag.lower()
    for tag in (
        *GICS_SECTORS,
        "Technology",
        "Healthcare",
        "Financial services",
        "Basic Materials",
        "Consumer Cyclicals",
        "Consumer Non-Cyclicals",
        "Consumer Goods",
        "Industrial Goods",
        "Conglomerate",
    )
)

# US-listed funds the package does not hold: sector SPDRs by their sector, the rest as funds.
FUNDS: Mapping[str, tuple[str, str]] = {
    **{tic: (FUND_SECTOR, "Broad market index") for tic in ("SPY", "VOO", "IVV", "VTI", "QQQ", "DIA", "IWM")},
    **{tic: (FUND_SECTOR, "Precious metals") for tic in ("GLD", "IAU", "SLV", "PPLT")},
    **{tic: (FUND_SECTOR, "Energy commodity") for tic in ("USO", "UGA", "UNG")},
    **{tic: (FUND_SECTOR, "Leveraged inverse index") for tic in ("TZA", "SQQQ", "SPXU", "SH")},
    **{tic: (FUND_SECTOR, "Volatility") for tic in ("VXX", "VXXB", "UVXY")},
    "XLE": ("Energy", "Sector fund"),
    "XLB": ("Materials", "Sector fund"),
    "XLI": ("Industrials", "Sector fund"),
    "XLY": ("Consumer Discretionary", "Sector fund"),
    "XLP": ("Consumer Staples", "Sector fund"),
    "XLV": ("Health Care", "Sector fund"),
    "XLF": ("Financials", "Sector fund"),
    "XLK": ("Information Technology", "Sector fund"),
    "XLC": ("Communication Services", "Sector fund"),
    "XLU": ("Utilities", "Sector fund"),
    "XLRE": ("Real Estate", "Sector fund"),
}


def sector_of_tag(tag: str) -> str | None:
    """The GICS sector the first matching keyword rule gives one industry tag (``None``: no rule matches)."""
    lowered = tag.lower()
    return next((sector for keyword, sector in _RULES if keyword in lowered), None)


def classify_industries(tags: Iterable[str]) -> tuple[str, str] | None:
    """``(sector, industry)`` of a stock from its industry tags, or ``None`` when no tag maps to a sector.

    :param tags: pytickersymbols' ``industries`` of one stock
    """
    named = [(tag, sector) for tag in tags if (sector := sector_of_tag(tag)) is not None]
    if not named:
        return None
    votes = Counter(sector for _, sector in named)
    rank = {sector: index for index, (_, sector) in reversed(list(enumerate(_RULES)))}
    sector = min(votes, key=lambda name: (-votes[name], rank[name]))
    voting = [tag for tag, named_sector in named if named_sector == sector]
    specific = [tag for tag in voting if tag.lower() not in _SECTOR_LEVEL_TAGS] or voting
    return sector, min(specific, key=len)


def _listed_symbols(stock: Mapping) -> set[str]:
    """The symbols a stock trades under in US dollars (its main symbol and its USD listings), upper case."""
    symbols = {str(stock["symbol"]).upper()} if stock.get("symbol") else set()
    symbols |= {
        str(listing["yahoo"]).upper()
        for listing in stock.get("symbols", [])
        if listing.get("currency") == "USD" and listing.get("yahoo")
    }
    return {symbol.replace(".", "-") for symbol in symbols}


@cache
def package_classifications() -> Mapping[str, Classification]:
    """Ticker -> classification of every stock pytickersymbols ships whose tags map to a sector (its USD
    listings; a symbol two stocks claim keeps the first in the package's order)."""
    from pytickersymbols import PyTickerSymbols  # a 10 MB table: loaded on first use only

    table: dict[str, Classification] = {}
    for stock in PyTickerSymbols().get_all_stocks():
        classified = classify_industries(stock.get("industries", []))
        if classified is None:
            continue
        for symbol in _listed_symbols(stock):
            table.setdefault(symbol, Classification(*classified, "pytickersymbols"))
    return table


def _vocabulary_sector(label: object, where: str) -> str:
    """``label`` as a name of the vocabulary (case-insensitive), or a one-line error naming ``where``."""
    text = str(label).strip() if isinstance(label, str) else ""
    if not text:
        raise ValueError(f"{where}: empty sector")
    allowed = {name.lower(): name for name in (*GICS_SECTORS, FUND_SECTOR)}
    if text.lower() not in allowed:
        raise ValueError(f"{where}: unknown sector {text!r}; use one of {', '.join(allowed.values())}")
    return allowed[text.lower()]


def load_sector_file(path: str | Path) -> pd.DataFrame:
    """A user's sector file as a frame ``tic, sector, industry`` (sectors spelled as :data:`GICS_SECTORS` or
    ``ETF``, any case; industry optional), checked before use.

    :param path: a CSV file with columns ``tic,sector`` and optionally ``industry``
    :raises ValueError: a missing column, an empty ticker or sector, an unknown sector or a duplicate ticker,
        naming the file and its rows (header = row 1)
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sector file {path}: no such file")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [column for column in ("tic", "sector") if column not in frame.columns]
    if missing:
        raise ValueError(f"sector file {path}: missing column(s) {missing}; it has {list(frame.columns)}")
    tickers = frame["tic"].str.strip().str.upper()
    file_rows = frame.index + 2
    if (tickers == "").any():
        raise ValueError(f"sector file {path}: empty tic on row(s) {list(file_rows[tickers == ''])}")
    duplicated = tickers.duplicated(keep=False)
    if duplicated.any():
        raise ValueError(
            f"sector file {path}: duplicate ticker(s) {sorted(set(tickers[duplicated]))} on row(s) "
            f"{list(file_rows[duplicated])}"
        )
    sectors = [
        _vocabulary_sector(label, f"sector file {path} row {row} ({tic})")
        for label, row, tic in zip(frame["sector"], file_rows, tickers, strict=True)
    ]
    industry = (
        frame["industry"].str.strip() if "industry" in frame.columns else pd.Series("", index=frame.index)
    )
    return pd.DataFrame({"tic": tickers, "sector": sectors, "industry": industry.to_numpy()})


def _override_table(overrides: Mapping[str, str] | pd.DataFrame) -> dict[str, Classification]:
    if isinstance(overrides, pd.DataFrame):
        industries = overrides["industry"] if "industry" in overrides.columns else [""] * len(overrides)
        rows = zip(overrides["tic"], overrides["sector"], industries, strict=True)
    else:
        rows = ((tic, sector, "") for tic, sector in overrides.items())
    return {
        str(tic).upper(): Classification(
            _vocabulary_sector(sector, f"sector override for {tic}"), str(industry or ""), "file"
        )
        for tic, sector, industry in rows
    }


def sector_map(
    tickers: Sequence[str],
    overrides: Mapping[str, str] | pd.DataFrame | None = None,
    source: Mapping[str, Classification] | None = None,
) -> pd.DataFrame:
    """One row per ticker, in the given order: ``tic, sector, industry, source``.

    A ticker takes its sector from ``overrides`` (source ``file``), else from ``source`` (pytickersymbols), else
    from :data:`FUNDS` (``etf``), else it is ``Unknown`` with source ``unclassified``.

    :param tickers: the universe (non-empty strings, no duplicates)
    :param overrides: ticker -> sector, or the frame of :func:`load_sector_file`; tickers outside the universe
        are ignored
    :param source: ticker -> :class:`Classification`; default :func:`package_classifications`
    """
    tickers = list(tickers)
    if not all(isinstance(tic, str) and tic.strip() for tic in tickers):
        raise ValueError(f"tickers must be non-empty strings, got {tickers!r}")
    repeated = sorted({tic for tic in tickers if tickers.count(tic) > 1})
    if repeated:
        raise ValueError(f"tickers: duplicate ticker(s) {repeated}")
    chosen = _override_table(overrides) if overrides is not None else {}
    known = package_classifications() if source is None else source
    rows = []
    for tic in tickers:
        key = tic.strip().upper()
        found = chosen.get(key) or known.get(key)
        if found is None and key in FUNDS:
            found = Classification(*FUNDS[key], "etf")
        found = found or Classification(UNKNOWN_SECTOR, "", "unclassified")
        rows.append({"tic": tic, "sector": found.sector, "industry": found.industry, "source": found.source})
    return pd.DataFrame(rows, columns=list(SECTOR_MAP_COLUMNS))


def unclassified(frame: pd.DataFrame) -> list[str]:
    """The tickers of a sector map that nothing classified."""
    return frame.loc[frame["source"] == "unclassified", "tic"].tolist()


def with_sectors(market: MarketArrays, sectors: Mapping[str, str] | pd.DataFrame) -> MarketArrays:
    """``market`` carrying each of its tickers' sector (:attr:`MarketArrays.sectors`), in column order.

    :param sectors: ticker -> sector, or a :func:`sector_map` frame (extra tickers are ignored)
    :raises ValueError: a ticker of the market has no sector
    """
    labels = (
        dict(zip(sectors["tic"], sectors["sector"], strict=True))
        if isinstance(sectors, pd.DataFrame)
        else sectors
    )
    missing = [tic for tic in market.tickers if tic not in labels]
    if missing:
        raise ValueError(f"sectors: no sector for ticker(s) {missing}")
    return replace(market, sectors=tuple(str(labels[tic]) for tic in market.tickers))


__all__ = [
    "FUNDS",
    "FUND_SECTOR",
    "GICS_SECTORS",
    "SECTORS",
    "SECTOR_MAP_COLUMNS",
    "UNKNOWN_SECTOR",
    "Classification",
    "SectorSource",
    "classify_industries",
    "load_sector_file",
    "package_classifications",
    "sector_map",
    "sector_of_tag",
    "unclassified",
    "with_sectors",
]
