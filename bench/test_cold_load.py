"""Cold load and re-load of big policies, each in a fresh interpreter (as `edgerules serve` or
`check` starts): a one-file policy of 1,000 and 10,000 rules, and 10,000 rules split over 20 files,
loaded once, then loaded again after a one-line edit in one file (the parse cache keeps the other
19 files' parses). Beside them, in the same run: the parse of the 10,000-rule file by the fast
path (engine/lang/lalr.py) and by Lark's general parse that gives every diagnostic.

Figures: `python3 -m pytest bench/test_cold_load.py -s` (wall and CPU seconds: on a shared
machine the CPU time is the steadier one; `import_s` is the imports before the load, and
`with_imports_wall_s` the two together). The analysed grammar comes from the user's cache
directory (engine/lang/parse.py), as on any start but a machine's first. Target: a cold load of
10,000 rules in 2 s. Under `--benchmark-disable` (CI) it loads 300 rules only, to check that the
measurement runs.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from edgerules.drills.synth import synthetic_policy

FILES = 20   # of the split policy

_CHILD = r"""
import json, sys, time
wall, cpu = time.perf_counter(), time.process_time()
from edgerules.lang.policy import load_policy, parse_cache_info
imported = time.perf_counter() - wall, time.process_time() - cpu

def timed(path):
    wall, cpu = time.perf_counter(), time.process_time()
    policy = load_policy(path)
    return policy, round(time.perf_counter() - wall, 3), round(time.process_time() - cpu, 3)

path, edit = sys.argv[1], sys.argv[2]
policy, load_wall, load_cpu = timed(path)
with open(edit, "a") as f:
    f.write("# a one-line edit\n")
before = parse_cache_info()
again, reload_wall, reload_cpu = timed(path)
after = parse_cache_info()
print(json.dumps({"rules": len(policy.rules), "import_s": [round(x, 3) for x in imported],
                  "load_wall_s": load_wall, "load_cpu_s": load_cpu,
                  "with_imports_wall_s": round(imported[0] + load_wall, 3),
                  "edit_reload_wall_s": reload_wall, "edit_reload_cpu_s": reload_cpu,
                  "files_reparsed": after["misses"] - before["misses"],
                  "files_reused": after["hits"] - before["hits"], "changed": again.version != policy.version}))
"""

_PARSERS = r"""
import json, sys, time, gc
from edgerules.lang.parse import fast_parser, parse_general
from edgerules.lang.source import Source
source = Source(sys.argv[1], open(sys.argv[1]).read())
fast = fast_parser()
gc.disable()
out = {}
for name, parse in (("fast", lambda: fast.parse(source.text, source.name)), ("general", lambda: parse_general(source)[0])):
    cpu = time.process_time()
    assert parse() is not None
    out[name + "_cpu_s"] = round(time.process_time() - cpu, 3)
out["general_over_fast"] = round(out["general_cpu_s"] / out["fast_cpu_s"], 2)
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def sizes(request):
    return (300,) if request.config.getoption("benchmark_disable", False) else (1_000, 10_000)


def _run(script: str, *args) -> dict:
    done = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _split(text: str, parts: int) -> list[str]:
    """The policy in `parts` files of whole statements: the providers and guards, then the rest
    of the rules in equal runs."""
    head, *rules = text.split("\nrule ")
    step = -(-len(rules) // (parts - 1))
    return [head + "\n"] + ["".join("\nrule " + r for r in rules[i:i + step]) + "\n"
                            for i in range(0, len(rules), step)]


def test_cold_load(sizes, tmp_path):
    results = {}
    for rules in sizes:
        one = tmp_path / f"one-{rules}"
        one.mkdir()
        (one / "policy.rules").write_text(synthetic_policy(rules))
        results[f"{rules} rules, 1 file"] = _run(_CHILD, one, one / "policy.rules")
    rules = sizes[-1]
    split = tmp_path / f"split-{rules}"
    split.mkdir()
    files = _split(synthetic_policy(rules), FILES)
    for i, text in enumerate(files):
        (split / f"{i:02d}.rules").write_text(text)
    results[f"{rules} rules, {len(files)} files"] = _run(_CHILD, split, split / "07.rules")
    results[f"parse of {rules} rules"] = _run(_PARSERS, tmp_path / f"one-{rules}" / "policy.rules")
    for name, figures in results.items():
        print(f"\ncold load, {name}: {json.dumps(figures)}")
    for name, figures in results.items():
        if "files_reparsed" in figures:
            assert figures["rules"] == int(name.split()[0].replace(",", "")) and figures["changed"]
            assert figures["files_reparsed"] == 1
