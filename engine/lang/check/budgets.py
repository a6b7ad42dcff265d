"""Checks of `retry budget P% [min N/s]`, at top level and inside a provider block."""
from __future__ import annotations

from .. import ast
from ..spec import RetryBudgetSpec


def check_retry_budget(checker, node: ast.RetryBudget) -> RetryBudgetSpec:
    """The spec of one `retry budget`, reporting a share outside 0..100 or a floor that is not per second."""
    percent = float(node.percent)
    if not 0 <= percent <= 100:
        checker.error("retry-budget", f"a retry budget is a share of 0% to 100% of the requests, "
                                      f"not {node.percent:g}%", node.percent_loc)
        percent = min(100.0, max(0.0, percent))
    floor = 0.0
    if node.floor is not None:
        floor = float(node.floor)
        if floor < 0:
            checker.error("retry-budget", "the retry budget's floor cannot be negative", node.floor_loc)
            floor = 0.0
        if node.unit != "s":
            checker.error("retry-budget", f"the retry budget's floor is per second, not per '{node.unit}'",
                          node.floor_loc, hint=f"write min {node.floor:g}/s")
    return RetryBudgetSpec(percent, floor)


def check_top_budgets(checker, budgets: tuple) -> RetryBudgetSpec | None:
    """The gateway-wide budget: one `retry budget` statement across all the policy's files."""
    for extra in budgets[1:]:
        checker.error("duplicate-setting", f"'retry budget' is already set at {budgets[0].loc}", extra.loc)
    return check_retry_budget(checker, budgets[0]) if budgets else None
