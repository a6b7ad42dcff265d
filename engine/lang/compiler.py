"""The one place that calls compile() and exec(): checked policy -> a callable decision function."""
from __future__ import annotations

import linecache
import marshal
import subprocess
import sys
import threading
import time
import types
import weakref
from dataclasses import dataclass
from typing import Callable

from .check import CheckedPolicy
from .codegen import Generated, generate, generate_tools
from .decision import Decision, ToolDecision, finish_without_route
from .schema import (
    body_path, body_typed, count_messages, estimate_tokens, forces_tool, parse_metadata,
    response_format_type, tool_names,
)


@dataclass
class CompiledPolicy:
    decide: Callable[..., Decision]
    generated: Generated
    filename: str
    decide_tool: Callable[..., ToolDecision] | None = None   # None: the policy has no tool rule
    generated_tools: Generated | None = None
    # the code objects (model rules, tool rules or None): a helper process marshals them over
    code: tuple = ()


def compile_policy(policy: CheckedPolicy, version: str, prepared: tuple | None = None) -> CompiledPolicy:
    """prepared: (generated, dump_code(code), tool rules' generated, dump_code(their code)), from
    another process's compile_policy() of the same checked policy (its `.code`)."""
    generated = prepared[0] if prepared else generate(policy, version)
    filename = f"<edgerules policy {version}>"
    providers = policy.providers

    def finish(d: Decision, model: str) -> Decision:
        return finish_without_route(d, model, providers)

    namespace = {
        "__builtins__": {},
        "_Decision": Decision,
        "_finish": finish,
        "_estimate_tokens": estimate_tokens,
        "_count_messages": count_messages,
        "_parse_metadata": parse_metadata,
        "_gmtime": time.gmtime,
        "_tool_names": tool_names,
        "_forces_tool": forces_tool,
        "_response_format": response_format_type,
        "_body_path": body_path,
        "_body_typed": body_typed,
        **generated.constants,
    }
    code = load_code(prepared[1]) if prepared else _compile(generated.source, filename)
    decide = _exec(generated, code, filename, namespace)["decide"]
    if not policy.tool_rules:
        return _lines_kept_while(CompiledPolicy(decide, generated, filename, code=(code, None)), filename)
    # Tool rules are a function of their own, in a namespace of their own: model rules never
    # see a tool call and tool rules never see a model request.
    tools = prepared[2] if prepared else generate_tools(policy, version)
    tool_namespace = {"__builtins__": {}, "_Decision": ToolDecision, "_parse_metadata": parse_metadata,
                      "_gmtime": time.gmtime, "_body_path": body_path, "_body_typed": body_typed,
                      **tools.constants}
    tools_filename = f"<edgerules tool rules {version}>"
    tools_code = load_code(prepared[3]) if prepared else _compile(tools.source, tools_filename)
    decide_tool = _exec(tools, tools_code, tools_filename, tool_namespace)["decide_tool"]
    return _lines_kept_while(CompiledPolicy(decide, generated, filename, decide_tool, tools, (code, tools_code)),
                             filename, tools_filename)


# compile() holds the GIL for its whole run (about 0.6 s for 10,000 rules): a reload, which runs in
# a worker thread while the event loop serves, compiles a big policy in a child interpreter instead
# and loads its marshalled code (~15 ms), so requests keep being served.
OFFLOAD_CHARS = 200_000
_CHILD = ("from __future__ import annotations\nimport marshal, sys\n"
          "sys.stdout.buffer.write(marshal.dumps(compile(sys.stdin.buffer.read().decode(), sys.argv[1], 'exec')))")


def _compile(source: str, filename: str):
    if len(source) >= OFFLOAD_CHARS and threading.current_thread() is not threading.main_thread():
        try:
            done = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD, filename], input=source.encode(),
                                  capture_output=True, timeout=300, check=True)
            return marshal.loads(done.stdout)
        except (OSError, subprocess.SubprocessError, ValueError, EOFError, TypeError):
            pass   # no child interpreter here: compile in this process
    return compile(source, filename, "exec")


CODE_SLICE = 256   # functions per marshalled slice: ~1 ms to load, so the GIL changes hands between


def dump_code(code: types.CodeType) -> tuple[bytes, list]:
    """A generated module's code for another process: the module with its functions' code taken
    out, and those in slices. marshal.loads of the whole 10,000-rule module holds the interpreter
    lock ~27 ms in one call; load_code() loads it a slice at a time."""
    slots = [i for i, c in enumerate(code.co_consts) if isinstance(c, types.CodeType)]
    skeleton = code.replace(co_consts=tuple(None if isinstance(c, types.CodeType) else c for c in code.co_consts))
    slices = [(slots[i:i + CODE_SLICE], marshal.dumps(tuple(code.co_consts[j] for j in slots[i:i + CODE_SLICE])))
              for i in range(0, len(slots), CODE_SLICE)]
    return marshal.dumps(skeleton), slices


def load_code(dumped: tuple[bytes, list]) -> types.CodeType:
    skeleton, slices = dumped
    module = marshal.loads(skeleton)
    consts = list(module.co_consts)
    for slots, blob in slices:
        for i, code in zip(slots, marshal.loads(blob)):
            consts[i] = code
    return module.replace(co_consts=tuple(consts))


def _lines_kept_while(compiled: CompiledPolicy, *filenames: str) -> CompiledPolicy:
    """The generated lines stay in linecache (for tracebacks) as long as the policy lives, not
    forever: each reload of a 10,000-rule policy would otherwise keep ~10 MB more."""
    for filename in filenames:
        entry = linecache.cache.get(filename)
        if entry is not None:
            weakref.finalize(compiled, _forget_lines, filename, entry)
    return compiled


def _forget_lines(filename: str, entry: tuple) -> None:
    if linecache.cache.get(filename) is entry:   # not a later load's of the same version
        del linecache.cache[filename]


def _exec(generated: Generated, code, filename: str, namespace: dict) -> dict:
    exec(code, namespace)
    # Tracebacks through generated code then show its lines.
    lines = generated.source.splitlines(keepends=True)
    linecache.cache[filename] = (len(generated.source), None, lines, filename)
    return namespace
