"""Provider key pools (`api_key [...]`) against a real `edgerules serve` and a real `edgerules
upstream` that refuses one given key: a refused key is cooled down and the next key serves the
request, every key cooling makes the provider unavailable (fallbacks go on), each key's own limits
hold, and no key shows in an answer, a log line, the metrics or the admin view."""
from __future__ import annotations

import json
import shutil
import subprocess

import openai
import pytest

from gw import start_gateway
from procs import EDGERULES, start_upstream
from test_limits import start_redis

KEYS = {f"POOL_K{i}": f"sk-pool-key-{i}-{'x' * 20}" for i in range(1, 17)}
K = {i: KEYS[f"POOL_K{i}"] for i in range(1, 17)}

POLICY = """
provider cool {
    url "{url}"
    api_key [env("POOL_K1") as alpha, env("POOL_K2") as beta] pick round_robin
}
provider dry {
    url "{url}"
    api_key [env("POOL_K3"), env("POOL_K4")]
}
provider spare { format echo }
provider lim {
    url "{url}"
    api_key [
        env("POOL_K5") as small limit requests 2 per 1m,
        env("POOL_K6") as big,
    ] pick round_robin
}
provider tok {
    url "{url}"
    api_key [env("POOL_K7") as tiny limit tokens 1 per 1h, env("POOL_K8")] pick round_robin
}
provider room {
    url "{url}"
    api_key [env("POOL_K9") as only limit requests 3 per 1m]
}
rule cool  { when model == "cool" route cool/m }
rule dry   { when model == "dry" route fallback [dry/m, spare/echo] }
rule solo  { when model == "solo" route dry/m }
rule lim   { when model == "lim" route lim/m }
rule tok   { when model == "tok" route tok/m }
provider echoed {
    url "{url}"
    api_key [env("POOL_K10")]
}
provider offline {
    format echo
    api_key ["label-one" as one limit requests 1 per 1m, "label-two" as two] pick round_robin
}
rule offline { when model == "offline" route offline/echo }
provider shared {
    url "{url}"
    api_key [env("POOL_K11") limit requests 2 per 1m, env("POOL_K12")] pick round_robin
}
rule shared { when model == "shared" route shared/m }
provider most {
    url "{url}"
    api_key [env("POOL_K13") as big limit requests 100 per 1m, env("POOL_K14") as small limit requests 4 per 1m]
}
rule most  { when model == "most" route most/m }
provider ant {
    url "{ant_url}"
    format anthropic
    api_key [env("POOL_K15"), env("POOL_K16")] pick round_robin
}
rule ant   { when model == "ant" route ant/claude }
rule room  { when model == "room" route room/m }
rule echoed { when model == "echoed" route echoed/m }
"""


@pytest.fixture(scope="module")
def up(upstream):
    return upstream   # conftest's fake upstream of this module


@pytest.fixture(scope="module")
def ant_up():
    with start_upstream("--format", "anthropic") as proc:
        yield proc


@pytest.fixture(scope="module")
def state():
    """The gateway's state storage: Redis where it is installed (as in CI), so the key limits are
    tested on the shared backend; else memory."""
    if shutil.which("redis-server") is None:
        yield "memory://"
        return
    proc, uri = start_redis()
    yield uri
    proc.stop()


@pytest.fixture(scope="module")
def gw(up, ant_up, state, tmp_path_factory):
    policy = POLICY.replace("{url}", up.url).replace("{ant_url}", ant_up.url)
    proc = start_gateway(policy, tmp_path_factory.mktemp("pools"), "--no-watch", "--state", state, env=KEYS)
    yield proc
    proc.stop()


@pytest.fixture(autouse=True)
def no_refusal(up):
    yield
    up.control(refuse_key=None, retry_after=None, refuse_key_status=429)


def seen(up, n: int) -> int:
    return up.stats()["by_key"].get(K[n], 0)


def assert_no_key(text: str) -> None:
    for key in KEYS.values():
        assert key not in text


def test_a_key_answering_429_is_cooled_down_and_the_next_key_serves(up, gw):
    up.control(refuse_key=K[1], refuse_key_status=429, retry_after="60s")
    for _ in range(4):
        resp = gw.chat("cool")
        assert resp.status_code == 200, resp.text
    client = openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0)
    with client.chat.completions.create(model="cool", messages=[{"role": "user", "content": "hi"}],
                                        stream=True) as stream:
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    # The first request met K1's 429 and went on with K2; K1 then sat out its Retry-After.
    assert seen(up, 1) == 1
    assert seen(up, 2) == 5
    metrics = gw.http.get("/metrics").text
    assert 'edgerules_pool_key_calls_total{provider="cool",pool_key="alpha",outcome="429"} 1' in metrics
    assert 'edgerules_pool_key_calls_total{provider="cool",pool_key="beta",outcome="ok"} 5' in metrics
    assert 'edgerules_pool_key_tokens_total{provider="cool",pool_key="beta"}' in metrics
    assert "cooling it down for 60s" in gw.output()
    assert_no_key(metrics)
    assert_no_key(gw.output())


