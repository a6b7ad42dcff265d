"""`edgerules bench`: decisions per second of a policy, compiled and interpreted.

A request file holds one JSON object or a list of them. Each is a request body, or
{"body": {...}, "headers": {...}, "key": "..."} to give headers and a key too. Without a file the
requests are generated from the policy itself (engine/synth.py's policy_requests).
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..lang.errors import PolicyError
from ..lang.policy import Policy, load_policy
from ..lang.schema import body_error
from .synth import policy_requests

SAMPLE_SIZE = 256
ROUNDS = 3              # --seconds is shared between them; each figure is the best round
CHUNK_SECONDS = 0.005   # about how long the loop runs between two looks at the clock
_HTTP = ("/v1/chat/completions", "POST", "127.0.0.1")


class BenchError(Exception):
    """A request file that cannot be used."""


@dataclass(frozen=True, slots=True)
class Rate:
    decisions: int
    seconds: float

    @property
    def per_second(self) -> float:
        return self.decisions / self.seconds if self.seconds > 0 else 0.0

    @property
    def microseconds(self) -> float:
        return self.seconds / self.decisions * 1e6 if self.decisions else 0.0

    def to_dict(self) -> dict:
        return {"decisions": self.decisions, "seconds": round(self.seconds, 6),
                "decisions_per_second": round(self.per_second, 1),
                "us_per_decision": round(self.microseconds, 4)}


def decide_args(requests: Sequence[tuple], now: float | None = None) -> list[tuple]:
    """(body, headers, key) -> the full argument tuple of a decision function."""
    now = time.time() if now is None else now
    return [(body, {k.lower(): v for k, v in headers.items()}, key, *_HTTP, now)
            for body, headers, key in requests]


def measure(fn: Callable, calls: Sequence[tuple], seconds: float, warmup: float | None = None,
            progress: Callable[[str], None] | None = None, label: str = "") -> Rate:
    """Call fn(*args) over calls, round and round, for about `seconds` after a warmup."""
    if not calls:
        raise ValueError("no requests to measure")
    start = time.perf_counter()
    fn(*calls[0])
    first = max(time.perf_counter() - start, 1e-7)
    chunk = max(1, min(len(calls), int(CHUNK_SECONDS / first)))
    batches = [calls[i:i + chunk] for i in range(0, len(calls), chunk)]
    warmup = min(0.2, seconds / 5) if warmup is None else warmup
    _loop(fn, batches, warmup, None, "")
    return _loop(fn, batches, seconds, progress, label)


def _loop(fn, batches, seconds, progress, label) -> Rate:
    done, shown = 0, 0.0
    perf = time.perf_counter
    start = perf()
    while True:
        for batch in batches:
            for args in batch:
                fn(*args)
            done += len(batch)
            elapsed = perf() - start
            if elapsed >= seconds:
                return Rate(done, elapsed)
            if progress is not None and elapsed - shown >= 0.25:
                shown = elapsed
                progress(f"{label}: {done / elapsed:,.0f} decisions/s ({elapsed:.1f}/{seconds:g}s)")


# ---- the command ----------------------------------------------------------------------------

def run_bench(args) -> int:
    """edgerules bench PATH [--request FILE] [--seconds S] [--json] [--gateway]."""
    if args.seconds <= 0:
        print("edgerules bench: --seconds must be above 0", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        requests = read_requests(args.request) if args.request else policy_requests(policy, SAMPLE_SIZE)
    except BenchError as exc:
        print(f"edgerules bench: {exc}", file=sys.stderr)
        return 2
    calls = decide_args(requests)
    progress = _Progress()
    _warn_on_disagreement(policy, calls)
    rates = measure_engines(policy, calls, args.seconds, progress)
    report = {
        "path": args.path, "version": policy.version, "rules": len(policy.rules),
        "requests": len(calls), "request_source": args.request or "generated",
        "seconds": args.seconds, "rounds": ROUNDS,
        "results": {name: rate.to_dict() for name, rate in rates.items()},
        "ratio": round(rates["compiled"].per_second / rates["interpreter"].per_second, 2),
    }
    if args.gateway:
        gateway = run_gateway_bench(args)
        if gateway is None:
            return 1
        report["gateway"] = gateway
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
        if args.gateway:
            from . import gatewaybench
            print("\nWhole requests (ratios taken in one run):\n" + gatewaybench.render(report["gateway"]))
    return 0


def measure_engines(policy: Policy, calls: list[tuple], seconds: float, progress) -> dict[str, Rate]:
    """The best of ROUNDS rounds per engine, the engines taking turns, in `seconds` per engine:
    a burst of load elsewhere on the machine then spoils one round, not a figure."""
    rates: dict[str, Rate] = {}
    engines = (("compiled", policy.evaluate), ("interpreter", policy.interpret))
    for round_no in range(1, ROUNDS + 1):
        for name, fn in engines:
            label = f"{name}, round {round_no}/{ROUNDS}"
            progress(f"{label}: warming up")
            rate = measure(fn, calls, seconds / ROUNDS, progress=progress, label=label)
            if name not in rates or rate.per_second > rates[name].per_second:
                rates[name] = rate
            progress(f"{label}: {rate.per_second:,.0f} decisions/s", done=True)
    return rates


def run_gateway_bench(args) -> dict | None:
    """Whole requests: direct to a fake upstream, a bare pass-through, and `edgerules serve`."""
    from . import gatewaybench

    seconds = max(1.0, float(args.seconds) * 3)
    try:
        return gatewaybench.run(args.path, seconds=seconds)
    except RuntimeError as exc:
        print(f"edgerules bench: the gateway benchmark could not start: {exc}", file=sys.stderr)
        return None


def read_requests(path: str) -> list[tuple[dict, dict, str]]:
    """The requests of a JSON file: one object or a list; each a body or {body, headers, key}."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise BenchError(f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                         f"column {exc.colno}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise BenchError(f"{path} holds an empty list")
    return [_request(item, f"{path}: request {i}") for i, item in enumerate(items)]


