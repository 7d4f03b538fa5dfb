#!/usr/bin/env python3
"""End-to-end tests of the cluster: `loom serve` under mpirun (CPU, oversubscribed)
queried with `loom client`. One meson test per case:
    serve_cases.py LOOM RAW_CLIENT CASE
Layout cases check that every TP/PP layout gives transformers' greedy tokens for
every golden fixture (and llama2.c's for the demo model); fault cases check that
bad input gets an error chunk while the server keeps serving, that a killed worker
ends the job non-zero within 10 s with an error chunk for the request in flight,
and that SIGTERM to mpirun answers the clients and exits cleanly."""
import json
import os
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "common"))
from ports import free_port  # noqa: E402
DATA = os.path.join(HERE, "..", "data")
FIXTURES = os.path.join(HERE, "..", "golden", "fixtures")
STORIES = os.path.join(DATA, "stories260K")
ALL_FIXTURES = sorted(d for d in os.listdir(FIXTURES) if os.path.isdir(os.path.join(FIXTURES, d)))
LOOM = RAW = None
CASES = {}
ENV = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
           OMPI_MCA_rmaps_base_oversubscribe="1", OMPI_MCA_btl="self,vader", OMPI_MCA_pml="ob1",
           OMP_NUM_THREADS="1", OMPI_MCA_mca_base_component_disable_dlclose="1",
           # give ranks 3 s between mpirun's SIGTERM and its SIGKILL (default 1 s) to answer clients
           OMPI_MCA_odls_base_sigkill_timeout="3")
ENV["ASAN_OPTIONS"] = "detect_leaks=1:fast_unwind_on_malloc=0"
ENV["LSAN_OPTIONS"] = "suppressions=" + os.path.join(HERE, "..", "dist", "lsan.supp")


def case(fn):
    CASES[fn.__name__] = fn
    return fn


class Cluster:
    """mpirun -n 1+tp*pp loom serve ..., waited on until healthy; stopped with SIGTERM."""

    def __init__(self, model, tp=1, pp=1, extra=()):
        # a port free when chosen can still be taken before the coordinator binds it:
        # then the start is tried again on another (the error names it, nothing else does)
        for attempt in range(3):
            self.endpoint = f"tcp://127.0.0.1:{free_port()}"
            n = 1 + tp * pp
            self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), f"loom-serve-{os.getpid()}-{time.time_ns()}.log"), "w+")
            self.proc = subprocess.Popen(["mpirun", "-n", str(n), LOOM, "serve", "--model", model, "--tp", str(tp), "--pp", str(pp),
                                          "--listen", self.endpoint, *extra], stdout=self.log, stderr=subprocess.STDOUT, env=ENV,
                                         start_new_session=True)
            p = self.client("--health", "--wait", "60", timeout=90)
            if p.returncode == 0:
                return
            self.stop()
            out = self.output()
            if "Address already in use" not in out or attempt == 2:
                raise AssertionError(f"cluster did not become healthy: {p.stderr}\n{out}")
            self.log.close()
            print(f"note: {self.endpoint} was taken before the coordinator bound it; starting again on another port",
                  file=sys.stderr)

    def client(self, *args, timeout=300):
        return subprocess.run([LOOM, "client", "--endpoint", self.endpoint, *args], capture_output=True, text=True,
                              timeout=timeout, env=ENV)

    def query(self, *args):
        p = self.client(*args, "--json")
        assert p.returncode == 0, f"loom client {args} failed ({p.returncode}): {p.stderr}\n{self.output()}"
        lines = p.stdout.splitlines()
        assert len(lines) == 1, p.stdout
        return json.loads(lines[0])

    def output(self):
        self.log.flush()
        self.log.seek(0)
        return self.log.read()

    def rank0_pid(self):
        """The coordinator rank's pid: the process of mpirun's session whose
        environment says OMPI_COMM_WORLD_RANK=0 (None if not found)."""
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    sid = int(f.read().rsplit(")", 1)[1].split()[3])  # state ppid pgrp session
                if sid == self.proc.pid and b"OMPI_COMM_WORLD_RANK=0\0" in open(f"/proc/{pid}/environ", "rb").read():
                    return int(pid)
            except (OSError, ValueError, IndexError):
                continue
        return None

    def stop(self, timeout=20, via_mpirun=False):
        """SIGTERM to the coordinator rank, which shuts the workers down at once
        (a SIGTERM to Open MPI 4.1's mpirun reaches the ranks only ~5 s later);
        via_mpirun=True takes the path a user's Ctrl-C or Slurm takes."""
        if self.proc.poll() is None and not via_mpirun:
            rank0 = self.rank0_pid()
            if rank0:
                try:
                    os.kill(rank0, signal.SIGTERM)
                    self.proc.wait(timeout=timeout)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError("mpirun did not exit within %d s of SIGTERM\n%s" % (timeout, self.output()))
        return self.proc.returncode

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        rc = self.stop()
        out = self.output()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:"):
            assert bad not in out, out
        if exc[0] is None:
            assert_clean_stop(rc, out)


