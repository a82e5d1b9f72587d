"""The date-and-time rule evaluator: examples, brute-force properties, validation messages."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.config_rules import ConfigError
from node.pbx import time_rules as tr

BERLIN = "Europe/Berlin"


def at(*args) -> dt.datetime:
    return dt.datetime(*args)


def test_first_monday_of_jan_and_feb_2010_to_2015_morning():
    c = tr.parse_condition({"time": "8:00-10:30", "weekdays": "mon", "days": "1-7",
                            "months": ["jan", "feb"], "years": "2010-2015"})
    assert c.matches(at(2013, 1, 7, 8, 0))          # first Monday of January 2013
    assert c.matches(at(2013, 2, 4, 10, 29))        # first Monday of February 2013
    assert not c.matches(at(2013, 2, 4, 10, 30))    # end is exclusive
    assert not c.matches(at(2013, 2, 4, 7, 59))
    assert not c.matches(at(2013, 1, 14, 9, 0))     # second Monday
    assert not c.matches(at(2013, 3, 4, 9, 0))      # March
    assert not c.matches(at(2016, 1, 4, 9, 0))      # 2016
    assert not c.matches(at(2013, 1, 8, 9, 0))      # Tuesday


def test_ranges_that_wrap():
    night = tr.parse_condition({"time": "22:00-06:00"})
    assert night.matches(at(2026, 1, 1, 23, 0)) and night.matches(at(2026, 1, 1, 5, 59))
    assert not night.matches(at(2026, 1, 1, 6, 0)) and not night.matches(at(2026, 1, 1, 21, 59))
    weekend = tr.parse_condition({"weekdays": "fri-mon"})
    assert [weekend.matches(at(2026, 1, 5 + i)) for i in range(7)] == [True, False, False, False, True, True, True]
    winter = tr.parse_condition({"months": "nov-feb"})
    assert [winter.matches(at(2026, m, 1)) for m in range(1, 13)] == [
        True, True, False, False, False, False, False, False, False, False, True, True]


def test_days_from_the_end_last_friday():
    last_friday = tr.parse_condition({"weekdays": "friday", "days": "-7--1"})
    assert last_friday.matches(at(2026, 2, 27))  # February 2026 has 28 days
    assert not last_friday.matches(at(2026, 2, 20))
    assert tr.parse_condition({"days": -1}).matches(at(2024, 2, 29))  # leap day is the last one


def test_dates_and_holidays():
    h = tr.parse_dates(["12-25", "2026-04-03", "2026-08-01..2026-08-15"])
    assert at(2031, 12, 25).date() in h and at(2026, 4, 3).date() in h and at(2027, 4, 3).date() not in h
    assert at(2026, 8, 15).date() in h and at(2026, 8, 16).date() not in h
    c = tr.parse_condition({"holidays": "public"})
    assert c.matches(at(2026, 12, 25, 12), {"public": h})
    assert not c.matches(at(2026, 12, 24, 12), {"public": h})
    assert not c.matches(at(2026, 12, 25, 12), {})  # an unknown list holds no day


def test_evaluated_in_local_time_across_dst():
    cond = tr.parse_when({"time": "09:00-17:00", "weekdays": "mon-fri"})
    # 2026-03-30 07:30 UTC is 09:30 in Berlin (summer time), 2026-03-27 07:30 UTC is 08:30 (winter)
    summer = dt.datetime(2026, 3, 30, 7, 30, tzinfo=dt.timezone.utc).timestamp()
    winter = dt.datetime(2026, 3, 27, 7, 30, tzinfo=dt.timezone.utc).timestamp()
    assert tr.holds(cond, tr.local(summer, BERLIN))
    assert not tr.holds(cond, tr.local(winter, BERLIN))
    assert tr.holds(cond, tr.local(winter, "UTC")) is False  # 07:30 UTC: before opening


@pytest.mark.parametrize("doc, message", [
    ({"time": "8-10"}, "not a time HH:MM"),
    ({"time": "25:00-26:00"}, "not a time HH:MM"),
    ({"time": "10:00-10:00"}, "is empty"),
    ({"weekdays": "funday"}, "not one of mon"),
    ({"days": 32}, "out of range"),
    ({"days": "5-1"}, "run forwards"),
    ({"months": 13}, "out of range"),
    ({"years": "2015-2010"}, "run forwards"),
    ({"dates": ["2026-02-30"]}, "not a date"),
    ({"dates": ["2026-03-02..2026-03-01"]}, "ends before it starts"),
    ({"hours": "8-9"}, "unknown time condition field"),
    ({"weekdays": []}, "non-empty list"),
])
def test_validation_messages(doc, message):
    with pytest.raises(ConfigError, match=message):
        tr.parse_condition(doc)


minutes = st.integers(0, 1439)


@given(a=minutes, b=minutes, t=minutes)
@settings(max_examples=300, deadline=None)
def test_time_range_matches_brute_force(a, b, t):
    if a == b:
        return
    spec = f"{a // 60:02d}:{a % 60:02d}-{b // 60:02d}:{b % 60:02d}"
    c = tr.parse_condition({"time": spec})
    inside = {m % 1440 for m in range(a, b if b > a else b + 1440)}
    assert c.matches(at(2026, 6, 1, t // 60, t % 60)) == (t in inside)


@given(day=st.dates(dt.date(2000, 1, 1), dt.date(2100, 12, 31)),
       wd=st.integers(0, 6), n=st.integers(1, 4))
@settings(max_examples=300, deadline=None)
def test_nth_weekday_of_month_brute_force(day, wd, n):
    names = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
    c = tr.parse_condition({"weekdays": names[wd], "days": f"{7 * n - 6}-{7 * n}"})
    same_weekdays_before = sum(1 for d in range(1, day.day) if dt.date(day.year, day.month, d).weekday() == wd)
    expected = day.weekday() == wd and same_weekdays_before == n - 1
    assert c.matches(dt.datetime.combine(day, dt.time(12))) == expected


@given(ts=st.floats(0, 4e9), tz=st.sampled_from(["UTC", BERLIN, "America/New_York", "Asia/Kolkata"]))
@settings(max_examples=200, deadline=None)
def test_local_time_is_the_zones_wall_clock(ts, tz):
    local = tr.local(ts, tz)
    assert local.utcoffset() is not None and abs(local.timestamp() - ts) < 1e-3
