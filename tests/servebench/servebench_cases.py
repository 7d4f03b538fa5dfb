#!/usr/bin/env python3
"""End-to-end test of loom-serve-bench against a real cluster (CPU, stories260K):
    servebench_cases.py LOOM SERVE_BENCH
Runs the benchmark against `loom serve` with the in-flight and the static
scheduler (40 requests at 50 req/s, mixed lengths): every request completes,
the JSON report is complete and sane. Then --shared-prefix against a server
with --enable-kv-cache-reuse: prompts are the prefix plus their own tokens and
the server reports prefix cache hits. Then bad flags exit 2 and an
unreachable endpoint exits 1 within its --timeout. The cluster helper is
tests/e2e/serve_cases.py's."""
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
import serve_cases as sc  # noqa: E402  the e2e suite's cluster helper (start, health wait, stop, sanitizer checks)

STORIES = sc.STORIES
ENV = sc.ENV
free_port = sc.free_port
LOOM, BENCH = sys.argv[1], sys.argv[2]
sc.LOOM = os.path.abspath(LOOM)
TMP = tempfile.mkdtemp(prefix="loom-servebench-")


class Cluster(sc.Cluster):
    """mpirun -n 2 loom serve on stories260K (one coordinator, one worker). On
    exit it also fails on a rank that died on a signal or called MPI_Abort."""

    def __init__(self, extra=()):
        super().__init__(STORIES, 1, 1, tuple(extra))

    def __exit__(self, *exc):
        super().__exit__(*exc)
        out = self.output()
        for bad in ("exited on signal", "MPI_ABORT"):
            assert bad not in out, out


def bench(*args, timeout=240):
    t = time.monotonic()
    p = subprocess.run([BENCH, *args], capture_output=True, text=True, timeout=timeout, env=ENV)
    return p, time.monotonic() - t


def check_report(r, n, shared_prefix=0, busy=True):
    """busy: the load kept the server busy enough that some Stats poll (every
    100 ms) saw a request running; a light load can slip between the polls."""
    assert r["completed"] == n and r["failed"] == 0, (r["completed"], r["failed"], r["errors"])
    assert r["errors"] == {} and r["extra_terminal_chunks"] == 0 and r["timed_out"] == 0, r
    assert r["unattributed_errors"] == 0 and not r["connection_lost"], r
    assert r["duration_s"] > 0 and r["requests_per_s"] > 0 and r["output_tokens_per_s"] > 0, r
    assert 0 < r["output_tokens"] <= r["requested_output_tokens"], r
    assert r["usage_mismatch"] == 0, r
    for key in ("ttft_ms", "itl_ms", "e2e_ms", "tpot_ms"):
        d = r[key]
        assert 0 <= d["p50"] <= d["p90"] <= d["p99"] <= d["max"], (key, d)
        assert d["count"] > 0, (key, d)
    assert r["ttft_ms"]["count"] == n, r["ttft_ms"]
    assert r["ttft_ms"]["p50"] <= r["e2e_ms"]["p50"] and r["ttft_ms"]["max"] <= r["e2e_ms"]["max"] + 1e-6, r
    s = r["server"]
    assert s["samples"] > 0 and 0 <= s["peak_running"] and 0 <= s["peak_kv_used_fraction"] <= 1, s
    assert s["kv_blocks_total"] > 0 and s["tokens_per_block"] > 0, s
    assert 0 <= s["peak_kv_blocks_used"] <= s["kv_blocks_total"], s
    if busy:
        assert s["peak_running"] >= 1 and s["peak_kv_used_fraction"] > 0 and s["peak_kv_blocks_used"] > 0, s
    assert 0 <= s["prefix_hit_rate"] <= 1 and s["preemptions"] >= 0 and s["refused"] == 0, s
    cols = s["series_columns"]
    assert cols[:5] == ["t_s", "running", "waiting", "kv_used_fraction", "tokens_per_s"], cols
    assert all(len(row) == len(cols) for row in s["series"]), cols
    assert r["config"]["shared_prefix"] == shared_prefix, r["config"]
    assert len(r["requests"]) == n
    assert r["input_tokens"] == sum(q["prompt_len"] for q in r["requests"]), r["input_tokens"]
    for q in r["requests"]:
        assert 1 <= q["input_len"] <= 20 and 5 <= q["output_len"] <= 60, q
        assert q["prompt_len"] == shared_prefix + q["input_len"], q
        assert 1 <= q["produced"] <= q["output_len"], q
        assert q["finish"] in ("length", "eos"), q


def run_load(scheduler):
    out = os.path.join(TMP, f"{scheduler}.json")
    args = ["--num-requests", "40", "--rate", "50", "--input-len-range", "1,20", "--output-len-range", "5,60",
            "--seed", "7", "--timeout", "200", "--json", out]
    with Cluster(["--scheduler", scheduler]) as c:
        p, _ = bench("--endpoint", c.endpoint, *args)
        assert p.returncode == 0, f"{scheduler}: exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{c.output()}"
    print(f"--- scheduler {scheduler}\n{p.stdout}")
    r = json.load(open(out))
    check_report(r, 40)
    return r


