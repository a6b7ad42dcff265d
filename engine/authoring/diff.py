"""`edgerules diff OLD NEW`: the same requests decided by two versions of a policy, and what changed."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field

from ..lang.errors import PolicyError
from ..lang.policy import Policy, load_policy
from .describe import outcome_text
from .testfile import DEFAULT_TIME, iso_time


@dataclass(frozen=True, slots=True)
class Replay:
    """One request as the decision functions take it."""

    body: dict
    headers: dict
    key: str = ""
    ip: str = "127.0.0.1"
    now: float = 0.0
    path: str = "/v1/chat/completions"

    def to_dict(self) -> dict:
        return {"body": self.body, "headers": self.headers, "key": self.key, "ip": self.ip, "time": self.now}


@dataclass
class Change:
    old: str
    new: str
    count: int = 0
    example: Replay | None = None


@dataclass
class DiffReport:
    total: int = 0
    unchanged: int = 0
    invalid: int = 0
    changes: dict[tuple[str, str], Change] = field(default_factory=dict)

    def sorted_changes(self) -> list[Change]:
        return sorted(self.changes.values(), key=lambda c: (-c.count, c.old, c.new))

    def to_dict(self) -> dict:
        return {"requests": self.total, "unchanged": self.unchanged, "invalid": self.invalid,
                "changes": [{"old": c.old, "new": c.new, "count": c.count, "example": c.example.to_dict()}
                            for c in self.sorted_changes()]}


def read_requests(path: str) -> list[Replay]:
    """JSON lines: {"body": {...}, "headers": {...}, "key": "", "ip": "", "time": ISO or Unix}.
    Raises ValueError naming the line of the first bad one."""
    out = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                out.append(_replay(item))
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"{path}:{number}: not a request: {exc}") from None
    return out


def _replay(item: dict) -> Replay:
    body = item.get("body")
    if not isinstance(body, dict):
        raise ValueError("'body' must be a JSON object")
    headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
    when = item.get("time")
    now = iso_time(when) if isinstance(when, str) else float(when) if when is not None else iso_time(DEFAULT_TIME)
    return Replay(body, headers, str(item.get("key") or ""), str(item.get("ip") or "127.0.0.1"), now,
                  str(item.get("path") or "/v1/chat/completions"))


def generated_requests(old: Policy, new: Policy, count: int) -> list[Replay]:
    """Requests aimed at the conditions of both versions (drills/synth.py's policy_requests)."""
    from ..drills.synth import policy_requests
    now = iso_time(DEFAULT_TIME)
    half = max(1, count // 2)
    made = policy_requests(old, half, seed=1) + policy_requests(new, count - half, seed=2)
    return [Replay(body, headers, key, now=now) for body, headers, key in made]


def compare(old: Policy, new: Policy, requests: list[Replay]) -> DiffReport:
    report = DiffReport()
    for r in requests:
        report.total += 1
        try:
            before = outcome_text(old.decide(r.body, r.headers, r.key, path=r.path, ip=r.ip, now=r.now))
            after = outcome_text(new.decide(r.body, r.headers, r.key, path=r.path, ip=r.ip, now=r.now))
        except ValueError:
            report.invalid += 1
            continue
        if before == after:
            report.unchanged += 1
            continue
        change = report.changes.setdefault((before, after), Change(before, after, 0, r))
        change.count += 1
    return report


def report_lines(report: DiffReport) -> list[str]:
    lines = [f"{report.total} requests: {report.unchanged} unchanged, "
             f"{report.total - report.unchanged - report.invalid} changed"
             + (f", {report.invalid} invalid (skipped)" if report.invalid else "")]
    for c in report.sorted_changes():
        lines.append(f"{c.count} request{'s' if c.count != 1 else ''}: {c.old} -> {c.new}")
        example = _abbreviated(c.example.to_dict())
        lines.append("    e.g. " + json.dumps(example, ensure_ascii=False, sort_keys=True))
    return lines


def _abbreviated(value, longest: int = 60):
    """The example with long strings cut, so that a huge prompt stays one readable line."""
    if isinstance(value, str) and len(value) > longest:
        return f"{value[:20]}... ({len(value)} characters)"
    if isinstance(value, dict):
        return {k: _abbreviated(v, longest) for k, v in value.items()}
    if isinstance(value, list):
        return [_abbreviated(v, longest) for v in value]
    return value


def run_diff(args) -> int:
    try:
        old, new = load_policy(args.old), load_policy(args.new)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        requests = read_requests(args.requests) if args.requests else generated_requests(old, new, args.count)
    except OSError as exc:
        print(f"edgerules diff: cannot read {args.requests}: {exc.strerror}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"edgerules diff: {exc}", file=sys.stderr)
        return 2
    report = compare(old, new, requests)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print("\n".join(report_lines(report)))
    return 1 if args.fail_on_change and report.changes else 0
