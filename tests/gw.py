"""Start a real `edgerules serve` on 127.0.0.1 for a policy written by the test."""
from __future__ import annotations

from pathlib import Path

import httpx

from procs import EDGERULES, Process, free_port, start_process, wait_until


class GatewayProc(Process):
    def __init__(self, popen, log, port: int, rules: Path):
        super().__init__(popen, log)
        self.port = port
        self.rules = rules
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = self.url + "/v1"
        self.http = httpx.Client(base_url=self.url, trust_env=False, timeout=30.0)

    def post(self, path: str, **kw) -> httpx.Response:
        return self.http.post(path, **kw)

    def chat(self, model: str = "demo/echo", content: str = "hello", **fields) -> httpx.Response:
        headers = fields.pop("headers", None)
        body = {"model": model, "messages": [{"role": "user", "content": content}], **fields}
        return self.http.post("/v1/chat/completions", json=body, headers=headers)

    def wait_for_output(self, text: str, count: int = 1, timeout: float = 30.0) -> str:
        """Wait until the process has printed `text` at least `count` times; returns the output."""
        return wait_until(lambda: self.output() if self.output().count(text) >= count else "",
                          timeout, what=f"{text!r} x{count} in the gateway's output")

    def finished_requests(self) -> int:
        """Model requests the gateway has finished (a stream finishes after its last event)."""
        return sum(int(line.split()[-1]) for line in self.http.get("/metrics").text.splitlines()
                   if line.startswith("edgerules_requests_total{"))

    def admin_policy(self) -> dict:
        return self.http.get("/admin/policy").raise_for_status().json()

    def stop(self, timeout: float = 5.0):
        self.http.close()
        return super().stop(timeout)


def start_gateway(rules: str | Path, directory: Path, *args: str, env: dict | None = None,
                  timeout: float = 30.0) -> GatewayProc:
    """rules: policy text (written to directory/policy.rules) or an existing path."""
    if isinstance(rules, str):
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "policy.rules").write_text(rules)
        path = directory
    else:
        path = Path(rules)
    for attempt in range(3):
        port = free_port()
        argv = [EDGERULES, "serve", "--rules", str(path), "--port", str(port), *args]
        try:
            return start_process(argv, f"http://127.0.0.1:{port}/healthz", timeout, env=env,
                                 cls=GatewayProc, port=port, rules=path)
        except RuntimeError as exc:
            if "address already in use" not in str(exc).lower() or attempt == 2:
                raise
    raise AssertionError("unreachable")
