"""The fault knobs of the fake upstream: their parsers, the `Faults` record, and live changes to it."""
from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


def parse_duration(value) -> float:
    """Seconds from `50ms`, `0.2s`, `1m` or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    match = _DURATION.match(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"invalid duration {value!r} (expected e.g. 50ms, 0.2s, 1m)")
    return float(match.group(1)) * _UNITS[match.group(2)]


def parse_rate(value) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"fail rate must be between 0 and 1, not {value!r}")
    return rate


def parse_status(value) -> int:
    status = int(value)
    if not 400 <= status <= 599:
        raise ValueError(f"status must be an HTTP error status (400..599), not {value!r}")
    return status


def parse_count(value) -> int:
    count = int(value)
    if count < 0:
        raise ValueError(f"expected a count >= 0, not {value!r}")
    return count


@dataclass
class Faults:
    latency: float = 0.0
    fail_rate: float = 0.0
    fail_status: int = 503
    status: int | None = None         # every request answers this
    retry_after: float | None = None
    drop_after: int | None = None     # stream events sent before the connection is dropped
    error_after: int | None = None    # stream events sent before an error event ends the stream
    chunk_delay: float = 0.0
    fail_next: int = 0
    refuse_key: str | None = None     # requests presenting this key (bearer, x-api-key, ...) are refused
    refuse_key_status: int = 429


KNOBS = {"latency": parse_duration, "fail_rate": parse_rate, "fail_status": parse_status,
         "status": parse_status, "retry_after": parse_duration, "drop_after": parse_count,
         "error_after": parse_count, "chunk_delay": parse_duration, "fail_next": parse_count,
         "refuse_key": str, "refuse_key_status": parse_status}
_NULLABLE = {f.name for f in fields(Faults) if f.default is None}


def apply_knobs(faults: Faults, knobs: dict) -> Faults:
    """A copy of `faults` with the knobs set; raises ValueError naming the bad knob."""
    changes = {}
    for name, value in knobs.items():
        if name not in KNOBS:
            raise ValueError(f"unknown knob '{name}' (known: {', '.join(KNOBS)})")
        if value is None and name in _NULLABLE:
            changes[name] = None
            continue
        try:
            changes[name] = KNOBS[name](value)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"knob '{name}': {exc}") from None
    return replace(faults, **changes)
