"""The settings of `edgerules serve`: each declared once with its flag, variable and default.

Precedence is flag > environment > default. `serve` resolves them in the first process and writes
every resolved value back to the environment, where each `--workers` process reads them again.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m)?\s*$")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
LOG_LEVELS = ("debug", "info", "warning", "error")


def parse_seconds(text: str) -> float:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (use e.g. 500ms, 10s, 2m)")
    seconds = float(match.group(1)) * _SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"a duration must be more than zero, not {text!r}")
    return seconds


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise ValueError(f"must be at least 1, not {text!r}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value <= 65535:
        raise ValueError(f"not a port number (0-65535): {text!r}")
    return value


def _log_level(text: str) -> str:
    if text.lower() not in LOG_LEVELS:
        raise ValueError(f"not a log level: {text!r} (one of {', '.join(LOG_LEVELS)})")
    return text.lower()


def _switch(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a switch: {text!r} (use 1 or 0)")


def _size(text: str) -> int:
    from .requests import parse_size    # Starlette comes with it: `edgerules check` need not pay for that

    value = parse_size(text)
    if value < 1:
        raise ValueError(f"must be at least 1 byte, not {text!r}")
    return value


def _percent(text: str) -> float:
    from .canary import parse_percent
    try:
        return parse_percent(float(text))
    except ValueError:
        raise ValueError(f"not a percentage (0-100): {text!r}") from None


def _error_rate(text: str) -> float | None:
    from .canary import parse_error_rate
    if not text.strip():
        return None
    try:
        return parse_error_rate(float(text))
    except ValueError:
        raise ValueError(f"not a fraction from 0 to 1 (0.05 is five points): {text!r}") from None


LOG_WRITERS = ("auto", "process", "thread")


def _log_writer(text: str) -> str:
    if text.lower() not in LOG_WRITERS:
        raise ValueError(f"not a log writer: {text!r} (one of {', '.join(LOG_WRITERS)})")
    return text.lower()


def _log_store(text: str) -> str:
    from ..observe.store import check_uri
    return check_uri(text)


def _age(text: str) -> float:
    from ..observe.query import parse_age
    return parse_age(text)


@dataclass(frozen=True, slots=True)
class Setting:
    name: str                       # the attribute of the resolved settings
    flag: str
    env: str
    default: str                    # as written in README's configuration table
    parse: Callable[[str], Any]
    help: str
    metavar: str | None = None      # None: an on/off switch (--flag / --no-flag)

    def encode(self, value) -> str:
        """The value as the environment carries it to worker processes."""
        if isinstance(value, bool):
            return "1" if value else "0"
        if value is None:
            return ""
        return repr(value) if isinstance(value, float) else str(value)


SETTINGS = (
    Setting("rules", "--rules", "EDGERULES_RULES", "rules/", str, "the policy: a directory of .rules or one file", "PATH"),
    Setting("host", "--host", "EDGERULES_HOST", "127.0.0.1", str, "address to listen on", "H"),
    Setting("port", "--port", "EDGERULES_PORT", "8080", _port, "port to listen on", "P"),
    Setting("state", "--state", "EDGERULES_STATE", "memory://", str,
            "storage of limit counters, response cache and circuit breakers: memory://, redis://HOST:PORT[/DB]", "URI"),
    Setting("workers", "--workers", "EDGERULES_WORKERS", "1", _positive, "worker processes", "N"),
    Setting("max_body", "--max-body", "EDGERULES_MAX_BODY", "4MiB", _size, "largest request body", "SIZE"),
    Setting("log_level", "--log-level", "EDGERULES_LOG_LEVEL", "info", _log_level,
            "debug, info (one access line a request), warning, error", "L"),
    Setting("watch", "--watch", "EDGERULES_WATCH", "1", _switch,
            "reload when .rules files change (--no-watch: only SIGHUP and POST /admin/reload)"),
    Setting("cache_max_entries", "--cache-max-entries", "EDGERULES_CACHE_MAX_ENTRIES", "10000", _positive,
            "answers the response cache keeps", "N"),
    Setting("cache_max_bytes", "--cache-max-bytes", "EDGERULES_CACHE_MAX_BYTES", "64MiB", _size,
            "bytes the response cache keeps", "SIZE"),
    Setting("max_header_line", "--max-header-line", "EDGERULES_MAX_HEADER_LINE", "8KiB", _size,
            "longest request line or header line (431 above it)", "SIZE"),
    Setting("max_header_bytes", "--max-header-bytes", "EDGERULES_MAX_HEADER_BYTES", "32KiB", _size,
            "all request header lines together (431 above it)", "SIZE"),
    Setting("max_headers", "--max-headers", "EDGERULES_MAX_HEADERS", "100", _positive,
            "most request headers (431 above it)", "N"),
    Setting("header_timeout", "--header-timeout", "EDGERULES_HEADER_TIMEOUT", "10s", parse_seconds,
            "time to receive a request's headers, from connecting or its first byte", "D"),
    Setting("body_timeout", "--body-timeout", "EDGERULES_BODY_TIMEOUT", "30s", parse_seconds,
            "time to receive a request's body, from the end of its headers", "D"),
    Setting("keep_alive_timeout", "--keep-alive-timeout", "EDGERULES_KEEP_ALIVE_TIMEOUT", "5s",
            parse_seconds, "an idle connection between requests is closed after this", "D"),
    Setting("max_connections", "--max-connections", "EDGERULES_MAX_CONNECTIONS", "1000", _positive,
            "open connections a worker process accepts; above it a request gets 503", "N"),
    Setting("forwarded_allow_ips", "--forwarded-allow-ips", "EDGERULES_FORWARDED_ALLOW_IPS", "", str,
            "proxies whose forwarding headers are believed (comma-separated addresses); none by default", "IPS"),
    Setting("reload_settle", "--reload-settle", "EDGERULES_RELOAD_SETTLE", "300ms", parse_seconds,
            "policy files must keep their size and mtime this long before a reload loads them", "D"),
    Setting("max_upstream_body", "--max-upstream-body", "EDGERULES_MAX_UPSTREAM_BODY", "32MiB", _size,
            "largest upstream answer, JSON or stream (502 above it)", "SIZE"),
    Setting("max_upstream_event", "--max-upstream-event", "EDGERULES_MAX_UPSTREAM_EVENT", "1MiB", _size,
            "longest event of an upstream stream (an in-band error past it)", "SIZE"),
    Setting("max_parsed_answer", "--max-parsed-answer", "EDGERULES_MAX_PARSED_ANSWER", "2MiB", _size,
            "largest upstream answer the gateway parses whole, to translate it between formats or replay "
            "it from the cache as a stream (502 above it when it must be translated; not cached)", "SIZE"),
    Setting("otel_endpoint", "--otel-endpoint", "EDGERULES_OTEL_ENDPOINT", "", str,
            "send OpenTelemetry traces over OTLP/HTTP to this collector (e.g. http://127.0.0.1:4318); "
            "off when empty", "URL"),
    Setting("log_store", "--log-store", "EDGERULES_LOG_STORE", "auto", _log_store,
            "the request log: auto (edgerules-requests.db in the policy directory), sqlite:///PATH, "
            "postgresql://..., or none", "URI"),
    Setting("log_retention", "--log-retention", "EDGERULES_LOG_RETENTION", "30d", _age,
            "request log rows older than this are deleted (e.g. 30d, 12h)", "AGE"),
    Setting("log_max_rows", "--log-max-rows", "EDGERULES_LOG_MAX_ROWS", "1000000", _positive,
            "the request log keeps at most this many rows (the oldest go first)", "N"),
    Setting("canary", "--canary", "EDGERULES_CANARY", "", str,
            "a second policy served to --canary-percent of traffic (sticky by key, by client address "
            "when open); off when empty", "PATH"),
    Setting("canary_percent", "--canary-percent", "EDGERULES_CANARY_PERCENT", "5", _percent,
            "the canary's share of traffic, 0-100", "N"),
    Setting("canary_max_error_rate", "--canary-max-error-rate", "EDGERULES_CANARY_MAX_ERROR_RATE", "",
            _error_rate, "drop the canary when its 5xx rate exceeds the stable's by this much (e.g. 0.05); "
            "off when empty", "R"),
    Setting("canary_min_requests", "--canary-min-requests", "EDGERULES_CANARY_MIN_REQUESTS", "50", _positive,
            "canary requests before --canary-max-error-rate is judged", "N"),
    Setting("log_queue", "--log-queue", "EDGERULES_LOG_QUEUE", "10000", _positive,
            "request log rows waiting to be written; past it rows are dropped and counted", "N"),
    Setting("log_writer", "--log-writer", "EDGERULES_LOG_WRITER", "auto", _log_writer,
            "where an SQLite request log is written: auto (in a process of its own once a batch has "
            "64 rows, a few hundred requests a second), process (always), thread (in the serving process)",
            "MODE"),
)
BY_NAME = {s.name: s for s in SETTINGS}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag a setting; default None, so that an absent flag leaves the environment in charge."""
    for s in SETTINGS:
        text = f"{s.help} (default {s.default}; env {s.env})"
        if s.metavar is None:
            parser.add_argument(s.flag, dest=s.name, action=argparse.BooleanOptionalAction, default=None,
                                help=text)
        else:
            parser.add_argument(s.flag, dest=s.name, metavar=s.metavar, default=None, help=text)


def resolve(flags: dict[str, Any], environ=os.environ) -> dict[str, Any]:
    """Every setting's value: flag, else environment, else default. ValueError names the source."""
    values = {}
    for s in SETTINGS:
        given = flags.get(s.name)
        if isinstance(given, bool):
            values[s.name] = given
            continue
        text, source = ((given, s.flag) if given is not None else
                        (environ[s.env], s.env) if environ.get(s.env, "").strip() else (s.default, "default"))
        try:
            values[s.name] = s.parse(text)
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    return values


def export(values: dict[str, Any], environ=os.environ) -> None:
    """Write resolved values to the environment, where `--workers` processes find them."""
    for name, value in values.items():
        environ[BY_NAME[name].env] = BY_NAME[name].encode(value)
