"""Settlement dates by asset class on a business-day calendar."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, timedelta

from domain.models import AssetClass

# Settlement cycle in business days after trade date.
SETTLEMENT_CYCLE: dict[AssetClass, int] = {
    AssetClass.EQUITY: 1,  # US equities: T+1 since May 2024
    AssetClass.FX_SPOT: 2,
    AssetClass.CRYPTO: 0,
}

# Crypto settles on any day; the others only on business days.
_CALENDAR_DAYS_ONLY = frozenset({AssetClass.CRYPTO})


def is_business_day(day: date, holidays: Iterable[date] = ()) -> bool:
    """Tell whether `day` is a weekday and not a holiday."""
    return day.weekday() < 5 and day not in set(holidays)


def settlement_date(
    trade_date: date, asset_class: AssetClass, holidays: Iterable[date] = ()
) -> date:
    """Return the settlement date for a trade: T+n business days, weekends and holidays skipped.

    A trade booked on a non-business day counts from the next business day, as a venue would book it.
    """
    if asset_class in _CALENDAR_DAYS_ONLY:
        return trade_date
    closed = set(holidays)
    day = trade_date
    while not is_business_day(day, closed):
        day += timedelta(days=1)
    remaining = SETTLEMENT_CYCLE[asset_class]
    while remaining > 0:
        day += timedelta(days=1)
        if is_business_day(day, closed):
            remaining -= 1
    return day
