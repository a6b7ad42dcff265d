"""A replaced big policy is freed a slice at a time (gateway/reload.py _release, Policy.bulk): its
generated code's namespace, which holds its own functions, is cleared once the policy is gone."""
from __future__ import annotations

import asyncio
import gc
import weakref

from edgerules.drills.synth import synthetic_policy
from edgerules.gateway import reload
from edgerules.lang.policy import build_policy
from edgerules.lang.source import Source


def test_a_replaced_policy_is_freed_in_slices_cycle_included():
    policy = build_policy([Source("big.rules", synthetic_policy(1_200))], {})
    objects, namespaces = policy.bulk()
    assert len(objects) > 1_200 and namespaces and "decide" in namespaces[0]
    decide = weakref.ref(policy.evaluate)
    ref = weakref.ref(policy)
    enabled = gc.isenabled()
    gc.disable()   # what frees it must be the release, not the collector
    try:
        del policy
        assert ref() is None and decide() is not None   # the namespace cycle keeps the code alive
        asyncio.run(asyncio.wait_for(reload._release(ref, objects, namespaces), 60))
        assert objects == [] and namespaces == []
        assert decide() is None
    finally:
        if enabled:
            gc.enable()


def test_a_policy_still_in_use_keeps_its_code():
    policy = build_policy([Source("big.rules", synthetic_policy(200))], {})
    objects, namespaces = policy.bulk()
    before = policy.evaluate({"model": "model-0"}, {}, "", "/v1/chat/completions", "POST", "127.0.0.1", 0.0)

    async def give_up_soon():
        reload_wait, reload.RELEASE_WAIT = reload.RELEASE_WAIT, 0.3
        try:
            await reload._release(weakref.ref(policy), objects, namespaces)
        finally:
            reload.RELEASE_WAIT = reload_wait

    asyncio.run(asyncio.wait_for(give_up_soon(), 60))
    after = policy.evaluate({"model": "model-0"}, {}, "", "/v1/chat/completions", "POST", "127.0.0.1", 0.0)
    assert after.to_dict() == before.to_dict()
