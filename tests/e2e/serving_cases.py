#!/usr/bin/env python3
"""End-to-end tests of paged KV serving: in-flight batching over a block pool,
preemption when the pool runs out, admission refusals, prefix reuse and the
release of blocks on cancel/disconnect. One meson test per case:
    serving_cases.py LOOM LOAD_CLIENT CASE
Requests go out all at once through tests/e2e/load_client, which accounts for
every chunk by request id. The reference for a request's tokens is the same
request alone: `loom run`, or a server with --max-batch-size 1 (checked against
`loom run` on a sample); the CPU backend is batch-invariant, so any difference
is a scheduling or KV bug."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import serve_cases as sc
from serve_cases import ENV, FIXTURES, STORIES, Cluster

LOOM = LOAD = TMP = None
CASES = {}
VOCAB = 512  # stories260K


def case(fn):
    CASES[fn.__name__] = fn
    return fn


Server = Cluster  # stopped by SIGTERM to the coordinator rank (serve_cases.Cluster.stop)


def request(rid, prompt, max_new, temperature=0.0, top_k=0, top_p=1.0, rep=1.0, seed=0, stream=True, stop=(), stop_ids=()):
    return {"id": rid, "prompt_ids": prompt, "max_new_tokens": max_new, "temperature": temperature, "top_k": top_k,
            "top_p": top_p, "repetition_penalty": rep, "seed": seed, "stream": stream, "stop": list(stop), "stop_ids": list(stop_ids)}


def mixed_requests(n, rnd, max_prompt=40, max_new=48, sampled=0.25):
    """n requests of mixed prompt and output lengths; a share sampled with every
    sampling knob, a few greedy with a repetition penalty, most greedy."""
    reqs = []
    for i in range(n):
        plen = rnd.choice([rnd.randrange(1, 8), rnd.randrange(8, 24), rnd.randrange(24, max_prompt + 1)])
        prompt = [1] + [rnd.randrange(3, VOCAB) for _ in range(plen - 1)]
        kw = {}
        if rnd.random() < sampled:
            kw = dict(temperature=rnd.choice([0.7, 1.0, 1.3]), top_k=rnd.choice([0, 0, 20]), top_p=rnd.choice([1.0, 0.9]),
                      rep=rnd.choice([1.0, 1.0, 1.3]), seed=rnd.randrange(1 << 31))
        elif rnd.random() < 0.1:
            kw = dict(rep=1.2)
        u = rnd.random()
        if u < 0.08:    # stop strings: held back while they may be starting, cut when they match
            kw["stop"] = rnd.choice([["."], [" she"], ["ing", "day"], ["Lily"]])
        elif u < 0.12:  # stop ids: common story tokens
            kw["stop_ids"] = rnd.sample([432, 426, 267, 439, 416], 2)
        reqs.append(request(f"r{i}", prompt, rnd.randrange(1, max_new + 1), stream=rnd.random() < 0.7, **kw))
    return reqs


def write_reqs(reqs):
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=TMP, delete=False) as f:
        json.dump(reqs, f)
    return f.name


def run_load(cluster, reqs, mode="run", k=None, timeout=300):
    """Sends reqs at once through load_client; returns ({id: result}, summary)."""
    path = write_reqs(reqs)
    args = [LOAD, cluster.endpoint, mode, path] + ([str(k)] if k is not None else []) + [str(timeout)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 60, env=ENV)
    assert p.returncode == 0, f"load_client {mode} failed ({p.returncode}): {p.stderr}\n{cluster.output()}"
    lines = [json.loads(l) for l in p.stdout.splitlines()]
    summary = lines[-1]
    assert summary.get("summary"), p.stdout[-2000:]
    return {r["id"]: r for r in lines[:-1]}, summary


def check_accounting(res, summary, reqs):
    """Every request has exactly one terminal chunk and nothing after it; no
    chunk for an id nobody sent."""
    bad = [(r["id"], res[r["id"]]["terminals"], res[r["id"]]["after_terminal"]) for r in reqs
           if res[r["id"]]["terminals"] != 1 or res[r["id"]]["after_terminal"]]
    assert not bad, f"requests without exactly one terminal chunk (id, terminals, chunks after it): {bad[:20]}\n{summary}"
    assert not summary["timed_out"], summary
    assert summary["unknown_chunks"] == 0 and summary["unexpected_messages"] == 0 and summary["anonymous_errors"] == 0, summary


def stats(cluster):
    return cluster.query("--stats")


def wait_stats(cluster, pred, what, timeout=30):
    """Polls --stats until pred(stats) holds; returns the stats."""
    end = time.time() + timeout
    while True:
        st = stats(cluster)
        if pred(st):
            return st
        if time.time() > end:
            raise AssertionError(f"{what}: stats stayed {st}\n{cluster.output()[-4000:]}")
        time.sleep(0.1)


def idle(st):
    return st["running"] == 0 and st["waiting"] == 0 and st["kv_blocks_used"] == 0


def loom_run(r, model=STORIES):
    a = [LOOM, "run", "--model", model, "--prompt-ids", ",".join(map(str, r["prompt_ids"])), "--max-new-tokens",
         str(r["max_new_tokens"]), "--temperature", str(r["temperature"]), "--top-k", str(r["top_k"]), "--top-p", str(r["top_p"]),
         "--repetition-penalty", str(r["repetition_penalty"]), "--seed", str(r["seed"]), "--json"]
    for x in r["stop"]:
        a += ["--stop", x]
    for x in r["stop_ids"]:
        a += ["--stop-id", str(x)]
    p = subprocess.run(a, capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode == 0, f"{a}: {p.stderr}"
    out = json.loads(p.stdout)
    return {"output_ids": out["output_ids"], "text": out["text"]}


def solo_reference(reqs, sample, model=STORIES, extra=()):
    """Each request alone: a server that runs one sequence at a time; `sample`
    of them (every sampled one among them) also through `loom run`."""
    with Server(model, 1, 1, ("--max-batch-size", "1", *extra)) as c:
        res, summary = run_load(c, reqs)
        check_accounting(res, summary, reqs)
    ref = {}
    for r in reqs:
        g = res[r["id"]]
        assert g["finish"] in ("length", "eos", "stop"), (r, g)
        ref[r["id"]] = {k: g[k] for k in ("output_ids", "text", "finish")}
    for r in sample:
        want, got = loom_run(r, model), {k: ref[r["id"]][k] for k in ("output_ids", "text")}
        assert got == want, f"max-batch-size 1 server differs from loom run for {r}: {got} vs {want}"
    return ref


def compare(res, reqs, ref, label):
    """Tokens, text and finish reason of each request equal the same request alone."""
    errs = [(r["id"], res[r["id"]]["error"]) for r in reqs if res[r["id"]]["finish"] == "error"]
    assert not errs, f"{label}: error chunks {errs[:10]}"
    wrong = []
    for r in reqs:
        got = {k: res[r["id"]][k] for k in ("output_ids", "text", "finish")}
        if got != ref[r["id"]]:
            wrong.append((r["id"], r, got, ref[r["id"]]))
    for w in wrong[:3]:
        print(f"{label}: {w[0]} {w[1]}\n  got  {w[2]}\n  want {w[3]}")
    assert not wrong, f"{label}: {len(wrong)} of {len(reqs)} requests differ from the same request alone: {[w[0] for w in wrong]}"


@case
def preemption_equals_solo():
    """200 requests of mixed lengths, sampling and stops at once through 16 slots
    and a pool of 16 blocks of 16 tokens (well under what 16 running sequences
    want): sequences are preempted and recomputed, yet every request streams
    exactly the tokens, text and finish reason it gets alone, with one terminal
    chunk, and every block comes back. The static scheduler (with whole prompts
    in one step) gets through the first 80 of them on the same pool."""
    rnd = random.Random(2024)
    reqs = mixed_requests(200, rnd)
    sample = ([r for r in reqs if r["temperature"] > 0][:8] + [r for r in reqs if r["repetition_penalty"] != 1][:3] +
              [r for r in reqs if r["stop"] or r["stop_ids"]][:4] + reqs[:6])
    ref = solo_reference(reqs, sample)
    for label, some, extra in (("inflight", reqs, ("--scheduler", "inflight")),
                               ("static, chunked context off", reqs[:80], ("--scheduler", "static", "--disable-chunked-context"))):
        with Server(STORIES, 1, 1, ("--max-batch-size", "16", "--tokens-per-block", "16", "--max-tokens-in-paged-kv-cache", "256",
                                     "--max-num-tokens", "64", *extra)) as c:
            t0 = time.time()
            res, summary = run_load(c, some)
            took = time.time() - t0
            check_accounting(res, summary, some)
            compare(res, some, ref, label)
            st = wait_stats(c, idle, "blocks back after the load")
            print(f"{label}: {len(some)} requests in {took:.1f} s, stats {st}")
            assert st["kv_blocks_total"] == 16 and st["tokens_per_block"] == 16, st
            assert st["preemptions"] > 0, f"{label}: the pool never ran out, so preemption was not exercised: {st}"
            assert st["completed"] == len(some) and st["refused"] == 0, st
            assert st["kv_blocks_free"] + st["kv_blocks_cached"] == 16, st


@case
def overload_every_request_answered():
    """1,000 requests at once into 16 slots and a pool of 16 blocks of 8 tokens:
    those whose prompt + max_new_tokens cannot fit the whole pool (including
    129 = one token over) are refused at admission with a message naming the
    blocks; every other one (including exactly 128 = the whole pool) completes;
    every request gets exactly one terminal chunk; the counters add up. Then, with
    --disable-chunked-context, a prompt over --max-num-tokens gets an error chunk
    naming the flag while one at the limit is served."""
    rnd = random.Random(99)
    pool, tpb = 128, 8
    reqs = []
    for i in range(1000):
        u = rnd.random()
        if u < 0.12:    # too big for the pool
            plen = rnd.randrange(20, 200)
            mnew = rnd.randrange(max(1, pool + 1 - plen), pool + 60)
        elif u < 0.14:  # the edges: the whole pool, one token over
            plen = rnd.randrange(1, 120)
            mnew = pool - plen + (1 if rnd.random() < 0.5 else 0)
        else:
            plen, mnew = rnd.randrange(1, 24), rnd.randrange(1, 9)
        prompt = [1] + [rnd.randrange(3, VOCAB) for _ in range(plen - 1)]
        reqs.append(request(f"o{i}", prompt, mnew, stream=rnd.random() < 0.5,
                            **(dict(temperature=0.9, seed=i) if rnd.random() < 0.2 else {})))
    too_big = {r["id"] for r in reqs if -(-(len(r["prompt_ids"]) + r["max_new_tokens"]) // tpb) > pool // tpb}
    assert 100 < len(too_big) < 200
    with Server(STORIES, 1, 1, ("--max-batch-size", "16", "--tokens-per-block", str(tpb), "--max-tokens-in-paged-kv-cache", str(pool),
                                "--max-num-tokens", "64")) as c:
        t0 = time.time()
        res, summary = run_load(c, reqs, timeout=400)
        took = time.time() - t0
        check_accounting(res, summary, reqs)
        refused = {r["id"] for r in reqs if res[r["id"]]["finish"] == "error"}
        assert refused == too_big, (f"refused {len(refused)}, want {len(too_big)}: wrongly refused "
                                    f"{[(i, res[i]['error']) for i in sorted(refused - too_big)][:5]}, wrongly admitted {sorted(too_big - refused)[:10]}")
        for r in reqs:
            g = res[r["id"]]
            if r["id"] in too_big:
                need = -(-(len(r["prompt_ids"]) + r["max_new_tokens"]) // tpb)
                assert f"needs {need} KV blocks" in g["error"] and "whole pool has 16" in g["error"], g["error"]
                assert g["chunks"] == 1 and g["output_ids"] == [], g
            else:
                assert g["finish"] in ("length", "eos") and g["prompt_ids"] == r["prompt_ids"], (r, g)
                assert 1 <= len(g["output_ids"]) <= r["max_new_tokens"] and g["completion_tokens"] == len(g["output_ids"]), (r, g)
                assert g["finish"] == "eos" or len(g["output_ids"]) == r["max_new_tokens"], (r, g)
        st = wait_stats(c, idle, "blocks back after the overload")
        print(f"1000 requests ({len(too_big)} refused) in {took:.1f} s; stats {st}")
        assert st["refused"] == len(too_big) and st["completed"] == 1000 - len(too_big), st
        assert st["kv_blocks_free"] + st["kv_blocks_cached"] == st["kv_blocks_total"] == 16, st
        # a sample of what completed equals the same request alone
        done = [r for r in reqs if r["id"] not in too_big]
        for r in done[:5] + [r for r in done if len(r["prompt_ids"]) + r["max_new_tokens"] == pool][:3]:
            assert res[r["id"]]["output_ids"] == loom_run(r)["output_ids"], r
    with Server(STORIES, 1, 1, ("--max-num-tokens", "16", "--disable-chunked-context")) as c:
        ok = request("at_limit", [1] + list(range(10, 25)), 12)
        reqs = [ok, request("over", [1] + list(range(10, 26)), 12), request("far_over", [1] * 300, 5, stream=False)]
        res, summary = run_load(c, reqs)
        check_accounting(res, summary, reqs)
        for rid, n in (("over", 17), ("far_over", 300)):
            e = res[rid]["error"]
            assert res[rid]["finish"] == "error" and "--max-num-tokens 16" in e and f"({n} tokens)" in e, res[rid]
        assert res["at_limit"]["finish"] in ("length", "eos") and res["at_limit"]["output_ids"] == loom_run(ok)["output_ids"], res["at_limit"]
        st = wait_stats(c, idle, "after the refusals")
        assert st["refused"] == 2 and st["completed"] == 1, st


def shared_prefix_requests(rnd, prefix, n, tag):
    """Requests that share `prefix`: some stop at a block edge inside it or at its
    end (every prompt token cached), some add a few tokens; some sampled, some
    with a repetition penalty (the sampler needs the reused tokens' history);
    and exact duplicates."""
    reqs = []
    for i in range(n):
        cut = rnd.choice([len(prefix), len(prefix), 64, 65, 48, 17, 16])
        prompt = prefix[:cut] + [rnd.randrange(3, VOCAB) for _ in range(rnd.choice([0, 0, 1, 5, 20, 40]))]
        kw = rnd.choice([{}, {}, dict(rep=1.3), dict(temperature=0.9, top_k=40, seed=i), dict(temperature=1.1, top_p=0.9, rep=1.2, seed=7)])
        reqs.append(request(f"{tag}{i}", prompt, rnd.randrange(1, 60), stream=rnd.random() < 0.6, **kw))
    return reqs + [dict(r, id=r["id"] + "dup") for r in reqs[:6]]


@case
def kv_reuse_equals_no_reuse():
    """--enable-kv-cache-reuse with requests sharing an 80-token prefix (5 blocks
    of 16): the outputs equal the same requests alone without reuse, prefix
    blocks are found (prefix_hit_rate > 0), and every block is released (cached
    ones stay evictable). Then over 2 pipeline stages with a pool so small that
    cached blocks are evicted and sequences sharing blocks are preempted."""
    rnd = random.Random(5)
    prefix = [1] + [rnd.randrange(3, VOCAB) for _ in range(79)]
    first = request("first", prefix + [7, 8, 9], 20)
    reqs = shared_prefix_requests(rnd, prefix, 40, "k")
    ref = solo_reference([first] + reqs, [r for r in reqs if r["temperature"] > 0 or r["repetition_penalty"] != 1][:6] + reqs[:3])
    for label, pp, extra in (("tp1", 1, ()), ("pp2, small pool", 2, ("--max-tokens-in-paged-kv-cache", "384", "--max-num-tokens", "32"))):
        with Server(STORIES, 1, pp, ("--enable-kv-cache-reuse", "--tokens-per-block", "16", "--max-batch-size", "8", *extra)) as c:
            res, summary = run_load(c, [first])   # its prefix blocks are cached when it ends
            check_accounting(res, summary, [first])
            compare(res, [first], ref, label)
            st = stats(c)
            assert st["kv_blocks_used"] == 0 and st["kv_blocks_cached"] >= 5, f"{label}: the first request's blocks are not cached: {st}"
            res, summary = run_load(c, reqs)
            check_accounting(res, summary, reqs)
            compare(res, reqs, ref, label + " with reuse")
            st = wait_stats(c, idle, f"{label}: blocks back")
            print(f"{label}: {len(reqs)} requests sharing a prefix identical to no reuse; stats {st}")
            assert st["prefix_hit_rate"] > 0.3, f"{label}: the shared prefix was not reused: {st}"
            assert st["kv_blocks_free"] + st["kv_blocks_cached"] == st["kv_blocks_total"], st
            assert st["completed"] == len(reqs) + 1 and st["refused"] == 0, st
            if "small pool" in label:
                assert st["preemptions"] > 0, f"{label}: no preemption: {st}"


@case
def kv_reuse_follow_up_turn():
    """A follow-up turn: request B's prompt is request A's prompt and the
    first 70 tokens of A's answer, then a new question. With reuse, B finds A's
    full blocks of generated tokens too, not only of its prompt (A's prompt is
    one token: no full block), and B's output equals `loom run`."""
    a = request("turn1", [1], 80)
    with Server(STORIES, 1, 1, ("--enable-kv-cache-reuse", "--tokens-per-block", "16")) as c:
        res, summary = run_load(c, [a])
        check_accounting(res, summary, [a])
        out_a = res["turn1"]["output_ids"]
        assert len(out_a) == 80, res["turn1"]
        assert out_a == loom_run(a)["output_ids"], "turn 1 differs from loom run"
        b = request("turn2", [1] + out_a[:70] + [5, 9, 11], 30)
        res, summary = run_load(c, [b])
        check_accounting(res, summary, [b])
        assert {k: res["turn2"][k] for k in ("output_ids", "text")} == loom_run(b), "turn 2 differs from loom run"
        st = wait_stats(c, idle, "blocks back")
        # turn 1 offers 1 prompt token, turn 2 offers 74 of which 64 (4 blocks of 16) are A's computed tokens
        print(f"follow-up turn: stats {st}")
        assert st["prefix_hit_rate"] > 0.8, f"turn 2 did not reuse turn 1's generated blocks: {st}"


@case
def cancel_and_disconnect_free_blocks():
    """Cancelling running and waiting requests (with shared prefix blocks, on a
    pool small enough that some were preempted) and dropping a connection
    mid-stream give every KV block back: kv_blocks_used returns to 0."""
    model = os.path.join(FIXTURES, "llama_big")
    rnd = random.Random(3)
    prefix = [1] + [rnd.randrange(3, 2048) for _ in range(40)]
    reqs = [request(f"c{i}", prefix + [rnd.randrange(3, 2048) for _ in range(20)], 255) for i in range(8)]
    # 4 slots, 20 blocks of 16 (each request alone fits: 61 + 255 <= 320 tokens): the 4
    # running prompts take 16 blocks, so the pool runs out after about 20 tokens each;
    # cancelling after 180 chunks is long before any request can have its 255
    with Server(model, 1, 1, ("--enable-kv-cache-reuse", "--tokens-per-block", "16", "--max-tokens-in-paged-kv-cache", "320",
                              "--max-batch-size", "4")) as c:
        res, summary = run_load(c, reqs, "cancel", k=180, timeout=120)
        check_accounting(res, summary, reqs)
        assert summary["cancel_sent"], summary
        fins = {r["id"]: res[r["id"]]["finish"] for r in reqs}
        assert all(f == "cancelled" for f in fins.values()), fins
        st = wait_stats(c, idle, "blocks back after cancelling")
        print(f"cancelled 8 requests after {sum(res[r['id']]['chunks'] for r in reqs)} chunks; stats {st}")
        assert st["preemptions"] > 0, f"the pool never ran out: {st}"
        assert st["kv_blocks_free"] + st["kv_blocks_cached"] == st["kv_blocks_total"], st
        p = subprocess.run([LOAD, c.endpoint, "disconnect", write_reqs(reqs), "100", "120"], capture_output=True, text=True, env=ENV, timeout=180)
        assert p.returncode == 0 and '"disconnected_after": 100' in p.stdout, (p.stdout, p.stderr)
        st = wait_stats(c, idle, "blocks back after a client disconnected")
        print(f"a client with 8 requests disconnected mid-stream; stats {st}")
        # and the server still serves
        short = [dict(r, id=r["id"] + "again", max_new_tokens=3) for r in reqs[:2]]
        res, summary = run_load(c, short)
        check_accounting(res, summary, short)
        assert all(res[r["id"]]["finish"] in ("length", "eos") for r in short), res
        wait_stats(c, idle, "blocks back at the end")


def main():
    global LOOM, LOAD, TMP
    if len(sys.argv) != 4 or sys.argv[3] not in CASES:
        print(f"usage: serving_cases.py LOOM LOAD_CLIENT CASE (cases: {', '.join(CASES)})", file=sys.stderr)
        return 2
    LOOM, LOAD = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    sc.LOOM = LOOM
    TMP = tempfile.mkdtemp(prefix="loom-serving-")
    try:
        CASES[sys.argv[3]]()
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print(f"{sys.argv[3]}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
