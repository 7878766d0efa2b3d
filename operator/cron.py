"""Cron schedules as Kubernetes CronJobs take them: five fields, or one of the @-macros.

``minute hour day-of-month month day-of-week``; each field is ``*``, a number, a range ``a-b``, a list
``a,b`` and any of these with a step ``/n``. As in cron, when both day fields are restricted a day
matching either runs. Times are UTC. Pure: no clock is read here.
"""

import dataclasses
import datetime

MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}
# (name, lowest, highest) of each field, in order.
FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 7))
# Far enough to find the next run of any valid schedule (30 February never comes: it is refused).
HORIZON = datetime.timedelta(days=366 * 5)


class CronError(ValueError):
    """A schedule that is not valid cron; the message says which field and why."""


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The sets of values each field matches."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]  # 0 = Sunday (7 is folded into 0)
    any_day: bool  # day of month is a bare * (a step restricts it, as in CronJobs)
    any_weekday: bool  # day of week is a bare *

    def _day_matches(self, when: datetime.datetime) -> bool:
        weekday = when.isoweekday() % 7
        if self.any_day or self.any_weekday:
            return when.day in self.days and weekday in self.weekdays
        return when.day in self.days or weekday in self.weekdays

    def next_after(self, when: datetime.datetime) -> datetime.datetime:
        """The first run strictly after ``when`` (an aware datetime), in UTC."""
        at = when.astimezone(datetime.UTC).replace(second=0, microsecond=0) + datetime.timedelta(minutes=1)
        end = at + HORIZON
        while at < end:
            if at.month not in self.months:
                at = (at.replace(day=1, hour=0, minute=0) + datetime.timedelta(days=32)).replace(day=1)
            elif not self._day_matches(at):
                at = at.replace(hour=0, minute=0) + datetime.timedelta(days=1)
            elif at.hour not in self.hours:
                at = at.replace(minute=0) + datetime.timedelta(hours=1)
            elif at.minute not in self.minutes:
                at += datetime.timedelta(minutes=1)
            else:
                return at
        raise CronError("the schedule never runs")

    def longest_gap(self, start: datetime.datetime, runs: int = 400) -> datetime.timedelta:
        """The longest time between two consecutive runs among the next ``runs`` after ``start``."""
        previous = self.next_after(start)
        gap = datetime.timedelta(0)
        for _ in range(runs):
            following = self.next_after(previous)
            gap = max(gap, following - previous)
            previous = following
        return gap


def _field(text: str, name: str, low: int, high: int) -> frozenset[int]:
    values: set[int] = set()
    for part in text.split(","):
        body, slash, step_text = part.partition("/")
        step = _number(step_text, name, 1, high - low + 1) if slash else 1
        if body == "*":
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = _number(a, name, low, high), _number(b, name, low, high)
            if first > last:
                raise CronError(f"{name} range {body!r} runs backwards")
        else:
            first = _number(body, name, low, high)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    return frozenset(values)


def _number(text: str, name: str, low: int, high: int) -> int:
    if not text.isdigit():
        raise CronError(f"{name} {text!r} is not a number, *, a range a-b or a step /n")
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name} {value} is out of range {low}-{high}")
    return value


def parse(text: str) -> Schedule:
    """The schedule of a cron expression; :class:`CronError` names the field at fault."""
    expression = MACROS.get(text.strip().lower(), text)
    parts = expression.split()
    if len(parts) != len(FIELDS):
        raise CronError(f"expected 5 fields (minute hour day-of-month month day-of-week) or an @-macro, "
                        f"got {len(parts)}")
    minutes, hours, days, months, weekdays = (_field(part, *spec) for part, spec in zip(parts, FIELDS, strict=True))
    schedule = Schedule(minutes, hours, days, months, frozenset(d % 7 for d in weekdays),
                        any_day=parts[2] == "*", any_weekday=parts[4] == "*")
    # Days that no month has (31 April, 30 February) would never run.
    longest = max((29 if m == 2 else 30 if m in (4, 6, 9, 11) else 31) for m in months)
    if not schedule.any_weekday or min(days) <= longest:
        return schedule
    raise CronError(f"day of month {min(days)} never comes in the months chosen")
