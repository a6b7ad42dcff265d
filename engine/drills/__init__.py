"""Tools for drills and benchmarks: the fake upstream, the load generator, the bare pass-through,
the gateway benchmark, the rule benchmark and the synthetic policies they run on."""
