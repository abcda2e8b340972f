"""Settlement dates by asset class on a business-day calendar."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from domain.models import AssetClass
from domain.settlement import SETTLEMENT_CYCLE, is_business_day, settlement_date

EQ, FX, CRYPTO = AssetClass.EQUITY, AssetClass.FX_SPOT, AssetClass.CRYPTO

# March 2025: Mon 10, Tue 11, Wed 12, Thu 13, Fri 14, Sat 15, Sun 16, Mon 17, Tue 18, Wed 19.
MON, TUE, WED, THU, FRI = (date(2025, 3, d) for d in (10, 11, 12, 13, 14))
SAT, SUN = date(2025, 3, 15), date(2025, 3, 16)
NEXT_MON, NEXT_TUE, NEXT_WED = date(2025, 3, 17), date(2025, 3, 18), date(2025, 3, 19)

# US market holidays used as a calendar.
JULY_4 = date(2025, 7, 4)  # a Friday
THANKSGIVING = date(2025, 11, 27)  # a Thursday
XMAS, BOXING = date(2025, 12, 25), date(2025, 12, 26)  # Thursday, Friday


@pytest.mark.parametrize(
    ("trade", "asset_class", "holidays", "settles"),
    [
        pytest.param(MON, EQ, [], TUE, id="equity-mon-tue"),
        pytest.param(THU, EQ, [], FRI, id="equity-thu-fri"),
        pytest.param(FRI, EQ, [], NEXT_MON, id="equity-fri-mon"),
        pytest.param(SAT, EQ, [], NEXT_TUE, id="equity-sat-counts-from-mon"),
        pytest.param(SUN, EQ, [], NEXT_TUE, id="equity-sun-counts-from-mon"),
        pytest.param(MON, FX, [], WED, id="fx-mon-wed"),
        pytest.param(THU, FX, [], NEXT_MON, id="fx-thu-mon"),
        pytest.param(FRI, FX, [], NEXT_TUE, id="fx-fri-tue"),
        pytest.param(SAT, FX, [], NEXT_WED, id="fx-sat-counts-from-mon"),
        pytest.param(WED, CRYPTO, [], WED, id="crypto-t0"),
        pytest.param(SAT, CRYPTO, [], SAT, id="crypto-saturday"),
        pytest.param(SUN, CRYPTO, [], SUN, id="crypto-sunday"),
        pytest.param(XMAS, CRYPTO, [XMAS], XMAS, id="crypto-ignores-holidays"),
        # Holidays
        pytest.param(date(2025, 7, 3), EQ, [JULY_4], date(2025, 7, 7), id="equity-july-4"),
        pytest.param(date(2025, 7, 2), FX, [JULY_4], date(2025, 7, 7), id="fx-july-4"),
        pytest.param(
            date(2025, 11, 26), EQ, [THANKSGIVING], date(2025, 11, 28), id="equity-thanksgiving"
        ),
        pytest.param(
            date(2025, 12, 24), EQ, [XMAS, BOXING], date(2025, 12, 29), id="equity-two-holidays"
        ),
        pytest.param(
            date(2025, 12, 24), FX, [XMAS, BOXING], date(2025, 12, 30), id="fx-two-holidays"
        ),
        pytest.param(XMAS, EQ, [XMAS, BOXING], date(2025, 12, 30), id="equity-traded-on-holiday"),
        pytest.param(THU, EQ, [date(2025, 12, 1)], FRI, id="unrelated-holiday"),
    ],
)
def test_settlement_date(
    trade: date, asset_class: AssetClass, holidays: list[date], settles: date
) -> None:
    assert settlement_date(trade, asset_class, holidays) == settles


def test_holidays_may_be_any_iterable() -> None:
    holidays = (d for d in [XMAS, BOXING])
    assert settlement_date(date(2025, 12, 24), EQ, holidays) == date(2025, 12, 29)


def test_cycles() -> None:
    assert SETTLEMENT_CYCLE == {EQ: 1, FX: 2, CRYPTO: 0}
    assert set(SETTLEMENT_CYCLE) == set(AssetClass)


@pytest.mark.parametrize(
    ("day", "holidays", "business"),
    [
        (MON, [], True),
        (FRI, [], True),
        (SAT, [], False),
        (SUN, [], False),
        (XMAS, [XMAS], False),
        (XMAS, [BOXING], True),
    ],
)
def test_is_business_day(day: date, holidays: list[date], business: bool) -> None:
    assert is_business_day(day, holidays) is business


@pytest.mark.parametrize("asset_class", [EQ, FX])
def test_settles_on_a_business_day_after_trade_date(asset_class: AssetClass) -> None:
    holidays = [JULY_4, THANKSGIVING, XMAS, BOXING]
    start = date(2025, 1, 1)
    for offset in range(366):
        trade = start + timedelta(days=offset)
        settles = settlement_date(trade, asset_class, holidays)
        assert settles > trade
        assert is_business_day(settles, holidays)
        between = [
            trade + timedelta(days=n)
            for n in range(1, (settles - trade).days)
            if is_business_day(trade + timedelta(days=n), holidays)
        ]
        # T+n: the trade date (or the next business day) plus n business days.
        expected_between = SETTLEMENT_CYCLE[asset_class] - 1
        if not is_business_day(trade, holidays):
            expected_between += 1
        assert len(between) == expected_between
