"""`edgerules bench`: decisions per second of a policy, compiled and interpreted.

`--request FILE` holds one JSON object or a list of them. Each is a request body, or
{"body": {...}, "headers": {...}, "key": "..."} to give headers and a key too. `--requests FILE`
is a traffic sample in the JSON lines `edgerules diff --requests` reads: one
{"body", "headers", "key", "ip", "path", "time"} per line (edgerules.authoring.diff.read_requests).
Without a file the requests are generated from the policy itself (drills/synth.py's policy_requests).

`--handwritten MODULE:FUNC` adds a third engine: the user's own plain-Python function of the same
logic, called with the decision function's arguments (body, headers, key, path, method, ip, now).
MODULE is a dotted module name or a .py file (bench/handwritten.py:decide is the hand-written
version of drills/synth.py's ten-rule policy).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
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
    """edgerules bench PATH [--request FILE | --requests FILE] [--handwritten MODULE:FUNC]
    [--seconds S] [--json] [--gateway [--scenarios LIST]]."""
    if args.seconds <= 0:
        print("edgerules bench: --seconds must be above 0", file=sys.stderr)
        return 2
    if getattr(args, "scenarios", None):
        return run_scenario_bench(args)
    if getattr(args, "write_readme", None):
        print("edgerules bench: --write-readme goes with --gateway --scenarios (or --peers)", file=sys.stderr)
        return 2
    try:
        policy = load_policy(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    lines = getattr(args, "requests", None)
    try:
        if lines:
            calls = replay_args(lines)
        else:
            calls = decide_args(read_requests(args.request) if args.request
                                else policy_requests(policy, SAMPLE_SIZE))
        handwritten = load_function(args.handwritten) if getattr(args, "handwritten", None) else None
    except BenchError as exc:
        print(f"edgerules bench: {exc}", file=sys.stderr)
        return 2
    progress = _Progress()
    _warn_on_disagreement(policy, calls)
    if handwritten is not None:
        _warn_on_handwritten_disagreement(policy, handwritten, calls)
    rates = measure_engines(policy, calls, args.seconds, progress, handwritten)
    report = {
        "path": args.path, "version": policy.version, "rules": len(policy.rules),
        "requests": len(calls), "request_source": lines or args.request or "generated",
        "seconds": args.seconds, "rounds": ROUNDS,
        "results": {name: rate.to_dict() for name, rate in rates.items()},
        "ratio": round(rates["compiled"].per_second / rates["interpreter"].per_second, 2),
    }
    if handwritten is not None:
        report["handwritten"] = args.handwritten
        report["ratio_handwritten"] = round(rates["compiled"].per_second / rates["handwritten"].per_second, 2)
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


def measure_engines(policy: Policy, calls: list[tuple], seconds: float, progress,
                    handwritten: Callable | None = None) -> dict[str, Rate]:
    """The best of ROUNDS rounds per engine, the engines taking turns, in `seconds` per engine:
    a burst of load elsewhere on the machine then spoils one round, not a figure."""
    rates: dict[str, Rate] = {}
    engines = [("compiled", policy.evaluate), ("interpreter", policy.interpret)]
    if handwritten is not None:
        engines.insert(1, ("handwritten", handwritten))
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


def run_scenario_bench(args) -> int:
    """`--gateway --scenarios LIST`: whole requests per scenario (drills/gatewaybench.py)."""
    from . import gatewaybench

    if not args.gateway:
        print("edgerules bench: --scenarios goes with --gateway", file=sys.stderr)
        return 2
    try:
        names = gatewaybench.scenario_names(args.scenarios)
    except ValueError as exc:
        print(f"edgerules bench: {exc}", file=sys.stderr)
        return 2
    try:
        conns = tuple(int(c) for c in args.connections.split(","))
    except ValueError:
        conns = ()
    if not conns or min(conns) < 1:
        print(f"edgerules bench: --connections takes counts like 1,16,64, not {args.connections!r}",
              file=sys.stderr)
        return 2
    if getattr(args, "write_readme", None):
        why = gatewaybench.block_error(args.write_readme, gatewaybench.README_BEGIN, gatewaybench.README_END)
        if why is not None:
            print(f"edgerules bench: --write-readme: {why}", file=sys.stderr)
            return 2
    try:
        result = gatewaybench.run_scenarios(names, seconds=args.seconds, connections=conns,
                                            rounds=max(1, getattr(args, "rounds", 1)))
    except RuntimeError as exc:
        print(f"edgerules bench: the gateway benchmark could not start: {exc}", file=sys.stderr)
        return 1
    table = gatewaybench.render_scenarios(result)
    print(json.dumps(result, indent=2) if args.json else table)
    if getattr(args, "write_readme", None):
        rounds = max(1, getattr(args, "rounds", 1))
        command = (f"edgerules bench {args.path or 'rules/'} --gateway --scenarios {args.scenarios} "
                   f"--connections {args.connections} --seconds {args.seconds:g}"
                   + (f" --rounds {rounds}" if rounds > 1 else "") + f" --write-readme {args.write_readme}")
        try:
            gatewaybench.write_readme(args.write_readme, table, command)
        except (ValueError, OSError) as exc:
            print(f"edgerules bench: {exc}", file=sys.stderr)
            return 1
    return 0


def replay_args(path: str) -> list[tuple]:
    """The JSON lines of `edgerules diff --requests` as decision-function arguments."""
    from ..authoring.diff import read_requests as read_lines

    try:
        replays = read_lines(path)
    except OSError as exc:
        raise BenchError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    if not replays:
        raise BenchError(f"{path} holds no requests")
    for number, r in enumerate(replays, 1):
        problem = body_error(r.body)
        if problem is not None:
            raise BenchError(f"{path}: request {number}: {problem[0]}")
    return [(r.body, r.headers, r.key, r.path, "POST", r.ip, r.now) for r in replays]


def load_function(spec: str) -> Callable:
    """MODULE:FUNC, MODULE a dotted name or a path to a .py file."""
    module_name, sep, func = spec.rpartition(":")
    if not sep or not module_name or not func:
        raise BenchError(f"--handwritten takes MODULE:FUNC, not {spec!r}")
    try:
        if module_name.endswith(".py") or "/" in module_name:
            file = Path(module_name)
            loader = importlib.util.spec_from_file_location(f"_edgerules_bench_{file.stem}", file)
            if loader is None or not file.is_file():
                raise BenchError(f"--handwritten: no such file {module_name}")
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except BenchError:
        raise
    except Exception as exc:  # the user's module: any error it raises is theirs to read
        raise BenchError(f"--handwritten: cannot import {module_name}: {type(exc).__name__}: {exc}") from None
    fn = getattr(module, func, None)
    if not callable(fn):
        raise BenchError(f"--handwritten: {module_name} has no function {func!r}")
    return fn


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


def _warn_on_handwritten_disagreement(policy, fn, calls, sample: int = 32) -> None:
    for i, args in enumerate(calls[:sample]):
        try:
            theirs = fn(*args)
            same = theirs.to_dict() == policy.evaluate(*args).to_dict()
        except Exception as exc:  # their function; say what broke and measure anyway
            print(f"edgerules bench: warning: the hand-written function failed on request {i}: "
                  f"{type(exc).__name__}: {exc}", file=sys.stderr)
            return
        if not same:
            print(f"edgerules bench: warning: the hand-written function decides request {i} "
                  f"unlike the policy", file=sys.stderr)
            return


def format_report(report: dict) -> str:
    lines = [f"{report['path']}: version {report['version']}, {report['rules']} rule(s), "
             f"{report['requests']} request(s) ({report['request_source']}), "
             f"{report['seconds']:g}s per engine, best of {report['rounds']} rounds", "",
             f"{'engine':<12} {'decisions/s':>14} {'µs/decision':>12}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<12} {r['decisions_per_second']:>14,.0f} {r['us_per_decision']:>12.2f}")
    lines += ["", f"compiled / interpreter: {report['ratio']:.1f}x"]
    if "ratio_handwritten" in report:
        lines.append(f"compiled / hand-written ({report['handwritten']}): {report['ratio_handwritten']:.2f}x")
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