def test_every_key_cooling_makes_the_provider_unavailable_and_the_fallback_answers(up, gw):
    up.control(refuse_key=K[3], refuse_key_status=401)
    assert gw.chat("dry").json()["model"] != "echo"   # K3: 401, cooled for long; K4 answered
    assert (seen(up, 3), seen(up, 4)) == (1, 1)
    up.control(refuse_key=K[4], refuse_key_status=429, retry_after="30s")
    resp = gw.chat("dry")   # K4: 429, cooled; no key left: the fallback answers
    assert resp.status_code == 200 and resp.headers["x-edgerules-route"].startswith("spare/"), resp.text
    assert (seen(up, 3), seen(up, 4)) == (1, 2)
    resp = gw.chat("dry")   # every key cooling: the upstream is not called at all
    assert resp.status_code == 200 and resp.headers["x-edgerules-route"].startswith("spare/")
    assert (seen(up, 3), seen(up, 4)) == (1, 2)
    resp = gw.chat("solo")   # no fallback: a 429 with the time until a key is free
    assert resp.status_code == 429, resp.text
    assert int(resp.headers["retry-after"]) >= 1
    assert "every key of provider 'dry' is cooling down" in resp.json()["error"]["message"]
    assert_no_key(resp.text)


def test_a_refusal_that_echoes_the_key_is_redacted(up, gw):
    up.control(refuse_key=K[10], refuse_key_status=401)
    resp = gw.chat("echoed")
    assert resp.status_code == 502, resp.text   # the gateway's own key was refused: not the client's to fix
    assert "[redacted]" in resp.json()["error"]["message"]
    assert_no_key(resp.text)
    assert_no_key(gw.output())
    assert_no_key(str(gw.admin_policy()))


def test_a_pool_puts_each_key_where_its_format_wants_it(ant_up, gw):
    ant_up.control(refuse_key=K[15], refuse_key_status=429)
    for _ in range(3):
        assert gw.chat("ant").status_code == 200
    # anthropic's x-api-key header carries each key in turn; the first key was refused once.
    assert ant_up.stats()["by_key"] == {K[15]: 1, K[16]: 3}
    assert ant_up.stats()["last_headers"]["x-api-key"] == K[16]


def test_a_keys_request_limit_sends_the_rest_to_the_other_keys(up, gw):
    for _ in range(6):
        assert gw.chat("lim").status_code == 200
    assert (seen(up, 5), seen(up, 6)) == (2, 4)


def test_most_room_sends_each_call_to_the_key_with_the_largest_share_left(up, gw):
    for _ in range(6):
        assert gw.chat("most").status_code == 200
    # Both start whole (a tie: the first in turn); then big's 99/100 beats small's 3/4 every time.
    assert (seen(up, 13), seen(up, 14)) == (5, 1)


def test_a_keys_token_limit_is_counted_from_the_answers_usage(up, gw):
    for _ in range(4):
        assert gw.chat("tok").status_code == 200
    # K7's first answer spent more than its 1 token an hour: every later request went to K8.
    assert (seen(up, 7), seen(up, 8)) == (1, 3)


def test_a_pool_whose_keys_are_all_full_answers_429(up, gw):
    assert [gw.chat("room").status_code for _ in range(4)] == [200, 200, 200, 429]
    assert seen(up, 9) == 3


def test_check_reports_a_bad_pool_with_positions(tmp_path):
    path = tmp_path / "bad.rules"
    path.write_text('provider p {\n    url "http://127.0.0.1:9/v1"\n'
                    '    api_key [env("POOL_K1") limit cost 3 per 1m, "sk-written-in-the-file", ""] pick rotate\n}\n')
    out = subprocess.run([EDGERULES, "check", str(path)], capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", **KEYS})
    assert out.returncode != 0
    assert f"{path}:3:29: error[bad-pool-limit]" in out.stderr + out.stdout
    assert "error[bad-pick]: unknown pool strategy 'rotate'" in out.stderr + out.stdout
    assert "warning[literal-secret]" in out.stderr + out.stdout
    assert "error[empty-pool-key]: key 3 of the api_key pool of provider 'p' is empty" in out.stderr + out.stdout
    assert "sk-written-in-the-file" not in out.stderr + out.stdout


def test_a_pool_on_the_echo_format_picks_and_counts_offline(gw):
    assert [gw.chat("offline").status_code for _ in range(3)] == [200, 200, 200]
    metrics = gw.http.get("/metrics").text
    assert 'edgerules_pool_key_calls_total{provider="offline",pool_key="one",outcome="ok"} 1' in metrics
    assert 'edgerules_pool_key_calls_total{provider="offline",pool_key="two",outcome="ok"} 2' in metrics


def test_eval_shows_the_pool_of_the_route_without_its_keys(up, tmp_path):
    path = tmp_path / "p.rules"
    path.write_text(POLICY.replace("{url}", up.url).replace("{ant_url}", up.url))
    out = subprocess.run([EDGERULES, "eval", str(path)], input='{"model": "lim", "messages": []}',
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin", **KEYS})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["key_pools"] == {"lim": {"pick": "round_robin", "keys": [
        {"name": "small", "limits": {"requests": {"amount": 2, "window": 60.0}}},
        {"name": "big", "limits": {}}]}}
    assert_no_key(out.stdout)


def test_a_keys_limit_is_shared_by_every_gateway_on_one_redis(up, gw, state, tmp_path):
    if not state.startswith("redis://"):
        pytest.skip("redis-server is not installed")
    # A second gateway on the same Redis: the first key's 2 requests a minute are counted once for
    # both (each gateway alone would give it its turns 1 and 3: 4 in all).
    other = start_gateway(POLICY.replace("{url}", up.url).replace("{ant_url}", up.url), tmp_path, "--no-watch", "--state", state, env=KEYS)
    with other:
        statuses = [g.chat("shared").status_code for g in (gw, other, gw, other, gw, other)]
    assert statuses == [200] * 6
    assert (seen(up, 11), seen(up, 12)) == (2, 4)
