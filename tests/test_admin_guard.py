"""The admin guard and the routes around it: forwarding headers are believed only from configured
proxies, /metrics needs the admin token once one is set, a trailing slash never reflects Host."""
from __future__ import annotations

import pytest

from gw import start_gateway

POLICY = 'provider demo { format echo }\n'
TOKEN = "admin-token-for-tests"


@pytest.fixture(scope="module")
def open_gateway(tmp_path_factory):
    """No admin token, no trusted proxy: admin answers the loopback socket peer only."""
    gw = start_gateway(POLICY, tmp_path_factory.mktemp("admin_open"), "--no-watch",
                       env={"EDGERULES_ADMIN_TOKEN": "", "EDGERULES_FORWARDED_ALLOW_IPS": ""})
    yield gw
    gw.stop()


def _error(resp, status: int) -> dict:
    assert resp.status_code == status, (resp.status_code, resp.text)
    err = resp.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    return err


def test_a_loopback_client_reaches_admin(open_gateway):
    assert open_gateway.http.get("/admin/policy").status_code == 200


@pytest.mark.parametrize("header", [{"x-forwarded-for": "127.0.0.1"}, {"x-forwarded-for": "::1, 127.0.0.1"},
                                    {"forwarded": "for=127.0.0.1"}, {"x-real-ip": "127.0.0.1"}])
def test_a_forwarded_request_is_not_loopback_unless_a_proxy_is_trusted(open_gateway, header):
    # What a local proxy relaying a remote client looks like: the socket peer is 127.0.0.1.
    _error(open_gateway.http.get("/admin/policy", headers=header), 403)
    _error(open_gateway.http.post("/admin/reload", headers=header), 403)


def test_forwarding_headers_are_believed_from_a_configured_proxy_only(tmp_path):
    env = {"EDGERULES_ADMIN_TOKEN": "", "EDGERULES_FORWARDED_ALLOW_IPS": "127.0.0.1"}
    with start_gateway(POLICY, tmp_path, "--no-watch", env=env) as gw:
        # The trusted proxy names the client: a remote one is refused, a local one admitted.
        _error(gw.http.get("/admin/policy", headers={"x-forwarded-for": "203.0.113.7"}), 403)
        _error(gw.http.get("/admin/policy", headers={"x-forwarded-for": "127.0.0.1, 203.0.113.7"}), 403)
        assert gw.http.get("/admin/policy", headers={"x-forwarded-for": "127.0.0.1"}).status_code == 200
        assert gw.http.get("/admin/policy").status_code == 200


def test_metrics_are_open_without_a_token(open_gateway):
    assert open_gateway.http.get("/metrics").status_code == 200


def test_metrics_need_the_admin_token_once_one_is_set(tmp_path):
    with start_gateway(POLICY, tmp_path, "--no-watch", env={"EDGERULES_ADMIN_TOKEN": TOKEN}) as gw:
        assert _error(gw.http.get("/metrics"), 401)["code"] == "invalid_admin_token"
        _error(gw.http.get("/metrics", headers={"authorization": "Bearer wrong"}), 401)
        resp = gw.http.get("/metrics", headers={"authorization": f"Bearer {TOKEN}"})
        assert resp.status_code == 200 and "edgerules_requests_total" in resp.text
        _error(gw.http.get("/admin/policy"), 401)
        assert gw.http.get("/admin/policy", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert gw.http.get("/healthz").status_code == 200


@pytest.mark.parametrize("method, path", [("POST", "/v1/chat/completions/"), ("POST", "/v1/embeddings/"),
                                          ("GET", "/v1/models/"), ("GET", "/admin/policy/"), ("GET", "/healthz/")])
def test_a_trailing_slash_is_404_and_never_reflects_host(open_gateway, method, path):
    resp = open_gateway.http.request(method, path, headers={"host": "evil.example"},
                                     json={"model": "demo/echo", "messages": [{"role": "user", "content": "hi"}]})
    err = _error(resp, 404)
    assert err["code"] == "not_found"
    assert "location" not in resp.headers
    assert "evil.example" not in resp.text
