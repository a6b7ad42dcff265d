"""The authoring sub-commands of `edgerules`: test, fmt, diff. Thin: parse flags, call the layer."""
from __future__ import annotations

import sys

from ..lang.errors import PolicyError


def add_commands(sub) -> None:
    p = sub.add_parser("test", help="run the policy tests (*.test.rules) under a path",
                       description="Run every *.test.rules file under PATH against the policy in PATH. "
                                   "Exit 1 when a test fails or a file has an error.")
    p.add_argument("path", help="a policy directory (or one .test.rules file)")
    p.add_argument("--coverage", action="store_true", help="list the rules no test matched")
    p.add_argument("--junit", metavar="FILE", help="also write the results as JUnit XML")
    p.set_defaults(run=cmd_test)

    p = sub.add_parser("fmt", help="rewrite .rules files in the canonical layout",
                       description="Rewrite every .rules file under PATH in the canonical layout "
                                   "(comments kept, meaning unchanged).")
    p.add_argument("path", help="a directory of .rules files, or one file")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when a file would change")
    p.add_argument("--diff", action="store_true", help="write nothing; print what would change as a unified diff")
    p.set_defaults(run=cmd_fmt)

    p = sub.add_parser("diff", help="replay requests through two versions of a policy and count what changes",
                       description="Decide the same requests with OLD and NEW and report each change of "
                                   "outcome (old -> new) with its count and an example request.")
    p.add_argument("old", help="the policy as it is (a directory or one file)")
    p.add_argument("new", help="the policy as it would be")
    p.add_argument("--requests", metavar="FILE",
                   help="JSON lines, one request each: {body, headers, key, ip, time} "
                        "(default: requests generated from both policies)")
    p.add_argument("--count", type=int, default=1000, metavar="N",
                   help="how many requests to generate without --requests (default 1000)")
    p.add_argument("--fail-on-change", action="store_true", help="exit 1 when any outcome changes")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(run=cmd_diff)


def cmd_test(args) -> int:
    from .tests import coverage_lines, failure_line, junit_xml, run_tests, summary_line
    try:
        run = run_tests(args.path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    for result in run.failed:
        print(failure_line(result))
    if args.coverage:
        print("\n".join(coverage_lines(run)))
    if args.junit:
        with open(args.junit, "w", encoding="utf-8") as out:
            out.write(junit_xml(run))
    print(summary_line(run))
    return 1 if run.failed else 0


def cmd_fmt(args) -> int:
    from .fmt import run_fmt
    return run_fmt(args.path, check=args.check, diff=args.diff)


def cmd_diff(args) -> int:
    from .diff import run_diff
    return run_diff(args)
