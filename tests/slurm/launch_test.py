#!/usr/bin/env python3
"""Tests of launch/loom-launch.sh (no Slurm needed).

    launch_test.py --source-root DIR --standin STANDIN

1. --dry-run: the rank count 1+TP*PP, the root variables, --oversubscribe on a
   machine with fewer cores than ranks, the host list built by --np-per-node (first
   node K+1 slots, then K), extra `loom serve` arguments after --, LOOM_BIN, and
   exit status 2 with a message for every bad flag.
2. A real run under mpirun: the stand-in (tests/slurm/standin.c) as `loom serve`
   with TP=2 x PP=2 (5 ranks), queried with the stand-in client, then SIGTERM to the
   launcher (which exec'd mpirun) stops every rank.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from ports import free_port  # noqa: E402

failures = []


def check(cond, what):
    if cond:
        print(f"ok   {what}")
    else:
        print(f"FAIL {what}")
        failures.append(what)


def run(launcher, args, env=None, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([launcher] + args, env=e, capture_output=True, text=True, timeout=60, **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--source-root", required=True)
    ap.add_argument("--standin", required=True)
    a = ap.parse_args()
    launcher = os.path.join(a.source_root, "launch", "loom-launch.sh")
    model = os.path.join(a.source_root, "tests", "data", "stories260K")
    standin = os.path.abspath(a.standin)
    env = {"LOOM_BIN": standin}
    for v in list(os.environ):
        if v.startswith("SLURM_"):
            os.environ.pop(v)  # the placement rules differ inside an allocation
    root = os.geteuid() == 0
    cores = os.cpu_count() or 1

    # --- dry runs --------------------------------------------------------------------
    r = run(launcher, ["--model", model, "--tp", "2", "--pp", "3", "--dry-run", "--", "--max-batch-size", "4"], env)
    out = r.stdout.strip()
    check(r.returncode == 0, f"dry run exits 0 ({r.stderr.strip()})")
    check(" -n 7 " in out, f"TP=2 PP=3 gives -n 7: {out}")
    check(f"{standin} serve --model {model} --tp 2 --pp 3 --max-batch-size 4" in out, "loom serve command line")
    check("--map-by slot" in out, "ranks mapped by slot")
    check(("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1" in out) == root, "root variables iff root")
    check(("--oversubscribe" in out) == (cores < 7), f"--oversubscribe iff cores ({cores}) < ranks (7)")

    r = run(launcher, ["--model", model, "--listen", "tcp://0.0.0.0:6000", "--dry-run"], env)
    check(r.returncode == 0 and " -n 2 " in r.stdout and "--listen tcp://0.0.0.0:6000" in r.stdout,
          "defaults TP=PP=1 (2 ranks) and --listen passed on")

    with tempfile.TemporaryDirectory() as d:
        hf = os.path.join(d, "hosts")
        with open(hf, "w") as f:
            f.write("# nodes\nnodeA slots=9\nnodeB slots=9\nnodeA\nnodeC slots=9\n")
        r = run(launcher, ["--model", model, "--tp", "8", "--pp", "2", "--hostfile", hf, "--np-per-node", "8",
                           "--dry-run"], env)
        check(r.returncode == 0 and "--host nodeA:9,nodeB:8 " in r.stdout and " -n 17 " in r.stdout,
              f"TP=8 PP=2 on 8-GPU nodes: nodeA:9,nodeB:8 ({r.stdout.strip()} {r.stderr.strip()})")
        check("--oversubscribe" not in r.stdout, "no --oversubscribe with a host list")
        r = run(launcher, ["--model", model, "--tp", "4", "--pp", "5", "--hostfile", hf, "--np-per-node", "8",
                           "--dry-run"], env)
        check(r.returncode == 0 and "--host nodeA:9,nodeB:8,nodeC:4 " in r.stdout,
              f"TP=4 PP=5: nodeA:9,nodeB:8,nodeC:4 ({r.stdout.strip()} {r.stderr.strip()})")
        r = run(launcher, ["--model", model, "--tp", "8", "--pp", "4", "--hostfile", hf, "--np-per-node", "8",
                           "--dry-run"], env)
        check(r.returncode == 2 and "need 4 nodes" in r.stderr, f"too few nodes refused: {r.stderr.strip()}")
        r = run(launcher, ["--model", model, "--tp", "3", "--hostfile", hf, "--np-per-node", "4", "--dry-run"], env)
        check(r.returncode == 0 and "span two nodes" in r.stderr, "warning when K is not a multiple of TP")
        r = run(launcher, ["--model", model, "--hostfile", hf, "--dry-run"], env)
        check(r.returncode == 0 and f"--hostfile {hf}" in r.stdout, "--hostfile passed on without --np-per-node")

    r = run(launcher, ["--model", model, "--dry-run"], {"LOOM_BIN": "/nonexistent/loom"})
    check(r.returncode == 0 and "/nonexistent/loom serve" in r.stdout, "LOOM_BIN chooses the binary")
    r = run(launcher, ["--model", model], {"LOOM_BIN": "/nonexistent/loom"})
    check(r.returncode == 2 and "LOOM_BIN" in r.stderr, "a LOOM_BIN that is not executable is refused")

    r = run(launcher, ["--help"])
    check(r.returncode == 0 and "worker w = rank - 1" in r.stdout.lower(), "--help documents the rank mapping")

    bad = [
        ([], "--model DIR is required"),
        (["--model", "/nonexistent"], "not a directory"),
        (["--model", model, "--tp", "0"], "--tp must be a positive integer"),
        (["--model", model, "--tp", "x"], "--tp must be a positive integer"),
        (["--model", model, "--pp", "-1"], "--pp must be a positive integer"),
        (["--model", model, "--pp"], "--pp needs a value"),
        (["--model", model, "--listen", "5555"], "--listen must be a ZeroMQ endpoint"),
        (["--model", model, "--np-per-node", "2"], "--np-per-node needs --hostfile"),
        (["--model", model, "--np-per-node", "a", "--hostfile", "/etc/hostname"], "--np-per-node must be"),
        (["--model", model, "--hostfile", "/nonexistent"], "not a readable file"),
        (["--model", model, "--bind-to", "x"], "--bind-to must be"),
        (["--model", model, "--frobnicate"], "unknown argument '--frobnicate'"),
    ]
    for args, msg in bad:
        r = run(launcher, args + ["--dry-run"], env)
        check(r.returncode == 2 and msg in r.stderr, f"bad flags {args}: exit 2 and '{msg}' ({r.stderr.strip()!r})")

    # --- a real run under mpirun --------------------------------------------------------
    ep = f"tcp://127.0.0.1:{free_port()}"
    supp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsan.supp")
    e = dict(os.environ, LOOM_BIN=standin, OMPI_MCA_mpi_yield_when_idle="1",
             ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=1",
             LSAN_OPTIONS=f"suppressions={supp}:print_suppressions=0",
             OMPI_MCA_mca_base_component_disable_dlclose="1")
    log = tempfile.TemporaryFile(mode="w+")
    p = subprocess.Popen([launcher, "--model", model, "--tp", "2", "--pp", "2", "--listen", ep],
                         env=e, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        h = subprocess.run([standin, "client", "--endpoint", ep, "--health", "--wait", "60"],
                           capture_output=True, text=True, timeout=90)
        check(h.returncode == 0, "the stand-in cluster (TP=2 x PP=2) serves")
        q = subprocess.run([standin, "client", "--endpoint", ep, "--prompt-ids", "1", "--max-new-tokens", "20"],
                           capture_output=True, text=True, timeout=60)
        check("standin: world=5 tp=2 pp=2 ranks=[0,1,2,3,4]" in q.stdout, f"query reaches 5 ranks: {q.stdout.strip()}")
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(30)
            check(True, f"SIGTERM stops the cluster (mpirun status {rc})")
        except subprocess.TimeoutExpired:
            check(False, "SIGTERM stops the cluster within 30 s")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        time.sleep(0.2)
    log.seek(0)
    text = log.read()
    for r_ in range(5):
        role = "coordinator" if r_ == 0 else f"worker stage={(r_ - 1) // 2} tp={(r_ - 1) % 2}"
        check(f"loom-standin: rank {r_} {role} " in text, f"rank {r_} is the {role}")
    if failures:
        print(f"--- launcher output ---\n{text}")
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all launcher checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
