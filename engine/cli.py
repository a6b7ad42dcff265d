"""The `edgerules` command: check, eval, serve, bench, upstream."""
from __future__ import annotations

import argparse
import json
import sys

from .lang.errors import PolicyError, render_all


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgerules", description="An AI gateway driven by a rule language.")
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("check", help="parse and check a policy; exit 1 on errors")
    p.add_argument("path", help="a directory of .rules files, or one file")
    p.add_argument("--format", choices=("text", "json", "github"), default="text",
                   help="text (default), JSON, or GitHub Actions annotations")
    p.add_argument("--strict", action="store_true", help="warnings are errors (notes stay notes)")
    p.set_defaults(run=cmd_check)

    p = sub.add_parser("eval", help="print the decision for one request as JSON")
    p.add_argument("path")
    p.add_argument("--request", metavar="FILE", help="the request body as JSON (default: stdin)")
    p.add_argument("--header", action="append", default=[], metavar="K:V", help="a request header (repeatable)")
    p.add_argument("--key", default="", metavar="NAME", help="the authenticated key's name")
    p.add_argument("--ip", default="127.0.0.1", help="the client address (default 127.0.0.1)")
    p.add_argument("--path", dest="http_path", default="/v1/chat/completions", help="the HTTP path")
    p.add_argument("--engine", choices=("compiled", "interpreted"), default="compiled",
                   help="decide with the compiled code (default) or the reference interpreter")
    p.add_argument("--show-code", action="store_true", help="print the generated Python instead")
    p.add_argument("--time", metavar="ISO", help="decide as at this instant (sets hour and weekday), "
                   "such as 2026-11-30T09:00:00Z (default: now)")
    p.add_argument("--tool", metavar="SERVER__TOOL", help="decide a tool call with the tool rules instead")
    p.add_argument("--args", dest="tool_args", default="{}", metavar="JSON",
                   help="the tool call's arguments, a JSON object (with --tool; default {})")
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("serve", help="run the gateway",
                       description="Run the gateway. Each setting is taken from its flag, else from its "
                                   "environment variable, else from its default.")
    from .gateway.settings import add_arguments as add_serve_arguments
    add_serve_arguments(p)
    p.set_defaults(run=cmd_serve)

    p = sub.add_parser("bench", help="rule-evaluation throughput of the compiled policy")
    p.add_argument("path", nargs="?", help="the policy (not with --peers, which serves a policy of its own)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--request", metavar="FILE", help="a JSON request, or a JSON list of them (default: generated)")
    src.add_argument("--requests", metavar="FILE",
                     help="a traffic sample: JSON lines of {body, headers, key, ip, path, time}, as diff takes")
    p.add_argument("--handwritten", metavar="MODULE:FUNC",
                   help="also measure your own Python function of the same logic (MODULE dotted or a .py file)")
    p.add_argument("--seconds", type=float, default=1.0, help="time per measurement (default 1s)")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.add_argument("--gateway", action="store_true", help="also measure whole requests through the gateway")
    p.add_argument("--scenarios", metavar="LIST",
                   help="with --gateway: whole requests per scenario instead (all, or some of "
                        "routing,limit,tokens,cache,stream), on a policy of its own")
    p.add_argument("--connections", default="1,16,64", metavar="N,N",
                   help="with --scenarios: the connection counts (default 1,16,64)")
    p.add_argument("--rounds", type=int, default=1, metavar="N",
                   help="with --scenarios: the targets take turns N times; each figure is the median (default 1)")
    p.add_argument("--peers", metavar="LIST",
                   help="whole requests through LiteLLM's proxy and Portkey's gateway (all, or some of "
                        "litellm,portkey; installed once under ~/.cache/edgerules-peers) beside edgerules, "
                        "direct and the pass-through; --connections defaults to 1,32 here")
    p.add_argument("--write-readme", metavar="FILE",
                   help="with --scenarios or --peers: also rewrite that table's block in FILE (README.md), "
                        "with the command that made it")
    p.set_defaults(run=cmd_bench)

    from .drills.upstream import cli as upstream_cli
    p = sub.add_parser("upstream", help="a fake OpenAI- or Anthropic-compatible provider with fault injection",
                       description=upstream_cli.DESCRIPTION)
    upstream_cli.add_arguments(p)
    p.set_defaults(run=upstream_cli.run)

    from .authoring.commands import add_commands
    add_commands(sub)
    from .observe.commands import add_commands as add_observe_commands
    add_observe_commands(sub)
    return parser


