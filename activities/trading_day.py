"""When a trading day ends for an instrument: what a day order's time in force runs until.

Exchange-traded instruments close by their exchange's calendar (`exchange_calendars`: holidays
and early closes included); spot FX by the market's convention, 17:00 New York on weekdays;
crypto at midnight UTC, every day.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import exchange_calendars
import pandas as pd

from domain.models import AssetClass
from domain.portfolio import InstrumentData

_NEW_YORK = ZoneInfo("America/New_York")
_FX_CLOSE = time(17, 0)
_SATURDAY, _SUNDAY = 5, 6


@functools.cache
def _calendar(market: str) -> exchange_calendars.ExchangeCalendar | None:
    try:
        return exchange_calendars.get_calendar(market)
    except exchange_calendars.errors.InvalidCalendarName:
        return None


def _fx_close(at: datetime) -> datetime:
    local = at.astimezone(_NEW_YORK)
    close = datetime.combine(local.date(), _FX_CLOSE, tzinfo=_NEW_YORK)
    if local >= close:
        close += timedelta(days=1)
    while close.weekday() in (_SATURDAY, _SUNDAY):
        close += timedelta(days=1)
    return close.astimezone(UTC)


def session_close(instrument: InstrumentData, at: datetime) -> datetime | None:
    """Return when the trading day that `at` falls in (or the next one) ends; None: not known."""
    if instrument.asset_class is AssetClass.CRYPTO:
        return datetime.combine(at.astimezone(UTC).date() + timedelta(days=1), time(0), tzinfo=UTC)
    if instrument.asset_class is AssetClass.FX_SPOT:
        return _fx_close(at)
    market = instrument.hours.market if instrument.hours is not None else None
    calendar = _calendar(market) if market else None
    if calendar is None:
        return None
    moment = pd.Timestamp(at.astimezone(UTC))
    if not calendar.first_minute <= moment < calendar.last_minute:
        return None  # outside the calendar's known years
    close: datetime = calendar.next_close(moment).to_pydatetime()
    return close.astimezone(UTC)
