"""OpenTelemetry traces over OTLP/HTTP (`--otel-endpoint`): one span per model request, a child
span per upstream attempt, with the GenAI semantic conventions' attributes.

Spans are built when a request finishes, from times the pipeline noted on the way, so a request
pays nothing while it runs. Nothing here is imported unless an endpoint is set.
"""
from __future__ import annotations

import time

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def traces_url(endpoint: str) -> str:
    """`http://collector:4318` is the collector; its traces path is /v1/traces (a full URL is kept)."""
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


class Tracer:
    def __init__(self, endpoint: str, service: str = "edgerules"):
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=traces_url(endpoint))))
        self.tracer = self.provider.get_tracer("edgerules")

    def record(self, call, status: int, seconds: float) -> None:
        """The finished request as a span, and its attempts (noted in `call.spans`) as children."""
        now_ns, now = time.time_ns(), time.monotonic()
        wall = lambda t: now_ns - int((now - t) * 1e9)   # noqa: E731  monotonic -> epoch ns
        requested = call.body.get("model") or ""
        op = call.kind
        attrs = {"gen_ai.operation.name": op, "gen_ai.request.model": str(requested),
                 "http.response.status_code": status, "edgerules.key": call.key,
                 "edgerules.route": call.route, "edgerules.cache": call.cache,
                 "edgerules.attempts": call.attempts, "edgerules.policy": call.live.policy.version,
                 "edgerules.rules": list(call.decision.matched) if call.decision else []}
        provider_name, _, model = call.route.partition("/")
        provider = call.live.providers.get(provider_name)
        if provider is not None:
            attrs["gen_ai.provider.name"] = provider.spec.format
            attrs["gen_ai.response.model"] = model
        usage = call.usage if call.route else None
        if usage:
            for name, keys in (("input", ("prompt_tokens", "input_tokens")),
                               ("output", ("completion_tokens", "output_tokens"))):
                value = next((usage[k] for k in keys if isinstance(usage.get(k), int)), None)
                if value is not None:
                    attrs[f"gen_ai.usage.{name}_tokens"] = value
        if call.ttft is not None:
            attrs["edgerules.time_to_first_chunk_ms"] = round(call.ttft * 1000, 3)
        if status >= 400:
            attrs["error.type"] = str(status)
        span = self.tracer.start_span(f"{op} {requested}".strip(), kind=SpanKind.SERVER, attributes=attrs,
                                      start_time=wall(call.started))
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR, call.error or None))
        parent = trace.set_span_in_context(span)
        for name, attempt_model, started, ended, error in call.spans or ():
            p = call.live.providers.get(name)
            child = {"gen_ai.operation.name": op, "gen_ai.request.model": attempt_model,
                     "gen_ai.provider.name": p.spec.format if p is not None else name,
                     "edgerules.provider": name}
            if error:
                child["error.type"] = error
            sub = self.tracer.start_span(f"{op} {attempt_model}", context=parent, kind=SpanKind.CLIENT,
                                         attributes=child, start_time=wall(started))
            if error:
                sub.set_status(Status(StatusCode.ERROR, error))
            sub.end(end_time=wall(ended))
        span.end(end_time=wall(call.started + seconds))

    def shutdown(self) -> None:
        """Send what is queued, then stop (blocking: run it in a thread)."""
        self.provider.shutdown()


def open_tracer(endpoint: str) -> Tracer | None:
    return Tracer(endpoint) if endpoint else None
