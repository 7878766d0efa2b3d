"""Go-compatible value syntax of the config: durations, byte sizes, `$VAR` expansion, paths."""

from __future__ import annotations

import math
import os
import re
from fractions import Fraction

_DURATION_UNITS_NS = {
    "ns": 1,
    "us": 1_000,
    "\u00b5s": 1_000,  # micro sign
    "\u03bcs": 1_000,  # Greek mu
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}
_DURATION_PART = re.compile(r"([0-9]*)(?:\.([0-9]*))?(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_MAX_DURATION_NS = 2**63 - 1  # Go's time.Duration range

MINUTE = 60.0  # durations are float seconds throughout the config
HOUR = 3600.0
DAY = 86400.0


def parse_duration(text: str | int | float, *, allow_zero: bool = True, allow_negative: bool = False) -> float:
    """Seconds from a Go duration (`500ms`, `1.5s`, `1h30m`, `0`, `10us`/`10µs`, `7ns`).

    The syntax is exactly `time.ParseDuration`'s: a sequence of decimal numbers, each with a unit,
    optionally signed; a bare number is only accepted for `0`. An `int` or `float` argument is taken
    as seconds already (for callers building settings in Python). Raises `ValueError` on garbage,
    on values beyond Go's range (about 292 years), on negative values unless `allow_negative`, and on
    zero when `allow_zero` is false.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid duration {text!r}")
    if isinstance(text, int | float):
        if not math.isfinite(text):
            raise ValueError(f"invalid duration {text!r}")
        seconds = float(text)
    elif isinstance(text, str):
        seconds = _parse_go_duration(text)
    else:
        raise ValueError(f'invalid duration {text!r}: expected a string such as "1s"')
    if seconds < 0 and not allow_negative:
        raise ValueError(f"duration {text!r} must not be negative")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"duration {text!r} must be greater than 0")
    return seconds


def _parse_go_duration(text: str) -> float:
    s = text.strip()
    hint = 'expected a Go duration such as "500ms", "1s" or "1h30m"'
    neg = False
    if s[:1] in ("+", "-"):
        neg = s[0] == "-"
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}: {hint}")
    total = Fraction(0)
    pos = 0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if m is None or not (m.group(1) or m.group(2)):
            if re.fullmatch(r"[0-9.]+", s[pos:]):
                raise ValueError(f"invalid duration {text!r}: missing unit ({hint})")
            raise ValueError(f"invalid duration {text!r}: {hint}")
        whole, frac, unit = m.group(1) or "0", m.group(2) or "", m.group(3)
        scale = _DURATION_UNITS_NS[unit]
        total += int(whole) * scale
        if frac:
            total += Fraction(int(frac), 10 ** len(frac)) * scale
        if total > _MAX_DURATION_NS:
            raise ValueError(f"invalid duration {text!r}: out of range")
        pos = m.end()
    ns = int(total)  # Go truncates fractional nanoseconds
    return (-ns if neg else ns) / 1e9


# go-humanize's ParseBytes table: SI units are powers of 1000, IEC units powers of 1024.
_SIZE_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtpe", start=1):
    _SIZE_UNITS[f"{_p}ib"] = _SIZE_UNITS[f"{_p}i"] = 1024**_i
    _SIZE_UNITS[f"{_p}b"] = _SIZE_UNITS[_p] = 1000**_i
_MAX_SIZE = 2**63 - 1


def parse_size(text: str | int) -> int:
    """Bytes from a humanized size: `1024`, `5MB` (10**6), `64MiB` (2**20), `5 MiB`, `1.5GB`, `1,000`.

    Units as go-humanize's `ParseBytes` (which Litestream uses): b, k/kb, ki/kib, m/mb, mi/mib, ...
    up to e/eib, case-insensitive. Raises `ValueError` on garbage, negative or out-of-range values.
    """
    if isinstance(text, bool):
        raise ValueError(f"invalid size {text!r}")
    if isinstance(text, int):
        if not 0 <= text <= _MAX_SIZE:
            raise ValueError(f"invalid size {text!r}: out of range")
        return text
    if not isinstance(text, str):
        raise ValueError(f'invalid size {text!r}: expected a string such as "64MiB"')
    s = text.strip()
    i = 0
    while i < len(s) and (s[i] in "0123456789.,"):
        i += 1
    number, unit = s[:i].replace(",", ""), s[i:].strip().lower()
    hint = 'expected a size such as "1024", "5MB" or "64MiB"'
    if unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: unknown unit {s[i:].strip()!r} ({hint})")
    try:
        value = Fraction(number)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"invalid size {text!r}: {hint}") from None
    result = int(value * _SIZE_UNITS[unit])
    if result > _MAX_SIZE:
        raise ValueError(f"invalid size {text!r}: out of range")
    return result


def _is_shell_special(c: str) -> bool:
    return c in "*#$@!?-0123456789"


def _is_alnum(c: str) -> bool:
    return c == "_" or ("0" <= c <= "9") or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _shell_name(s: str) -> tuple[str, int]:
    """Go's os.getShellName: (name, characters consumed after the `$`)."""
    if s[0] == "{":
        if len(s) > 2 and _is_shell_special(s[1]) and s[2] == "}":
            return s[1:2], 3
        for i in range(1, len(s)):
            if s[i] == "}":
                if i == 1:
                    return "", 2  # bad syntax "${}": eaten
                return s[1:i], i + 1
        return "", 1  # bad syntax "${" without "}": eaten
    if _is_shell_special(s[0]):
        return s[0:1], 1
    i = 0
    while i < len(s) and _is_alnum(s[i]):
        i += 1
    return s[:i], i


def _litestream_env(name: str) -> str:
    if name == "PID":
        return str(os.getpid())
    return os.environ.get(name, "")


def expand_env(text: str) -> str:
    """Expand `$VAR` and `${VAR}` exactly like Litestream (Go's `os.Expand`).

    Unset variables become the empty string; `$PID` is always the current process id (Litestream
    maps it before looking at the environment); `$$`, `$1`, `$*`... are Go's special one-character
    names, looked up in the environment (normally empty); `${}` and an unclosed `${` are removed; a
    `$` followed by anything else (or at the end) stays as is.
    """
    out: list[str] = []
    i = 0
    j = 0
    n = len(text)
    while j < n:
        if text[j] == "$" and j + 1 < n:
            out.append(text[i:j])
            name, w = _shell_name(text[j + 1 :])
            if name == "" and w > 0:
                pass  # invalid syntax: the characters are eaten
            elif name == "":
                out.append("$")
            else:
                out.append(_litestream_env(name))
            j += w
            i = j + 1
        j += 1
    out.append(text[i:])
    return "".join(out)


def expand_path(path: str) -> str:
    """Litestream's `expand`: strip `sqlite://`/`sqlite3://`, expand `~` and `~/`, make absolute."""
    for prefix in ("sqlite3://", "sqlite://"):
        if path.startswith(prefix):
            path = path[len(prefix) :]
            break
    if path == "~" or path.startswith("~/"):
        path = os.path.expanduser(path)
    return os.path.abspath(path)