def run_shared_prefix():
    """Every prompt opens with the same 64 tokens; with reuse on, later requests find them cached."""
    out = os.path.join(TMP, "shared_prefix.json")
    args = ["--num-requests", "16", "--rate", "20", "--input-len-range", "1,20", "--output-len-range", "5,60",
            "--seed", "7", "--shared-prefix", "64", "--timeout", "200", "--json", out]
    with Cluster(["--enable-kv-cache-reuse"]) as c:
        p, _ = bench("--endpoint", c.endpoint, *args)
        assert p.returncode == 0, f"shared prefix: exit {p.returncode}\n{p.stdout}\n{p.stderr}\n{c.output()}"
    print(f"--- --shared-prefix 64, --enable-kv-cache-reuse\n{p.stdout}")
    assert "shared prompt prefix" in p.stdout and "prefix cache hit rate" in p.stdout, p.stdout
    r = json.load(open(out))
    check_report(r, 16, shared_prefix=64, busy=False)  # 16 short requests: polls may see none running
    assert r["server"]["prefix_hit_rate"] > 0, r["server"]
    return r


def main():
    inflight = run_load("inflight")
    static = run_load("static")
    # the same seed sends the same requests to both
    assert [(q["input_len"], q["output_len"]) for q in inflight["requests"]] == \
           [(q["input_len"], q["output_len"]) for q in static["requests"]]
    print("output tokens/s: inflight %.1f, static %.1f" % (inflight["output_tokens_per_s"], static["output_tokens_per_s"]))
    shared = run_shared_prefix()
    # the prefix goes in front: each request's own length (and output length) is as without it
    assert [(q["input_len"], q["output_len"]) for q in shared["requests"]] == \
           [(q["input_len"], q["output_len"]) for q in inflight["requests"][:16]]

    ep = "tcp://127.0.0.1:1"
    bad = [[], ["--num-requests", "5"], ["--endpoint", ep], ["--endpoint", ep, "--num-requests", "0"],
           ["--endpoint", ep, "--num-requests", "x"], ["--endpoint", ep, "--num-requests", "5", "--rate", "-1"],
           ["--endpoint", ep, "--num-requests", "5", "--input-len-range", "5,2"],
           ["--endpoint", ep, "--num-requests", "5", "--input-len-range", "5"],
           ["--endpoint", ep, "--num-requests", "5", "--input-len", "3", "--input-len-range", "1,2"],
           ["--endpoint", ep, "--num-requests", "5", "--output-len", "0"],
           ["--endpoint", ep, "--num-requests", "5", "--vocab", "3"],
           ["--endpoint", ep, "--num-requests", "5", "--lengths", os.path.join(TMP, "missing.json")],
           ["--endpoint", ep, "--num-requests", "5", "--bogus", "1"],
           ["--endpoint", ep, "--num-requests", "5", "--timeout"]]
    bad_pairs = os.path.join(TMP, "bad_pairs.json")
    with open(bad_pairs, "w") as f:
        json.dump([[3, 4], [0, 2]], f)
    bad.append(["--endpoint", ep, "--lengths", bad_pairs])
    for args in bad:
        p, _ = bench(*args, timeout=30)
        assert p.returncode == 2, f"{args}: exit {p.returncode}, want 2\n{p.stderr}"
        assert p.stderr.startswith("loom-serve-bench: "), (args, p.stderr)
    print(f"{len(bad)} bad flag sets exit 2")

    # --shared-prefix: N >= 0, and N + the longest input length must fit in int32
    shared_bad = [(["--shared-prefix", "-1"], "out of range"), (["--shared-prefix", "x"], "not an integer"),
                  (["--shared-prefix", "2147483647"], "exceeds"),
                  (["--shared-prefix", "2147483600", "--input-len-range", "1,100"], "exceeds"),
                  (["--shared-prefix", "99999999999"], "out of range"), (["--shared-prefix"], "needs a value")]
    for extra, needle in shared_bad:
        p, _ = bench("--endpoint", ep, "--num-requests", "5", *extra, timeout=30)
        assert p.returncode == 2, f"{extra}: exit {p.returncode}, want 2\n{p.stderr}"
        assert p.stderr.startswith("loom-serve-bench: --shared-prefix") and needle in p.stderr, (extra, p.stderr)
    print(f"{len(shared_bad)} bad --shared-prefix values exit 2")

    p, dt = bench("--endpoint", f"tcp://127.0.0.1:{free_port()}", "--num-requests", "5", "--timeout", "3", timeout=30)
    assert p.returncode == 1 and "cannot reach" in p.stderr, (p.returncode, p.stderr)
    assert dt < 3 + 2, f"unreachable endpoint took {dt:.1f} s with --timeout 3"
    print(f"unreachable endpoint: exit 1 after {dt:.1f} s")


if __name__ == "__main__":
    main()
