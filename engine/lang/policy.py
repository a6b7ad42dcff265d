"""load_policy(), Policy.decide() and the policy's version hash."""
from __future__ import annotations

import gc
import hashlib
import os
import pickle
import threading
import time
from pathlib import Path
from typing import Mapping

from . import ast
from .check import CheckedPolicy, check_program
from .compiler import CompiledPolicy, compile_policy, dump_code
from .decision import Decision, ToolDecision
from .errors import Diagnostic, PolicyError
from .interpret import Interpreter
from .parse import parse_source
from .schema import body_error
from .source import Location, Source
from .spec import LimitSpec, ProviderSpec, Single, target_leaves


def read_sources(path: str | os.PathLike) -> list[Source]:
    """The policy's files in name order: one file, or every *.rules below a directory (tests,
    *.test.rules, are not policy and are left out)."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*.rules") if p.is_file() and not p.name.endswith(".test.rules"))
        if not files:
            raise PolicyError([Diagnostic("no-rules", f"no .rules files in '{path}'", None)])
    elif root.is_file():
        files = [root]
    else:
        raise PolicyError([Diagnostic("no-rules", f"no such file or directory: '{path}'", None)])
    sources = []
    for file in files:
        name = str(file)
        data = file.read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise PolicyError([Diagnostic("encoding", "the file is not valid UTF-8",
                                          Location(name, line, column, column + 1))]) from None
        sources.append(Source(name, text))
    return sources


FREEZE_RULES = 1_000   # from this size a loaded policy is moved out of the cyclic collector's sight

# Parsed files kept between loads in this process, so a reload re-parses only the files that
# changed: keyed by (file name, sha256 of the text), the latest version of each file only; the
# AST is frozen, so sharing it is safe.
PARSE_CACHE_FILES = 1024
PARSE_CACHE_CHARS = 64 * 1024 * 1024    # of source text: bounds the ASTs kept as well
_parsed: dict[tuple[str, str], tuple] = {}   # oldest first
_parsed_lock = threading.Lock()
_parse_stats = {"hits": 0, "misses": 0}


def parse_cached(source: Source) -> tuple[ast.Program | None, list[Diagnostic]]:
    """parse_source(), reusing the parse of a file whose name and text were parsed before."""
    key = (source.name, hashlib.sha256(source.text.encode()).hexdigest())
    with _parsed_lock:
        hit = _parsed.pop(key, None)
        if hit is not None:
            _parsed[key] = hit   # now the most recent
            _parse_stats["hits"] += 1
            return hit[0], list(hit[1])
    program, errors = parse_source(source)
    with _parsed_lock:
        _parse_stats["misses"] += 1
        # The file's earlier versions go: an edited 1 MB file would otherwise keep ~17 MB of AST
        # a version, up to PARSE_CACHE_CHARS of them (a reverted edit is parsed again).
        for stale in [k for k in _parsed if k[0] == source.name]:
            del _parsed[stale]
        _parsed[key] = (program, tuple(errors), len(source.text))
        total = sum(entry[2] for entry in _parsed.values())
        while len(_parsed) > 1 and (len(_parsed) > PARSE_CACHE_FILES or total > PARSE_CACHE_CHARS):
            total -= _parsed.pop(next(iter(_parsed)))[2]
    return program, errors


def parse_cache_info() -> dict:
    """{"hits", "misses", "files"}: how many file parses were reused, done, and are kept."""
    with _parsed_lock:
        return {**_parse_stats, "files": len(_parsed)}


def version_of(sources: list[Source]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.name.encode() + b"\0" + source.text.encode() + b"\0")
    return digest.hexdigest()[:12]


def load_policy(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> "Policy":
    """Parse, check and compile a directory of .rules files (or one file). Raises PolicyError."""
    return build_policy(read_sources(path), env, path=str(path))


def build_policy(sources: list[Source], env: Mapping[str, str] | None = None, path: str = "") -> "Policy":
    # A load allocates millions of small objects and frees none of them until it ends: the cyclic
    # collector would only rescan them (about half the time of a 10,000-rule load).
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _settled(_build(sources, env, path))
    except RecursionError:
        # parse.py refuses deep nesting with a position; this is the net under any other shape.
        raise PolicyError([Diagnostic("too-deep", "the policy nests too deeply to be compiled", None,
                                      hint="split deep conditions or targets into several rules")],
                          {s.name: s for s in sources}) from None
    finally:
        if enabled:
            gc.enable()


def _settled(policy: "Policy") -> "Policy":
    policy.models(), policy.model_ids()   # computed here, off the serving thread of a reload
    if len(policy.rules) >= FREEZE_RULES:
        # Its objects (millions at 10,000 rules) live until the next reload: out of the
        # collector's sight, a full collection in the serving thread does not rescan them
        # for seconds (measured: bench/test_reload_stall.py).
        gc.freeze()
    return policy


# ---- a load prepared in another process ------------------------------------------------------
# A reload of a big policy parses, checks and compiles in a helper process (its parse cache kept
# between reloads); the serving process only unpickles the checked policy and loads the
# marshalled code, a fifth of the work, so requests share the interpreter with far less.

def prepare_policy(path: str | os.PathLike, env: Mapping[str, str] | None = None) -> bytes:
    """load_policy() as bytes for prepared_policy(): ("ok", parts), ("error", diagnostics and
    sources), or ("fallback", why) when the policy cannot travel (load it in-process then)."""
    try:
        policy = load_policy(path, env)
    except PolicyError as exc:
        return pickle.dumps(("error", (exc.diagnostics, list(exc.sources.values()))), protocol=5)
    compiled = policy._compiled
    code, tools_code = compiled.code
    try:
        prepared = (compiled.generated, dump_code(code), compiled.generated_tools,
                    None if tools_code is None else dump_code(tools_code))
        return pickle.dumps(("ok", (policy.checked, prepared, policy.version, list(policy.sources.values()),
                                    [*policy.warnings, *policy.notes], policy.path)), protocol=5)
    except (pickle.PicklingError, TypeError, AttributeError, ValueError) as exc:   # e.g. a native regex
        return pickle.dumps(("fallback", f"{type(exc).__name__}: {exc}"))
    finally:
        # Only its bytes leave: its code's namespace, which holds its own functions, would
        # otherwise outlive it in the helper, frozen out of the collector's sight at every reload.
        for namespace in policy.bulk()[1]:
            namespace.clear()


def prepared_policy(data: bytes) -> "Policy | None":
    """The Policy prepare_policy() prepared (None: load it in-process). Raises PolicyError."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        kind, parts = pickle.loads(data)
        if kind == "error":
            diagnostics, sources = parts
            raise PolicyError(diagnostics, {s.name: s for s in sources})
        if kind != "ok":
            return None
        checked, prepared, version, sources, diagnostics, path = parts
        return _settled(Policy(checked, compile_policy(checked, version, prepared), version, sources,
                               diagnostics, path))
    finally:
        if enabled:
            gc.enable()


