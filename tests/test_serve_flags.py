"""`edgerules serve` flags that size the gateway: cache bounds and the body limit."""
from __future__ import annotations

import subprocess
import sys

from gw import start_gateway
from procs import EDGERULES

POLICY = 'provider demo { format echo }\nrule cached { cache ttl 1h route demo/echo }\n'


def test_cache_max_entries_flag_bounds_the_cache(tmp_path):
    gw = start_gateway(POLICY, tmp_path, "--no-watch", "--cache-max-entries", "1")
    try:
        assert gw.chat("m", "first").headers["x-edgerules-cache"] == "MISS"
        assert gw.chat("m", "first").headers["x-edgerules-cache"] == "HIT"
        assert gw.chat("m", "second").headers["x-edgerules-cache"] == "MISS"   # evicts "first"
        assert gw.chat("m", "first").headers["x-edgerules-cache"] == "MISS"
    finally:
        gw.stop()


def test_bad_sizes_are_refused_before_serving():
    for args in (["--cache-max-bytes", "12zz"], ["--max-body", "lots"], ["--cache-max-entries", "0"]):
        out = subprocess.run([EDGERULES, "serve", "--no-watch", *args],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("edgerules serve: ")
