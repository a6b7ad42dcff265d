"""`--state` on a Redis Sentinel and on a Redis Cluster: each real topology (started here) shared by two
`edgerules serve` processes: one limit admits exactly N across both, a cached answer stored by one is a
HIT on the other, a circuit opened by one is open on the other."""
from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from gw import start_gateway
from procs import Process, free_port, skip_or_fail_in_ci, start_upstream, wait_until
from shared_state import breaker_is_shared, cache_is_shared, chat, crowd, limit_is_exact_across, redis_gone

POLICY = """
provider up { url "{good}" }
provider flaky {
    url "{bad}"
    cooldown 10m after 2 failures
}

rule exact    { when header("x-test") == "exact"    limit requests 12 per 10m }
rule cached   { when header("x-test") == "cache"    cache ttl 10m }
rule breaker  { when header("x-test") == "breaker"  route fallback [flaky/m, up/m] }
rule everything { route up/m }
"""
SERVICE = "edgerules"
PASSWORD = "s3cret-topology"   # every server asks for it: the URI's password form is tested too


class RedisServer:
    """One redis-server (or sentinel) on a free port, in its own directory, stopped by its PID."""

    def __init__(self, *args: str, sentinel_of: int | None = None):
        binary = shutil.which("redis-server")
        if binary is None:
            skip_or_fail_in_ci("redis-server is not installed, so Redis Sentinel and Cluster are not tested")
        self.port, self.dir = free_port(), tempfile.mkdtemp(prefix="edgerules-redis-")
        if sentinel_of is not None:
            # Sentinel rewrites its configuration file, so it gets one of its own.
            conf = f"{self.dir}/sentinel.conf"
            with open(conf, "w") as f:
                f.write(f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\nrequirepass {PASSWORD}\n"
                        f"sentinel monitor {SERVICE} 127.0.0.1 {sentinel_of} 1\n"
                        f"sentinel auth-pass {SERVICE} {PASSWORD}\n")
            argv = [binary, conf, "--sentinel"]
        else:
            argv = [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self.dir,
                    "--save", "", "--appendonly", "no", "--requirepass", PASSWORD, "--masterauth", PASSWORD, *args]
        self.argv = argv
        self._spawn()

    def _spawn(self) -> None:
        log = tempfile.TemporaryFile()
        self.proc = Process(subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.dir), log)

    def kill(self) -> None:
        self.proc.popen.kill()   # no chance to save anything
        self.proc.popen.wait(10)

    def start_again(self) -> None:
        """On the same port and directory."""
        self._spawn()

    def ask(self, *command: str):
        """One command over a fresh connection; None while the server is not answering yet."""
        import redis

        assert self.proc.running(), self.proc.output()
        client = redis.Redis(host="127.0.0.1", port=self.port, password=PASSWORD, socket_timeout=5,
                             decode_responses=True)
        try:
            return client.execute_command(*command)
        except redis.ConnectionError:
            return None
        finally:
            client.close()

    def stop(self) -> None:
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def start_sentinel(servers: list) -> str:
    master = RedisServer()
    servers.append(master)
    wait_until(lambda: master.ask("PING"), 10, what="the master redis-server")
    sentinel = RedisServer(sentinel_of=master.port)
    servers.append(sentinel)
    wait_until(lambda: sentinel.ask("SENTINEL", "GET-MASTER-ADDR-BY-NAME", SERVICE), 10,
               what="redis sentinel to know its master")
    return f"redis+sentinel://:{PASSWORD}@127.0.0.1:{sentinel.port}/{SERVICE}"