def assert_clean_stop(rc, out):
    """After SIGTERM, Open MPI's mpirun ends the job and exits 1 even when every
    rank exits 0 (a job it was told to terminate), so the check is on the ranks:
    the coordinator shut down and no rank died of a signal or aborted."""
    assert "loom serve: shut down" in out, f"the coordinator did not shut down cleanly (mpirun {rc})\n{out}"
    for bad in ("exited on signal", "MPI_ABORT", "Segmentation", "core dumped"):
        assert bad not in out, f"{bad!r} after SIGTERM (mpirun {rc})\n{out}"
    assert rc in (0, 1), f"mpirun exited {rc}\n{out}"


def golden(fixture):
    g = json.load(open(os.path.join(FIXTURES, fixture, "golden.json")))
    return g["prompt_ids"], g["greedy_ids"]


def check_fixtures(tp, pp, fixtures, extra=()):
    for f in fixtures:
        prompt, want = golden(f)
        with Cluster(os.path.join(FIXTURES, f), tp, pp, extra) as c:
            out = c.query("--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(len(want)))
            assert out["prompt_ids"] == prompt, out
            # the fixtures never emit their EOS (2), so every greedy token comes back
            assert out["output_ids"] == want, f"{f} tp={tp} pp={pp}: got {out['output_ids']}, want {want}"
            print(f"{f} tp={tp} pp={pp}: {len(want)} greedy tokens identical to transformers")


def compatible(tp):
    ok = []
    for f in ALL_FIXTURES:
        c = json.load(open(os.path.join(FIXTURES, f, "config.json")))
        h, kv, i = c["num_attention_heads"], c.get("num_key_value_heads", c["num_attention_heads"]), c["intermediate_size"]
        if h % tp == 0 and (kv % tp == 0 or tp % kv == 0) and i % tp == 0:
            ok.append(f)
    return ok


@case
def layout_tp1():
    check_fixtures(1, 1, ALL_FIXTURES)


@case
def layout_tp2():
    check_fixtures(2, 1, compatible(2))


@case
def layout_pp2():
    check_fixtures(1, 2, ALL_FIXTURES)


@case
def layout_pp2_uneven():
    # 3 layers over 2 stages, both ways round
    check_fixtures(1, 2, ["mistral_swa", "llama_sharded"])
    check_fixtures(1, 2, ["llama_sharded"], extra=("--pp-layers", "2,1"))


@case
def layout_tp2_pp2():
    check_fixtures(2, 2, compatible(2))


@case
def layout_kv_heads_fewer_than_tp():
    # llama_mqa has 1 kv head: TP=2 replicates it
    check_fixtures(2, 1, ["llama_mqa"])


@case
def stories_all_layouts():
    exp = json.load(open(os.path.join(STORIES, "expected_greedy.json")))["output_ids"]
    for tp, pp in ((1, 1), (2, 1), (1, 2), (2, 2)):
        with Cluster(STORIES, tp, pp) as c:
            out = c.query("--prompt-ids", "1", "--max-new-tokens", "199")
            assert out["output_ids"] == exp, f"tp={tp} pp={pp}"
            assert out["text"].startswith("Once upon a time, there was a little girl named Lily.")
            print(f"stories260K tp={tp} pp={pp}: 199 tokens identical to llama2.c")


@case
def kv_cache_fp8_all_layouts():
    """--kv-cache-dtype fp8 reaches every worker rank: each layout gives the
    tokens of `loom run --kv-cache-dtype fp8` (which part from the fp32 ones)."""
    ref = subprocess.run([LOOM, "run", "--model", STORIES, "--prompt-ids", "1", "--max-new-tokens", "199", "--kv-cache-dtype", "fp8",
                          "--json"], capture_output=True, text=True, env=ENV, check=True)
    want = json.loads(ref.stdout)["output_ids"]
    assert want != json.load(open(os.path.join(STORIES, "expected_greedy.json")))["output_ids"], "fp8 changed nothing"
    for tp, pp in ((1, 1), (2, 1), (1, 2), (2, 2)):
        with Cluster(STORIES, tp, pp, ("--kv-cache-dtype", "fp8")) as c:
            out = c.query("--prompt-ids", "1", "--max-new-tokens", "199")
            assert out["output_ids"] == want, f"tp={tp} pp={pp}: got {out['output_ids']}, want {want}"
            n = c.output().count("K/V rounded to fp8")
            assert n == tp * pp, f"tp={tp} pp={pp}: {n} workers say they round to fp8\n{c.output()}"
            print(f"stories260K tp={tp} pp={pp} fp8 KV: 199 tokens identical to loom run")


@case
def batch_equals_solo():
    """Several concurrent requests (static batch, PP micro-batches) give the same
    tokens as each alone; sampled ones too (the seed travels with the request)."""
    prompts = ["Once upon a time", "The cat", "Tom and Lily went to the park", "A big red ball", "One day"]
    with Cluster(STORIES, 2, 2, ("--max-batch-size", "4", "--max-num-tokens", "8")) as c:
        solo = [c.query("--prompt", p, "--max-new-tokens", "40", "--temperature", "0.8", "--seed", str(i)) for i, p in enumerate(prompts)]
        procs = [subprocess.Popen([LOOM, "client", "--endpoint", c.endpoint, "--prompt", p, "--max-new-tokens", "40",
                                   "--temperature", "0.8", "--seed", str(i), "--json"], stdout=subprocess.PIPE, text=True, env=ENV)
                 for i, p in enumerate(prompts)]
        together = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
        for a, b in zip(solo, together):
            assert a == b, (a, b)
    # and equal to loom run on one process
    ref = subprocess.run([LOOM, "run", "--model", STORIES, "--prompt", prompts[0], "--max-new-tokens", "40", "--temperature", "0.8",
                          "--seed", "0", "--json"], capture_output=True, text=True, env=ENV, check=True)
    assert json.loads(ref.stdout) == solo[0], (ref.stdout, solo[0])


@case
def bad_requests_keep_serving():
    # llama_big decodes slowly enough that cancel and disconnect land mid-stream
    with Cluster(os.path.join(FIXTURES, "llama_big"), 2, 1, ("--max-seq-len", "4096")) as c:
        for rc in ("garbage", "wrong_version", "wrong_type", "empty_prompt", "long_prompt", "max_new_tokens", "bad_token_id",
                   "cancel_unknown", "cancel", "disconnect"):
            p = subprocess.run([RAW, c.endpoint, rc], capture_output=True, text=True, timeout=120, env=ENV)
            print(p.stdout, end="")
            assert p.returncode == 0, f"{rc}: {p.stdout}{p.stderr}\n{c.output()}"
        # the CLI reports an error chunk on stderr and exits 1
        p = c.client("--prompt-ids", "1,999999", "--max-new-tokens", "3")
        assert p.returncode == 1 and "vocabulary" in p.stderr, (p.returncode, p.stderr)


@case
def worker_killed():
    """A worker dies mid-generation: the request in flight gets an error chunk and
    the whole job exits non-zero within 10 s."""
    model = os.path.join(FIXTURES, "llama_big")
    c = Cluster(model, 2, 1, ("--max-seq-len", "4096"))
    try:
        client = subprocess.Popen([LOOM, "client", "--endpoint", c.endpoint, "--prompt-ids", "5,6,7", "--max-new-tokens", "4000",
                                   "--stream", "--timeout", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        time.sleep(1.0)
        victim = None
        for pid in subprocess.run(["pgrep", "-f", f"{LOOM} serve"], capture_output=True, text=True).stdout.split():
            try:
                env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            except OSError:
                continue
            if b"OMPI_COMM_WORLD_RANK=1" in env:
                victim = int(pid)
        assert victim, "no worker process found"
        assert client.poll() is None, "the request finished before the worker was killed"
        t0 = time.time()
        os.kill(victim, signal.SIGKILL)
        c.proc.wait(timeout=30)
        took = time.time() - t0
        out, err = client.communicate(timeout=30)
        print(f"job exited {c.proc.returncode} {took:.1f} s after the kill; client exit {client.returncode}: {err.strip()}")
        assert c.proc.returncode != 0, "mpirun exited 0 after a worker died"
        assert took <= 10, f"the job took {took:.1f} s to exit"
        assert client.returncode == 1 and "server:" in err and "lost the connection" not in err, f"no error chunk: {err}"
    finally:
        if c.proc.poll() is None:
            os.killpg(c.proc.pid, signal.SIGKILL)


@case
def sigterm_answers_clients():
    c = Cluster(os.path.join(FIXTURES, "llama_big"), 1, 1, ("--max-seq-len", "4096"))
    client = subprocess.Popen([LOOM, "client", "--endpoint", c.endpoint, "--prompt-ids", "5,6,7", "--max-new-tokens", "4000", "--stream"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(1.0)
    rc = c.stop(via_mpirun=True)
    out, err = client.communicate(timeout=30)
    print(f"mpirun exit {rc}; client exit {client.returncode}: {err.strip()}")
    assert_clean_stop(rc, c.output())
    assert client.returncode in (0, 1) and (client.returncode == 0 or "shutting down" in err), err


@case
def convert_then_serve():
    """loom convert writes per-rank files; serving them gives the same tokens as
    the original, and a mismatched layout is refused at start-up."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        prompt, want = golden("llama_bias")
        out = os.path.join(tmp, "bias_tp2pp2")
        p = subprocess.run([LOOM, "convert", "--model", os.path.join(FIXTURES, "llama_bias"), "--out", out, "--tp", "2", "--pp", "2"],
                           capture_output=True, text=True, env=ENV)
        assert p.returncode == 0 and "rank 4/4" in p.stderr, p.stderr
        assert sorted(f for f in os.listdir(out) if f.endswith(".safetensors")) == [f"rank{i}.safetensors" for i in range(4)]
        with Cluster(out, 2, 2) as c:
            got = c.query("--prompt-ids", ",".join(map(str, prompt)), "--max-new-tokens", str(len(want)))
            assert got["output_ids"] == want, (got["output_ids"], want)
        # the wrong layout: every rank refuses, the job exits non-zero with the reason
        p = subprocess.run(["mpirun", "-n", "3", LOOM, "serve", "--model", out, "--tp", "2", "--pp", "1", "--listen",
                            f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=ENV, timeout=60)
        assert p.returncode != 0 and "converted for tp=2 pp=2" in p.stderr, p.stderr
        # uneven stages and a cast: the demo model as bf16 over 2 stages of 2 and 3 layers
        exp = json.load(open(os.path.join(STORIES, "expected_greedy.json")))["output_ids"]
        out2 = os.path.join(tmp, "stories_pp2")
        subprocess.run([LOOM, "convert", "--model", STORIES, "--out", out2, "--pp", "2", "--pp-layers", "2,3"], check=True,
                       capture_output=True, env=ENV)
        assert os.path.exists(os.path.join(out2, "tokenizer.json"))
        with Cluster(out2, 1, 2) as c:
            got = c.query("--prompt", "Once upon a time", "--max-new-tokens", "20")
            ref = subprocess.run([LOOM, "run", "--model", STORIES, "--prompt", "Once upon a time", "--max-new-tokens", "20", "--json"],
                                 capture_output=True, text=True, env=ENV, check=True)
            assert got == json.loads(ref.stdout), (got, ref.stdout)
        out3 = os.path.join(tmp, "stories_bf16")
        subprocess.run([LOOM, "convert", "--model", STORIES, "--out", out3, "--dtype", "bf16"], check=True, capture_output=True, env=ENV)
        r = subprocess.run([LOOM, "run", "--model", out3, "--prompt-ids", "1", "--max-new-tokens", "30", "--json"],
                           capture_output=True, text=True, env=ENV, check=True)
        # bf16 weights: a real story still, mostly the same tokens as fp32
        got = json.loads(r.stdout)["output_ids"]
        same = sum(a == b for a, b in zip(got, exp))
        assert same >= 10, (same, got)
        # shapes TP cannot split are refused with the sizes that work
        p = subprocess.run([LOOM, "convert", "--model", os.path.join(FIXTURES, "llama_gqa"), "--out", os.path.join(tmp, "x"), "--tp", "4"],
                           capture_output=True, text=True, env=ENV)
        assert p.returncode == 1 and "intermediate_size = 150" in p.stderr and "1, 2" in p.stderr, p.stderr


@case
def device_cuda_needs_a_gpu():
    """--device cuda on a machine without a GPU (CI) fails at start-up with a
    message, every rank exiting non-zero; no hang."""
    p = subprocess.run(["mpirun", "-n", "2", LOOM, "serve", "--model", STORIES, "--device", "cuda", "--listen",
                        f"tcp://127.0.0.1:{free_port()}"], capture_output=True, text=True, env=ENV, timeout=120)
    assert p.returncode != 0, p.stderr
    assert "no CUDA device" in p.stderr or "built without CUDA" in p.stderr, p.stderr
    p = subprocess.run([LOOM, "serve", "--model", STORIES, "--device", "tpu"], capture_output=True, text=True, env=ENV, timeout=60)
    assert p.returncode == 2 and "--device must be cpu or cuda" in p.stderr, p.stderr


@case
def inflight_batching():
    """In-flight batching: 60 requests of mixed prompt and output lengths through 4
    slots over 2 pipeline stages (finished sequences hand their slot to waiting ones
    mid-batch); each answer equals loom run's for the same request (the CPU backend
    is batch-invariant), and --scheduler static gives the same answers."""
    import random
    rnd = random.Random(7)
    reqs = []
    for i in range(60):
        prompt = [1] + [rnd.randrange(3, 512) for _ in range(rnd.randrange(0, 12))]
        reqs.append((",".join(map(str, prompt)), str(rnd.randrange(1, 40)), str(rnd.choice([0, 0.8])), str(i)))
    ref = {}
    for p_ids, n, t, seed in reqs:
        r = subprocess.run([LOOM, "run", "--model", STORIES, "--prompt-ids", p_ids, "--max-new-tokens", n, "--temperature", t,
                            "--seed", seed, "--json"], capture_output=True, text=True, env=ENV, check=True)
        ref[(p_ids, n, t, seed)] = json.loads(r.stdout)
    for sched in ("inflight", "static"):
        with Cluster(STORIES, 1, 2, ("--max-batch-size", "4", "--max-num-tokens", "16", "--scheduler", sched)) as c:
            procs = [(k, subprocess.Popen([LOOM, "client", "--endpoint", c.endpoint, "--prompt-ids", k[0], "--max-new-tokens", k[1],
                                           "--temperature", k[2], "--seed", k[3], "--json"], stdout=subprocess.PIPE, text=True, env=ENV))
                     for k in reqs]
            for k, p in procs:
                out, _ = p.communicate(timeout=300)
                assert p.returncode == 0, (sched, k)
                assert json.loads(out) == ref[k], (sched, k, out, ref[k])
        print(f"{sched}: 60 requests through 4 slots, each identical to loom run")


def main():
    global LOOM, RAW
    if len(sys.argv) != 4 or sys.argv[3] not in CASES:
        print(f"usage: serve_cases.py LOOM RAW_CLIENT CASE (cases: {', '.join(CASES)})", file=sys.stderr)
        return 2
    LOOM, RAW = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    CASES[sys.argv[3]]()
    print(f"{sys.argv[3]}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