def _load(path: str):
    """The policy, or None after printing why it did not load."""
    from .lang.policy import load_policy
    try:
        return load_policy(path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_check(args) -> int:
    if args.format != "text" or args.strict:
        from .authoring.report import check_report
        return check_report(args.path, args.format, args.strict)
    policy = _load(args.path)
    if policy is None:
        return 1
    if policy.warnings or policy.notes:
        print(render_all(policy.warnings + policy.notes, policy.sources), file=sys.stderr)
    tools = (f", {len(policy.tool_rules)} tool rule(s), {len(policy.servers)} tool server(s)"
             if policy.tool_rules or policy.servers else "")
    print(f"{args.path}: ok: {len(policy.files)} file(s), {len(policy.rules)} rule(s), "
          f"{len(policy.providers)} provider(s), {len(policy.keys)} key(s){tools}; version {policy.version}")
    return 0


def cmd_eval(args) -> int:
    policy = _load(args.path)
    if policy is None:
        return 1
    if args.show_code:
        print(policy.source(), end="")
        return 0
    if args.tool:
        return _eval_tool(policy, args)
    body = _read_request(args.request)
    if body is None:
        return 2
    headers = {}
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(f"edgerules eval: --header takes K:V, not {item!r}", file=sys.stderr)
            return 2
        headers[name.strip().lower()] = value.strip()
    if args.key and policy.keys and args.key not in {k.name for k in policy.keys}:
        print(f"edgerules eval: the policy declares no key named {args.key!r}", file=sys.stderr)
        return 2
    try:
        from .authoring.testfile import iso_time
        now = iso_time(args.time) if args.time else None
    except ValueError:
        print(f"edgerules eval: --time takes an ISO 8601 time such as 2026-11-30T09:00:00Z, not {args.time!r}",
              file=sys.stderr)
        return 2
    try:
        decision = policy.decide(body, headers, args.key, path=args.http_path, ip=args.ip,
                                 engine=args.engine, now=now)
    except ValueError as exc:
        print(f"edgerules eval: bad request: {exc}", file=sys.stderr)
        return 2
    out = decision.to_dict()
    if decision.route is not None:   # the key pools of the providers it may go to
        from .lang.spec import target_leaves
        pools = {leaf.provider: spec.pool_to_dict() for leaf in target_leaves(decision.route)
                 if (spec := policy.providers.get(leaf.provider)) is not None and spec.key_pool}
        if pools:
            out["key_pools"] = pools
    print(json.dumps(out, indent=2))
    return 0


def _eval_tool(policy, args) -> int:
    """`eval --tool SERVER__TOOL --args JSON`: the tool rules' decision, and whether the key sees it."""
    server, sep, tool = args.tool.partition("__")
    if not sep or not server or not tool:
        print(f"edgerules eval: --tool takes SERVER__TOOL, not {args.tool!r}", file=sys.stderr)
        return 2
    if server not in policy.servers:
        print(f"edgerules eval: the policy declares no mcp or api server named {server!r}", file=sys.stderr)
        return 2
    try:
        tool_args = json.loads(args.tool_args)
    except json.JSONDecodeError as exc:
        print(f"edgerules eval: --args is not valid JSON: {exc.msg}", file=sys.stderr)
        return 2
    if not isinstance(tool_args, dict):
        print("edgerules eval: --args must be a JSON object", file=sys.stderr)
        return 2
    key = next((k for k in policy.keys if k.name == args.key), None)
    if args.key and policy.keys and key is None:
        print(f"edgerules eval: the policy declares no key named {args.key!r}", file=sys.stderr)
        return 2
    headers = {n.strip().lower(): v.strip() for n, _, v in (h.partition(":") for h in args.header)}
    decision = policy.decide_tool(server, tool, tool_args, headers, args.key, ip=args.ip, engine=args.engine)
    out = {"tool": args.tool, "key_sees_tool": key is None or key.sees_tool(args.tool), **decision.to_dict()}
    print(json.dumps(out, indent=2))
    return 0


def _read_request(path: str | None):
    if path is None and sys.stdin.isatty():
        print("edgerules eval: give the request with --request FILE or on stdin", file=sys.stderr)
        return None
    try:
        text = open(path, encoding="utf-8").read() if path else sys.stdin.read()
    except OSError as exc:
        print(f"edgerules eval: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        print(f"edgerules eval: the request is not valid JSON: {exc.msg} at line {exc.lineno} "
              f"column {exc.colno}", file=sys.stderr)
        return None
    if not isinstance(body, dict):
        print("edgerules eval: the request must be a JSON object", file=sys.stderr)
        return None
    return body


def cmd_serve(args) -> int:
    from .gateway.server import serve
    return serve(args)


def cmd_bench(args) -> int:
    if args.peers is not None:
        if args.path:
            print("edgerules bench: --peers serves a policy of its own; give no PATH", file=sys.stderr)
            return 2
        from .drills.peers import run_from_bench
        return run_from_bench(args)
    if not args.path:
        print("edgerules bench: give the policy PATH (a directory of .rules files, or one file)", file=sys.stderr)
        return 2
    from .drills.benchmark import run_bench
    return run_bench(args)


if __name__ == "__main__":
    sys.exit(main())