def _request(item, where: str) -> tuple[dict, dict, str]:
    if not isinstance(item, dict):
        raise BenchError(f"{where} must be a JSON object")
    body, headers, key = item, {}, ""
    if isinstance(item.get("body"), dict) and set(item) <= {"body", "headers", "key"}:
        body, headers, key = item["body"], item.get("headers") or {}, item.get("key") or ""
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise BenchError(f"{where}: 'headers' must be an object of strings")
        if not isinstance(key, str):
            raise BenchError(f"{where}: 'key' must be a string")
    problem = body_error(body)
    if problem is not None:
        raise BenchError(f"{where}: {problem[0]}")
    return body, headers, key


def _warn_on_disagreement(policy, calls, sample: int = 32) -> None:
    """The two engines must decide alike; a benchmark of a wrong answer is worth a warning."""
    for i, args in enumerate(calls[:sample]):
        if policy.evaluate(*args).to_dict() != policy.interpret(*args).to_dict():
            print(f"edgerules bench: warning: compiled and interpreted decisions differ on "
                  f"request {i}", file=sys.stderr)
            return


def format_report(report: dict) -> str:
    lines = [f"{report['path']}: version {report['version']}, {report['rules']} rule(s), "
             f"{report['requests']} request(s) ({report['request_source']}), "
             f"{report['seconds']:g}s per engine, best of {report['rounds']} rounds", "",
             f"{'engine':<12} {'decisions/s':>14} {'µs/decision':>12}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<12} {r['decisions_per_second']:>14,.0f} {r['us_per_decision']:>12.2f}")
    lines += ["", f"compiled / interpreter: {report['ratio']:.1f}x"]
    return "\n".join(lines)


class _Progress:
    """One status line on stderr: rewritten in place on a terminal, one line per step otherwise."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, message: str, done: bool = False) -> None:
        if self.tty:
            self.stream.write(f"\r\033[K{message}" + ("\n" if done else ""))
        elif done:
            self.stream.write(message + "\n")
        self.stream.flush()
