"""codegen.py's shaped tables: a dispatch table of SHAPES_MIN+ bucket functions is written as a few
shared bodies and data, and decides exactly as the interpreter does."""
from __future__ import annotations

import random

from edgerules.drills.synth import synthetic_models, synthetic_policy
from edgerules.lang.codegen import SHAPES_MIN
from edgerules.lang.policy import build_policy
from edgerules.lang.source import Source
from policy_strategies import ENV, random_request

RULES = 3 * SHAPES_MIN

# rules whose bodies differ in ways a shape must keep apart: literals in conditions and actions,
# a pattern, a second field, a rule that only adds and one that stops the walk
EXTRA = "\n".join(
    f'rule extra_{i} {{\n    when model == "extra-{i}" and {cond}\n    {action}\n}}\n'
    for i, (cond, action) in enumerate([
        ('header("x-plan") == "pro"', 'tag "pro"'),
        ('header("x-plan") == "free"', 'tag "free"'),
        ('user matches "^team-"', 'deny 403 "teams only"'),
        ('user matches "^bot"', 'deny 403 "no bots"'),
        ("temperature > 1", "timeout 5s\n    route p1/extra"),
        ("temperature > 1.5", "timeout 9s\n    route p2/extra"),
    ] * 12))


def test_a_big_table_is_written_by_shape_and_decides_as_the_interpreter():
    head, tail = synthetic_policy(RULES).rsplit("\nrule catch_all", 1)
    text = head + "\n" + EXTRA + "\nrule catch_all" + tail
    policy = build_policy([Source("shapes.rules", text)], ENV)
    source = policy.source()
    assert "_S1 = (" in source and "_F1 = [" in source
    assert source.count("\ndef ") < 40, "one function a shape, not one a rule"
    for i in range(6):   # each extra rule is named in the listing with its file and line
        assert f" extra_{i}" in source
    rng = random.Random(15)
    models = synthetic_models(RULES)[:200] + [f"extra-{i}" for i in range(72)] + ["nothing"]
    users = ("team-a", "bot-1", "x", None)
    for model in models:
        for _ in range(6):
            body, headers, *rest = random_request(rng)
            body["model"] = model
            user = rng.choice(users)
            if user is not None:
                body["user"] = user
            headers["x-plan"] = rng.choice(("pro", "free", ""))
            args = (body, headers, *rest)
            assert policy.evaluate(*args).to_dict() == policy.interpret(*args).to_dict(), (model, args)
