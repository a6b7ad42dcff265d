"""/metrics after real requests: the GenAI series (tokens, duration, time to first chunk), spend per
key, provider and model, cache lookups, limit refusals, circuit state and reloads, with label values
bounded to what the policy names."""
from __future__ import annotations

import re

import pytest

from procs import wait_until

POLICY = """
provider up {{
    url "{url}"
    price fake-model input 2.00 output 8.00
    cooldown 30s after 1 failures
}}
provider demo {{ format echo }}
key team_a {{ secret "sk-team-a" }}
key team_b {{ secret "sk-team-b" }}

rule cached  {{ when temperature == 0 and not stream  cache ttl 1h }}
rule tight   {{ when model == "tight"  limit requests 1 per 1m by key  route up/fake-model }}
rule smart   {{ when model == "smart"  route up/fake-model }}
"""


def _samples(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def _types(text: str) -> dict[str, str]:
    return dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))


@pytest.fixture
def gateway(upstream, gateways):
    upstream.reset()
    return gateways(POLICY.format(url=upstream.url))


def test_genai_series_after_real_requests(gateway, upstream):
    a, b = {"authorization": "Bearer sk-team-a"}, {"authorization": "Bearer sk-team-b"}
    assert gateway.chat("smart", headers=a).status_code == 200
    assert gateway.chat("smart", headers=b, stream=True).status_code == 200
    assert gateway.chat("smart", headers=a, temperature=0).status_code == 200
    assert gateway.chat("smart", headers=a, temperature=0).headers["x-edgerules-cache"] == "HIT"
    assert gateway.chat("tight", headers=a).status_code == 200
    assert gateway.chat("tight", headers=a).status_code == 429
    for n in range(5):   # names the client makes up: one `other` series, not five
        assert gateway.chat(f"demo/made-up-{n}", headers=b).status_code == 200
    wait_until(lambda: gateway.finished_requests() >= 11, 30, what="every request finished")
    text = gateway.http.get("/metrics").text
    got, types = _samples(text), _types(text)

    assert types["gen_ai_client_token_usage"] == "histogram"
    assert types["gen_ai_client_operation_duration_seconds"] == "histogram"
    assert types["gen_ai_client_operation_time_to_first_chunk_seconds"] == "histogram"
    assert types["edgerules_cost_usd_total"] == "counter"
    genai = 'gen_ai_operation_name="chat",gen_ai_provider_name="up",gen_ai_request_model="smart"'
    # smart: one plain answer, one stream, one cache miss; the hit spends no tokens
    assert got[f'gen_ai_client_operation_duration_seconds_count{{{genai},error_type=""}}'] == 4
    inputs = got[f'gen_ai_client_token_usage_sum{{{genai},gen_ai_token_type="input"}}']
    outputs = got[f'gen_ai_client_token_usage_sum{{{genai},gen_ai_token_type="output"}}']
    assert inputs > 0 and outputs > 0
    # the stream's usage counts too (the request log asks the upstream for it)
    assert got[f'gen_ai_client_token_usage_count{{{genai},gen_ai_token_type="input"}}'] == 3
    assert got[f'gen_ai_client_operation_time_to_first_chunk_seconds_count{{{genai}}}'] == 1
    # the 429 of the limit: an error_type, and the rule that refused it
    assert got['gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",'
               'gen_ai_provider_name="other",gen_ai_request_model="tight",error_type="429"}'] == 1
    assert got['edgerules_limited_total{rule="tight"}'] == 1
    assert got['edgerules_cache_lookups_total{result="hit"}'] == 1
    assert got['edgerules_cache_lookups_total{result="miss"}'] == 1
    # spend by key, provider and answering model, from the price table (USD per 1M tokens)
    spend_a = got['edgerules_cost_usd_total{key="team_a",gen_ai_provider_name="up",gen_ai_response_model="fake-model"}']
    assert spend_a > 0
    assert not any(k.startswith("edgerules_cost_usd_total") and 'provider_name="demo"' in k for k in got)
    # made-up model names: one bounded series
    assert not any("made-up" in line for line in text.splitlines())
    assert got['gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",'
               'gen_ai_provider_name="demo",gen_ai_request_model="other",error_type=""}'] == 5
    # reloads, circuits, and what there was before
    assert got["edgerules_policy_last_reload_success_timestamp_seconds"] > 1.7e9
    assert got['edgerules_provider_open{provider="up"}'] == 0
    assert 'edgerules_requests_total{route="up/fake-model",status="200",cache="BYPASS"}' in got
    assert types["edgerules_request_seconds"] == "histogram"


def test_cost_equals_tokens_times_price(gateway):
    """One request's spend is its usage times the price table, to the nano-dollar."""
    resp = gateway.chat("smart", headers={"authorization": "Bearer sk-team-b"}, content="price me")
    usage = resp.json()["usage"]
    wait_until(lambda: gateway.finished_requests() >= 1, 30, what="the request finished")
    got = _samples(gateway.http.get("/metrics").text)
    spend = got['edgerules_cost_usd_total{key="team_b",gen_ai_provider_name="up",gen_ai_response_model="fake-model"}']
    assert spend == pytest.approx((usage["prompt_tokens"] * 2.0 + usage["completion_tokens"] * 8.0) / 1e6, abs=1e-9)


def test_open_circuit_and_upstream_errors(gateway, upstream):
    upstream.control(fail_next=1, fail_status=500)
    assert gateway.chat("smart", headers={"authorization": "Bearer sk-team-a"}).status_code == 502
    got = _samples(gateway.http.get("/metrics").text)
    assert got['edgerules_provider_open{provider="up"}'] == 1
    assert got['edgerules_provider_failures{provider="up"}'] == 1
    assert got['edgerules_upstream_calls_total{provider="up",outcome="500"}'] == 1
    assert got['gen_ai_client_operation_duration_seconds_count{gen_ai_operation_name="chat",'
               'gen_ai_provider_name="up",gen_ai_request_model="smart",error_type="502"}'] == 1