def start_cluster(servers: list) -> str:
    nodes = []
    for _ in range(3):
        # The cluster bus port is named, not derived (port + 10000 may be taken or out of range).
        node = RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                           "--cluster-port", str(free_port()))
        servers.append(node)
        nodes.append(node)
    for node in nodes:
        wait_until(lambda: node.ask("PING"), 10, what="a cluster node")
    addresses = [f"127.0.0.1:{n.port}" for n in nodes]
    created = subprocess.run(["redis-cli", "--no-auth-warning", "-a", PASSWORD, "--cluster", "create", *addresses,
                              "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
    assert created.returncode == 0, created.stdout + created.stderr
    for node in nodes:
        wait_until(lambda: "cluster_state:ok" in (node.ask("CLUSTER", "INFO") or ""), 30,
                   what="every cluster node to report the cluster ok")
    return f"redis+cluster://:{PASSWORD}@" + ",".join(addresses)


class Pair(list):
    """The two gateways, and the Redis servers they share."""

    def __init__(self, gateways, servers, kind: str):
        super().__init__(gateways)
        self.servers, self.kind = servers, kind


@pytest.fixture(scope="module")
def bad():
    with start_upstream() as up:
        up.control(status=503)
        yield up


@pytest.fixture(scope="module", params=["sentinel", "cluster"])
def pair(request, upstream, bad, tmp_path_factory):
    """Two gateways on one Redis topology (the servers are started here and stopped after the module)."""
    if shutil.which("redis-cli") is None:
        skip_or_fail_in_ci("redis-cli is not installed, so Redis Sentinel and Cluster are not tested")
    servers, gateways = [], []
    try:
        uri = (start_sentinel if request.param == "sentinel" else start_cluster)(servers)
        text = POLICY.replace("{good}", upstream.url).replace("{bad}", bad.url)
        dirs = [tmp_path_factory.mktemp(request.param + name) for name in ("a", "b")]
        with ThreadPoolExecutor(2) as pool:   # both start at once: most of the module's time is start-up
            starts = [pool.submit(start_gateway, text, d, "--no-watch", "--state", uri, timeout=60) for d in dirs]
        gateways.extend(start.result() for start in starts if start.exception() is None)
        for start in starts:
            start.result()   # the first start-up failure, once every gateway that started is listed to stop
        yield Pair(gateways, servers, request.param)
    finally:
        for process in gateways + servers:
            process.stop()


def tails(gateways) -> str:
    return "\n".join(gw.output()[-4000:] for gw in gateways)


def test_one_limit_admits_exactly_n_across_both(pair):
    limit_is_exact_across(pair, 12, lambda: tails(pair))


def test_an_answer_cached_by_one_is_a_hit_on_the_other(pair, upstream):
    cache_is_shared(pair, upstream)


def test_a_circuit_opened_by_one_is_open_on_the_other(pair, bad):
    breaker_is_shared(pair, bad)


def test_the_password_in_the_state_uri_is_never_printed(pair):
    for gw in pair:
        assert PASSWORD not in gw.output()
        assert PASSWORD not in gw.http.get("/metrics").text


def test_the_first_burst_after_a_whole_restart_gets_no_500(pair):
    # redis-py's Cluster client, in the first commands after every node restarted, writes on
    # connections another command closed: those are Redis failures (503 for limits, BYPASS for the
    # cache), never the gateway's own 500.
    for server in pair.servers:
        server.kill()
    for gw in pair:   # the clients see every node gone first
        assert chat(gw, "exact").status_code == 503
    for server in pair.servers:
        server.start_again()
    for server in pair.servers:
        wait_until(lambda: server.ask("PING"), 10, what="a restarted Redis server")
    if pair.kind == "cluster":
        for server in pair.servers:
            wait_until(lambda: "cluster_state:ok" in (server.ask("CLUSTER", "INFO") or ""), 30,
                       what="the restarted cluster to report ok")
    for test in ("exact", "cache"):
        statuses = [r.status_code for r in asyncio.run(crowd(pair, test, 24))]
        assert set(statuses) <= {200, 429, 503}, (test, statuses, tails(pair))


def test_with_every_server_gone_limits_fail_closed_and_the_rest_open(pair):
    """Last of the module for each topology: it stops the servers for good."""
    for server in pair.servers:
        server.kill()
    for gw in pair:
        redis_gone(gw, "exact")


def test_a_state_uri_that_cannot_work_is_refused_before_serving(tmp_path):
    from procs import EDGERULES

    (tmp_path / "policy.rules").write_text("provider demo { format echo }\nrule r { route demo/echo }\n")
    for uri, says in ((f"redis+sentinel://:{PASSWORD}@127.0.0.1:26379", "needs the service name"),
                      (f"redis+sentinal://:{PASSWORD}@127.0.0.1:26379/x", "unknown state URI")):
        done = subprocess.run([EDGERULES, "serve", "--rules", str(tmp_path), "--port", str(free_port()),
                               "--no-watch", "--state", uri], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert says in done.stderr and "redis+sentinel://[:PASSWORD@]HOST:PORT" in done.stderr
        assert PASSWORD not in done.stderr and ":***@127.0.0.1" in done.stderr
