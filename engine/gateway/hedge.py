"""Hedged requests: race the lanes of a `hedge [...] after D`; the first to start answering wins.

Lane 0 starts at once; each next lane starts when no lane has answered D after the previous one
started (`after pNN`: the previous lane's first member's recent latency percentile), or at once
when every started lane has failed. An answer "starts" at its first byte: a JSON answer when its
body is read, a stream at its first event. The winner is claimed synchronously right after its
fetch, so two lanes finishing together cannot both answer; every other lane is cancelled, which
closes its upstream connection. Extra lanes draw on the retry budget when the policy has one.
"""
from __future__ import annotations

import asyncio
import math
import time
from typing import TYPE_CHECKING

from starlette.responses import Response

from ..lang.schema import estimate_tokens

if TYPE_CHECKING:
    from .router import HedgePlan

UNKNOWN_PERCENTILE_DELAY = 1.0   # `after p95` before the member has MIN_SAMPLES answers


class _Lost(Exception):
    """A lane whose answer came after another lane's: its answer is dropped."""


class Race:
    __slots__ = ("won", "winner_lane")

    def __init__(self):
        self.won = False
        self.winner_lane = -1


def _delay(plan: "HedgePlan", lane: int, health, tries) -> float:
    hedge = plan.hedge
    if hedge.percentile is None:
        return hedge.delay
    leaf = plan.first_leaf(lane)
    if leaf is None:
        return UNKNOWN_PERCENTILE_DELAY
    seconds = health.of(leaf[0]).percentile(leaf[1], hedge.percentile)
    return UNKNOWN_PERCENTILE_DELAY if seconds is None else seconds


async def race(gw, call, plan: "HedgePlan", tries, try_steps) -> Response | None:
    """Run the hedge's lanes as described above; the winner's response, or None when all failed."""
    from .pipeline import Tries, fetch, respond   # pipeline imports this module
    state = Race()
    loop = asyncio.get_running_loop()
    running: dict[asyncio.Task, tuple[int, Tries]] = {}
    lanes = plan.lanes
    started_at = 0.0
    next_lane = 0

    async def lane_attempt(gw, call, provider, model, timeout):
        got = await fetch(call, provider, model, timeout)
        if state.won:   # another lane answered meanwhile: this answer is dropped
            if got.__class__ is tuple:
                await got[2].aclose()
            raise _Lost()
        state.won = True
        return respond(gw, call, provider, got)

    async def run_lane(steps, lane_tries):
        try:
            return await try_steps(gw, call, steps, lane_tries, lane_attempt)
        except _Lost:
            return None

    def start() -> bool:
        nonlocal next_lane, started_at
        lane, next_lane = next_lane, next_lane + 1
        steps = lanes[lane]
        approved = bool(lane and steps and call.attempts)   # its first call is an extra attempt
        if approved and not _first_allowed(call, tries, steps):
            next_lane = len(lanes)   # the retry budget is spent: no more lanes
            return False
        lane_tries = Tries(tries.health, tries.budgets)
        lane_tries.approved = approved   # _first_allowed took the budget's room for its first call
        task = loop.create_task(run_lane(steps, lane_tries))
        task.add_done_callback(_retrieve)
        running[task] = (lane, lane_tries)
        started_at = time.monotonic()
        if lane:
            gw.metrics.hedged["started"] += 1
        return True

    start()
    try:
        while running:
            timeout = None
            if next_lane < len(lanes):
                timeout = max(0.0, started_at + _delay(plan, next_lane - 1, tries.health, tries) - time.monotonic())
            done, _ = await asyncio.wait(running, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if not done:
                start()
                continue
            for task in done:
                lane, lane_tries = running.pop(task)
                response = task.result()   # a client error (an upstream 4xx) ends the race here
                if response is not None:
                    call.route = lane_tries.route   # other lanes may have written theirs since
                    if lane:
                        gw.metrics.hedged["won"] += 1
                    return response
                if lane_tries.last is not None:
                    tries.last = lane_tries.last
                tries.deadline_hit |= lane_tries.deadline_hit
                tries.budget_spent |= lane_tries.budget_spent
            if not running and next_lane < len(lanes) and not tries.deadline_hit:
                start()   # every started lane failed: the next one need not wait
        return None
    finally:
        if running:
            _cancel_losers(gw, call, running)


def _first_allowed(call, tries, steps) -> bool:
    step = steps[0]
    while step.__class__ is not tuple:   # a nested hedge: its first leaf
        step = step.lanes[0][0] if step.lanes and step.lanes[0] else None
        if step is None:
            return True
    return tries.may_start(call, step[0])


def _cancel_losers(gw, call, running: dict) -> None:
    """Cancel the lanes still under way: each task's cancellation closes its upstream connection."""
    for task in running:
        task.cancel()
    gw.metrics.hedged["cancelled"] += len(running)
    losers = call.hedged if call.hedged is not None else []
    losers.extend(lane_tries.route for _, lane_tries in running.values() if lane_tries.route)
    call.hedged = losers


def _retrieve(task: asyncio.Task) -> None:
    """A cancelled lane may still have failed first: its error is not the request's."""
    if not task.cancelled():
        task.exception()


# ---- what the cancelled attempts cost ----------------------------------------------------------

def hedged_attempts(call) -> list[dict]:
    """Each cancelled hedge attempt as the access log shows it: its route, the prompt it was sent
    (estimated: a cancelled call returns no usage) and that prompt's price when the model has one.
    Providers bill the input they read, so a hedged request may be paid more than once."""
    prompt = estimate_tokens(call.body)
    out = []
    for route in call.hedged or ():
        price = _input_price(call, route)
        out.append({"route": route, "prompt_tokens": prompt,
                    "cost": round(prompt * price / 1_000_000, 10) if price is not None else None})
    return out


def hedged_spent(call, kind: str, nano_per_price: float) -> int:
    """What the cancelled attempts add to a token or cost limit's hold (in its units)."""
    if not call.hedged or kind not in ("tokens", "cost"):
        return 0
    prompt = estimate_tokens(call.body)
    if kind == "tokens":
        return prompt * len(call.hedged)
    total = 0
    for route in call.hedged:
        price = _input_price(call, route)
        if price is not None:
            total += math.ceil(prompt * price * nano_per_price)
    return total


def _input_price(call, route: str) -> float | None:
    provider_name, _, model = route.partition("/")
    provider = call.live.providers.get(provider_name)
    price = provider.spec.price(model) if provider is not None else None
    return price.input if price is not None else None