def _build(sources: list[Source], env: Mapping[str, str] | None, path: str) -> "Policy":
    by_name = {s.name: s for s in sources}
    program, diagnostics = None, []
    for source in sources:
        parsed, errors = parse_cached(source)
        diagnostics.extend(errors)
        if parsed is not None:
            program = parsed if program is None else program.merge(parsed)
    if diagnostics:
        raise PolicyError(diagnostics, by_name)
    checked, diagnostics = check_program(program, env)
    if any(d.severity == "error" for d in diagnostics):
        # Notes explain a policy that loads; beside errors they are noise.
        raise PolicyError([d for d in diagnostics if d.severity != "note"], by_name)
    version = version_of(sources)
    return Policy(checked, compile_policy(checked, version), version, sources, diagnostics, path)


class Policy:
    """A loaded policy: compiled once, decided many times."""

    def __init__(self, checked: CheckedPolicy, compiled: CompiledPolicy, version: str,
                 sources: list[Source], warnings: list[Diagnostic], path: str = ""):
        self.checked = checked
        self.version = version
        self.path = path
        self.sources = {s.name: s for s in sources}
        self.files = tuple(s.name for s in sources)
        self.warnings = tuple(d for d in warnings if d.severity == "warning")
        self.notes = tuple(d for d in warnings if d.severity == "note")
        self.loaded_at = time.time()
        self._models: tuple[str, ...] | None = None
        self._model_ids: tuple[str, ...] | None = None
        self.providers: dict[str, ProviderSpec] = checked.providers
        self.keys = checked.keys
        self.rules = tuple(r.name for r in checked.rules)
        self.servers: dict = checked.servers          # name -> McpSpec | ApiSpec
        self.tool_rules = tuple(r.name for r in checked.tool_rules)
        self.retry_budget = checked.retry_budget      # RetryBudgetSpec | None: `retry budget` at top level
        self.limits: tuple[LimitSpec, ...] = tuple(
            a.value for r in (*checked.rules, *checked.tool_rules) for a in r.actions if a.kind == "limit")
        self._compiled = compiled
        # The raw decision functions: (body, headers, key, path, method, ip, now), no validation.
        self.evaluate = compiled.decide
        interpreter = Interpreter(checked)
        self.interpret = interpreter.decide
        # (server, tool, args, headers, key, ip, now); None when the policy has no tool rule.
        self.evaluate_tool = compiled.decide_tool
        self.interpret_tool = interpreter.decide_tool

    def decide(self, body: dict, headers: Mapping[str, str] | None = None, key: str = "", *,
               path: str = "/v1/chat/completions", method: str = "POST", ip: str = "127.0.0.1",
               now: float | None = None, engine: str = "compiled") -> Decision:
        """The decision for one request. Raises ValueError when a field has the wrong type."""
        if engine not in ("compiled", "interpreted"):
            raise ValueError(f"engine must be 'compiled' or 'interpreted', not {engine!r}")
        problem = body_error(body)
        if problem is not None:
            raise ValueError(problem[0])
        low = {k.lower(): v for k, v in (headers or {}).items()}
        fn = self.evaluate if engine == "compiled" else self.interpret
        return fn(body, low, key or "", path, method, ip, time.time() if now is None else now)

    def decide_tool(self, server: str, tool: str, args: dict | None = None,
                    headers: Mapping[str, str] | None = None, key: str = "", *, ip: str = "127.0.0.1",
                    now: float | None = None, engine: str = "compiled") -> ToolDecision:
        """The tool rules' decision for one call of SERVER's TOOL with ARGS (model rules never run)."""
        if engine not in ("compiled", "interpreted"):
            raise ValueError(f"engine must be 'compiled' or 'interpreted', not {engine!r}")
        low = {k.lower(): v for k, v in (headers or {}).items()}
        fn = self.evaluate_tool if engine == "compiled" else self.interpret_tool
        if fn is None:
            return ToolDecision()
        return fn(server, tool, args if isinstance(args, dict) else {}, low, key or "", ip,
                  time.time() if now is None else now)

    def source(self) -> str:
        """The generated Python source of the compiled decision function (and of the tool rules')."""
        tools = self._compiled.generated_tools
        main = self._compiled.generated.source
        return main if tools is None else main + "\n\n" + tools.source

    def models(self) -> list[str]:
        """Every "provider/model" a rule can route to, then "provider/*" for pass-through targets."""
        if self._models is None:   # once, in the loading thread (build_policy): not on the event loop
            self._models = self._collect_models()
        return list(self._models)

    def model_ids(self) -> list[str]:
        """What GET /v1/models lists: the names rules route by (`model == "smart"`, `model in
        [...]`), then every concrete provider/model a rule reaches."""
        if self._model_ids is None:
            self._model_ids = self._collect_model_ids()
        return list(self._model_ids)

    def _collect_models(self) -> tuple[str, ...]:
        seen: dict[str, None] = {}
        for rule in self.checked.rules:
            for a in rule.actions:
                for target in a.targets():
                    for leaf in target_leaves(target):
                        seen[_model_id(leaf)] = None
        return tuple(seen)

    def _collect_model_ids(self) -> tuple[str, ...]:
        aliases: dict[str, None] = {}
        for rule in self.checked.rules:
            if rule.when is None or not any(a.kind == "route" for a in rule.actions):
                continue
            first = rule.when.operands[0] if isinstance(rule.when, ast.And) else rule.when
            if not (isinstance(first, ast.Compare) and isinstance(first.left, ast.Field)
                    and first.left.name == "model"):
                continue
            if first.op == "==" and isinstance(first.right, ast.Literal):
                aliases[first.right.value] = None
            elif first.op == "in" and isinstance(first.right, ast.ListLit):
                aliases.update((i.value, None) for i in first.right.items)
        concrete = [m for m in self.models() if not m.endswith("/*")]
        return tuple(aliases) + tuple(m for m in concrete if m not in aliases)

    def bulk(self) -> tuple[list, list[dict]]:
        """(objects, namespaces): most of this policy's objects (its checked rules, the constants,
        tables and functions of its generated code) and the namespaces that code runs in. A
        server keeps these past the policy's end to free them a slice at a time (a 10,000-rule
        policy freed in one go holds the interpreter ~20 ms); only it may clear the namespaces,
        and only once the policy is gone: each holds its own functions (a cycle the collector
        would have to find, and a frozen policy's is never looked at)."""
        namespaces = [f.__globals__ for f in (self.evaluate, self.evaluate_tool) if f is not None]
        objects: list = [*self.checked.rules, *self.checked.tool_rules]
        for namespace in namespaces:
            for value in namespace.values():
                objects.append(value)
                if isinstance(value, dict):           # dispatch tables
                    objects.extend(value.values())
                elif isinstance(value, (list, tuple)):   # a shaped table's functions and data
                    objects.extend(value)
        return objects, namespaces

    def __repr__(self) -> str:
        return f"<Policy {self.version} files={len(self.files)} rules={len(self.rules)}>"


def _model_id(leaf: Single) -> str:
    return f"{leaf.provider}/{leaf.model}" if leaf.model else f"{leaf.provider}/*"
