"""Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day of week), each
``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a list of those; month and weekday names
(``jan``, ``mon``); 7 for Sunday as well as 0; ``?`` as ``*``; and the macros ``@yearly``/``@annually``,
``@monthly``, ``@weekly``, ``@daily``/``@midnight`` and ``@hourly``. When both day fields are restricted a
day matches either (Vixie cron's rule, which kube's parser keeps). Times are read in a zone (``timeZone``, UTC
by default). Standard library only: the API server checks schedules with it and the CronJob controller runs
them.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from skiff.errors import InvalidArgument

MACROS = {"@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
          "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *"}
_MONTHS = {name: i for i, name in enumerate(
    ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"), start=1)}
_DAYS = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
_FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day of month", 1, 31, {}), ("month", 1, 12, _MONTHS),
           ("day of week", 0, 7, _DAYS))
_SEARCH_YEARS = 5  # a schedule with no time within this many years (Feb 30) has none


@dataclass(frozen=True)
class Schedule:
    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday
    any_day: bool  # day of month was *
    any_weekday: bool  # day of week was *
    zone: datetime.tzinfo

    def matches_day(self, day: datetime.date) -> bool:
        in_month = day.day in self.days
        in_week = (day.isoweekday() % 7) in self.weekdays
        if self.any_day or self.any_weekday:
            return in_month and in_week
        return in_month or in_week

    def next_after(self, moment: datetime.datetime) -> datetime.datetime | None:
        """The first scheduled minute strictly after ``moment`` (aware), in UTC; None if there is none."""
        local = moment.astimezone(self.zone).replace(tzinfo=None, second=0, microsecond=0)
        t = local + datetime.timedelta(minutes=1)
        limit = t + datetime.timedelta(days=366 * _SEARCH_YEARS)
        while t < limit:
            if t.month not in self.months:
                t = (t.replace(day=1, hour=0, minute=0) + datetime.timedelta(days=32)).replace(day=1)
            elif not self.matches_day(t.date()):
                t = t.replace(hour=0, minute=0) + datetime.timedelta(days=1)
            elif t.hour not in self.hours:
                t = t.replace(minute=0) + datetime.timedelta(hours=1)
            elif t.minute not in self.minutes:
                t += datetime.timedelta(minutes=1)
            else:
                return t.replace(tzinfo=self.zone).astimezone(datetime.UTC)
        return None

    def last_between(self, after: datetime.datetime, until: datetime.datetime,
                     limit: int = 100) -> tuple[datetime.datetime | None, int]:
        """The latest scheduled time in (after, until] and how many there were (counting stops past
        ``limit``, as kube stops at 100 missed starts)."""
        latest, count = None, 0
        t = self.next_after(after)
        while t is not None and t <= until:
            latest, count = t, count + 1
            if count > limit:
                break
            t = self.next_after(t)
        return latest, count


def zone(name: str | None) -> datetime.tzinfo:
    if not name:
        return datetime.UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(f"unknown time zone {name}") from None


def parse(text: str, time_zone: str | None = None) -> Schedule:
    """A schedule; InvalidArgument saying what is wrong with ``text``."""
    spec = MACROS.get(text.strip(), text) if isinstance(text, str) else ""
    fields = spec.split()
    if len(fields) != 5:
        raise InvalidArgument(f"expected exactly 5 fields, found {len(fields)}: {text!r}")
    values = [_field(word, *_FIELDS[i]) for i, word in enumerate(fields)]
    weekdays = frozenset(0 if d == 7 else d for d in values[4])
    return Schedule(values[0], values[1], values[2], values[3], weekdays,
                    any_day=fields[2] in ("*", "?"), any_weekday=fields[4] in ("*", "?"), zone=zone(time_zone))


def _field(word: str, name: str, low: int, high: int, names: dict[str, int]) -> frozenset[int]:
    found: set[int] = set()
    for part in word.split(","):
        span, _, step_text = part.partition("/")
        try:
            step = int(step_text) if step_text else 1
        except ValueError:
            raise InvalidArgument(f"the step of {part!r} in the {name} field is not a number") from None
        if step < 1:
            raise InvalidArgument(f"the step of {part!r} in the {name} field must be positive")
        if span in ("*", "?"):
            first, last = low, high
        else:
            first_text, dash, last_text = span.partition("-")
            first = _number(first_text, name, names)
            last = _number(last_text, name, names) if dash else (high if step_text else first)
        if not low <= first <= high or not low <= last <= high or first > last:
            raise InvalidArgument(f"{part!r} is out of range for the {name} field ({low}-{high})")
        found.update(range(first, last + 1, step))
    return frozenset(found)


def _number(text: str, name: str, names: dict[str, int]) -> int:
    if text.lower() in names:
        return names[text.lower()]
    try:
        return int(text)
    except ValueError:
        raise InvalidArgument(f"{text!r} is not a valid value for the {name} field") from None
