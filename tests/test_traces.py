"""--otel-endpoint: a real gateway sends its spans over OTLP/HTTP to a receiver of the test's own
(a Starlette app on 127.0.0.1 decoding the protobuf with opentelemetry-proto): one span per request,
a child per upstream attempt, GenAI attributes; and without the flag nothing of OpenTelemetry loads."""
from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from procs import free_port, wait_until

trace_service = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
import uvicorn  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import Response  # noqa: E402
from starlette.routing import Route  # noqa: E402

POLICY = """
provider up {{ url "{url}" }}
rule smart {{
    when model == "smart"
    retry 2 backoff constant 10ms on 5xx
    route up/fake-model
}}
"""


class Receiver:
    """An OTLP/HTTP trace receiver: POST /v1/traces with an ExportTraceServiceRequest."""

    def __init__(self):
        self.spans = []
        self.lock = threading.Lock()
        self.port = free_port()
        app = Starlette(routes=[Route("/v1/traces", self.receive, methods=["POST"])])
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                   lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    async def receive(self, request: Request) -> Response:
        message = trace_service.ExportTraceServiceRequest()
        message.ParseFromString(await request.body())
        with self.lock:
            for resource in message.resource_spans:
                for scope in resource.scope_spans:
                    self.spans.extend(scope.spans)
        return Response(trace_service.ExportTraceServiceResponse().SerializeToString(),
                        media_type="application/x-protobuf")

    def __enter__(self):
        self.thread.start()
        wait_until(lambda: self.server.started, 10, what="the OTLP receiver listening")
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)

    def named(self, name: str) -> list:
        with self.lock:
            return [s for s in self.spans if s.name == name]


def _attrs(span) -> dict:
    out = {}
    for kv in span.attributes:
        v = kv.value
        out[kv.key] = getattr(v, v.WhichOneof("value"))
    return out


def test_a_retried_request_is_one_span_with_a_child_per_attempt(upstream, gateways):
    upstream.reset()
    with Receiver() as receiver:
        gw = gateways(POLICY.format(url=upstream.url), "--otel-endpoint", f"http://127.0.0.1:{receiver.port}",
                      env={"OTEL_BSP_SCHEDULE_DELAY": "100"})
        upstream.control(fail_next=1, fail_status=500)
        resp = gw.chat("smart")
        assert resp.status_code == 200 and resp.headers["x-edgerules-attempts"] == "2"
        usage = resp.json()["usage"]
        [request] = wait_until(lambda: receiver.named("chat smart"), 30, what="the request's span")
        children = wait_until(lambda: [s for s in receiver.named("chat fake-model")
                                       if s.parent_span_id == request.span_id] if len(
                                  receiver.named("chat fake-model")) >= 2 else None, 30, what="two attempt spans")
        assert len(children) == 2
        assert all(c.trace_id == request.trace_id for c in children)
        first, second = sorted(children, key=lambda s: s.start_time_unix_nano)
        assert request.start_time_unix_nano <= first.start_time_unix_nano < first.end_time_unix_nano
        assert first.end_time_unix_nano <= second.start_time_unix_nano
        assert second.end_time_unix_nano <= request.end_time_unix_nano
        assert _attrs(first)["error.type"] == "500" and "error.type" not in _attrs(second)
        assert first.status.code == first.status.STATUS_CODE_ERROR
        attrs = _attrs(request)
        assert attrs["gen_ai.operation.name"] == "chat"
        assert attrs["gen_ai.request.model"] == "smart"
        assert attrs["gen_ai.response.model"] == "fake-model"
        assert attrs["gen_ai.provider.name"] == "openai"
        assert attrs["gen_ai.usage.input_tokens"] == usage["prompt_tokens"]
        assert attrs["gen_ai.usage.output_tokens"] == usage["completion_tokens"]
        assert attrs["http.response.status_code"] == 200 and attrs["edgerules.attempts"] == 2
        assert _attrs(second)["gen_ai.provider.name"] == "openai"
        assert _attrs(second)["edgerules.provider"] == "up"
        assert request.kind == request.SPAN_KIND_SERVER and first.kind == first.SPAN_KIND_CLIENT


def test_spans_queued_at_shutdown_are_sent(upstream, gateways):
    upstream.reset()
    with Receiver() as receiver:
        gw = gateways(POLICY.format(url=upstream.url), "--otel-endpoint", f"http://127.0.0.1:{receiver.port}",
                      env={"OTEL_BSP_SCHEDULE_DELAY": "60000"})   # nothing leaves before shutdown
        assert gw.chat("smart").status_code == 200
        wait_until(lambda: gw.finished_requests() >= 1, 30, what="the request finished")
        assert receiver.named("chat smart") == []
        gw.stop(timeout=30)
        assert len(receiver.named("chat smart")) == 1


def test_without_an_endpoint_nothing_of_opentelemetry_is_loaded(tmp_path):
    (tmp_path / "p.rules").write_text("provider demo { format echo }\n")
    script = f"""
import sys
from starlette.testclient import TestClient
from edgerules.gateway.server import create_app
with TestClient(create_app({str(tmp_path / 'p.rules')!r})) as client:
    r = client.post("/v1/chat/completions", json={{"model": "demo/echo", "messages": [{{"role": "user", "content": "hi"}}]}})
    assert r.status_code == 200, r.text
print(sorted(m for m in sys.modules if m.startswith("opentelemetry")))
"""
    env = {"PATH": "/usr/bin:/bin", "EDGERULES_LOG_STORE": "none", "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
