"""When a date-and-time rule holds: pure functions over a local wall-clock datetime.

A condition is a JSON object; every field given must hold (AND), a field left out always
holds. Lists and ranges inside a field are alternatives (OR):

    {"time": "08:00-10:30",            # or a list; end exclusive; "22:00-06:00" wraps midnight
     "weekdays": "mon",                # "mon-fri", ["sat", "sun"], ranges may wrap ("fri-mon")
     "days": "1-7",                    # days of month; negative counts from the end: -1 = last day
     "months": ["jan", "feb"],         # names or 1-12, ranges "nov-feb"
     "years": "2010-2015",
     "dates": ["2026-12-24", "12-31", "2026-04-03..2026-04-06"],   # "MM-DD" = every year
     "holidays": "public"}             # a named holiday list (feature object kind 'holidays')

"8:00-10:30 on the first Monday of January and February, 2010-2015" is
{"time": "8:00-10:30", "weekdays": "mon", "days": "1-7", "months": "jan-feb", "years": "2010-2015"}.
A time range that wraps midnight is judged on the date of the moment tested (Friday 23:00
matches {"weekdays": "fri", "time": "22:00-06:00"}, Saturday 01:00 does not).
Rules are evaluated in the tenant's time zone (``local``), so DST needs no special case.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
import zoneinfo
from dataclasses import dataclass

from node.config_rules import ConfigError

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
_TIME = re.compile(r"([01]?\d|2[0-4]):([0-5]\d)")
_FIELDS = ("time", "weekdays", "days", "months", "years", "dates", "holidays")
MIN_YEAR, MAX_YEAR = 1970, 2200


def local(ts: float, tz: str) -> dt.datetime:
    """Wall-clock time of the POSIX time ``ts`` in the IANA zone ``tz``."""
    return dt.datetime.fromtimestamp(ts, zoneinfo.ZoneInfo(tz) if tz != "UTC" else dt.timezone.utc)


def _items(value: object, what: str) -> list:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in value):
        return value
    raise ConfigError(f"{what} must be a value, a range 'a-b' or a non-empty list of them, not {value!r}")


def _minute(text: str, what: str) -> int:
    m = _TIME.fullmatch(text.strip())
    if m is None or (int(m.group(1)) == 24 and m.group(2) != "00"):
        raise ConfigError(f"{what}: {text!r} is not a time HH:MM (00:00 to 24:00)")
    return int(m.group(1)) * 60 + int(m.group(2))


def _named(token: str | int, names: tuple[str, ...], base: int, what: str, lo: int, hi: int) -> int:
    if isinstance(token, int):
        n = token
    else:
        t = token.strip().lower()
        if t[:3] in names and (len(t) == 3 or any(full.startswith(t) for full in _full_names(names))):
            return names.index(t[:3]) + base
        if not re.fullmatch(r"-?\d+", t):
            raise ConfigError(f"{what}: {token!r} is not one of {', '.join(names) or 'the allowed values'}")
        n = int(t)
    if not lo <= n <= hi or n == 0 and lo < 0:
        raise ConfigError(f"{what}: {n} is out of range ({lo} to {hi})")
    return n


def _full_names(names: tuple[str, ...]) -> tuple[str, ...]:
    if names == _DAYS:
        return tuple(d.lower() for d in calendar.day_name)
    if names == _MONTHS:
        return tuple(m.lower() for m in calendar.month_name[1:])
    return ()


def _ranges(value: object, what: str, names: tuple[str, ...], base: int, lo: int, hi: int) -> tuple[tuple[int, int], ...]:
    out = []
    for item in _items(value, what):
        if isinstance(item, str) and re.fullmatch(r"\s*-?\w+\s*-\s*-?\w+\s*", item) and not re.fullmatch(r"\s*-\d+\s*", item):
            a, b = re.fullmatch(r"\s*(-?\w+)\s*-\s*(-?\w+)\s*", item).groups()
            out.append((_named(a, names, base, what, lo, hi), _named(b, names, base, what, lo, hi)))
        else:
            n = _named(item, names, base, what, lo, hi)
            out.append((n, n))
    return tuple(out)


def _in(value: int, ranges: tuple[tuple[int, int], ...], wrap: bool) -> bool:
    for a, b in ranges:
        if a <= b:
            if a <= value <= b:
                return True
        elif wrap and (value >= a or value <= b):
            return True
    return False


@dataclass(frozen=True, slots=True)
class DateSet:
    """Dates: exact (y, m, d), yearly (m, d), and inclusive ranges of exact dates."""

    exact: frozenset[dt.date]
    yearly: frozenset[tuple[int, int]]
    spans: tuple[tuple[dt.date, dt.date], ...]

    def __contains__(self, day: dt.date) -> bool:
        return (
            day in self.exact
            or (day.month, day.day) in self.yearly
            or any(a <= day <= b for a, b in self.spans)
        )


def _date(text: str, what: str) -> dt.date:
    try:
        d = dt.date.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"{what}: {text!r} is not a date YYYY-MM-DD") from None
    return d


def parse_dates(value: object, what: str = "dates") -> DateSet:
    exact, yearly, spans = set(), set(), []
    for item in _items(value, what):
        if not isinstance(item, str):
            raise ConfigError(f"{what}: {item!r} is not a date (YYYY-MM-DD, MM-DD or YYYY-MM-DD..YYYY-MM-DD)")
        if ".." in item:
            a, b = (_date(x, what) for x in item.split("..", 1))
            if b < a:
                raise ConfigError(f"{what}: range {item!r} ends before it starts")
            spans.append((a, b))
        elif re.fullmatch(r"\s*\d\d-\d\d\s*", item):
            m, d = (int(x) for x in item.strip().split("-"))
            try:
                dt.date(2000, m, d)  # a leap year: 02-29 is allowed
            except ValueError:
                raise ConfigError(f"{what}: {item!r} is not a month-day MM-DD") from None
            yearly.add((m, d))
        else:
            exact.add(_date(item, what))
    return DateSet(frozenset(exact), frozenset(yearly), tuple(spans))


@dataclass(frozen=True, slots=True)
class Condition:
    times: tuple[tuple[int, int], ...] | None = None  # minutes of the day, end exclusive
    weekdays: tuple[tuple[int, int], ...] | None = None  # 0 = Monday
    days: tuple[tuple[int, int], ...] | None = None
    months: tuple[tuple[int, int], ...] | None = None
    years: tuple[tuple[int, int], ...] | None = None
    dates: DateSet | None = None
    holidays: str | None = None

    def matches(self, when: dt.datetime, holidays: dict[str, DateSet] | None = None) -> bool:
        if self.times is not None:
            minute = when.hour * 60 + when.minute
            if not any((a <= minute < b) if a < b else (minute >= a or minute < b) for a, b in self.times):
                return False
        if self.weekdays is not None and not _in(when.weekday(), self.weekdays, wrap=True):
            return False
        if self.days is not None:
            last = calendar.monthrange(when.year, when.month)[1]
            from_end = when.day - last - 1  # -1 on the last day
            if not (_in(when.day, tuple(r for r in self.days if r[0] > 0), wrap=False)
                    or _in(from_end, tuple(r for r in self.days if r[0] < 0), wrap=False)):
                return False
        if self.months is not None and not _in(when.month, self.months, wrap=True):
            return False
        if self.years is not None and not _in(when.year, self.years, wrap=False):
            return False
        if self.dates is not None and when.date() not in self.dates:
            return False
        if self.holidays is not None:
            hs = (holidays or {}).get(self.holidays)
            if hs is None or when.date() not in hs:
                return False
        return True


def parse_condition(doc: object) -> Condition:
    """A validated Condition, or ConfigError naming the field and what is wrong with it."""
    if not isinstance(doc, dict):
        raise ConfigError(f"a time condition must be a JSON object with some of: {', '.join(_FIELDS)}")
    extra = sorted(set(doc) - set(_FIELDS))
    if extra:
        raise ConfigError(f"unknown time condition field(s): {', '.join(extra)} (allowed: {', '.join(_FIELDS)})")
    kw: dict = {}
    if "time" in doc:
        times = []
        for item in _items(doc["time"], "time"):
            if not isinstance(item, str) or item.count("-") != 1:
                raise ConfigError(f"time: {item!r} is not a range HH:MM-HH:MM")
            a, b = (_minute(x, "time") for x in item.split("-"))
            if a == b:
                raise ConfigError(f"time: range {item!r} is empty")
            times.append((a, b % 1440 if b != 1440 else 1440))
        kw["times"] = tuple(times)
    if "weekdays" in doc:
        w = _ranges(doc["weekdays"], "weekdays", _DAYS, 0, 0, 6)
        kw["weekdays"] = w
    if "days" in doc:
        d = _ranges(doc["days"], "days", (), 1, -31, 31)
        for a, b in d:
            if (a > 0) != (b > 0) or a > b:
                raise ConfigError(f"days: range {a}-{b} must run forwards and not mix counting from the end")
        kw["days"] = d
    if "months" in doc:
        kw["months"] = _ranges(doc["months"], "months", _MONTHS, 1, 1, 12)
    if "years" in doc:
        y = _ranges(doc["years"], "years", (), 0, MIN_YEAR, MAX_YEAR)
        if any(a > b for a, b in y):
            raise ConfigError("years: a range must run forwards, e.g. 2010-2015")
        kw["years"] = y
    if "dates" in doc:
        kw["dates"] = parse_dates(doc["dates"])
    if "holidays" in doc:
        h = doc["holidays"]
        if not isinstance(h, str) or not h.strip():
            raise ConfigError("holidays must name a holiday list")
        kw["holidays"] = h.strip()
    return Condition(**kw)


def parse_when(doc: object) -> tuple[Condition, ...]:
    """One condition or a list of alternatives (any may hold)."""
    if isinstance(doc, list):
        if not doc:
            raise ConfigError("an empty list of time conditions never holds: leave 'when' out instead")
        return tuple(parse_condition(c) for c in doc)
    return (parse_condition(doc),)


def holds(conditions: tuple[Condition, ...], when: dt.datetime, holidays: dict[str, DateSet] | None = None) -> bool:
    return any(c.matches(when, holidays) for c in conditions)
