#!/usr/bin/env python3
"""Run launch/slurm/loom.sbatch on a real Slurm started on this host.

    slurm_test.py --source-root DIR --loom LOOM [--standin STANDIN] [--real] [--keep]
                  [--job-timeout SEC]

The test, as root:
  1. generates a munge key and starts munged (socket in a temporary directory);
  2. writes a slurm.conf with one node (this host's short name, NodeAddr 127.0.0.1,
     CPUs = max(8, nproc) with SlurmdParameters=config_overrides, so that 1+TP*PP
     tasks fit on a 2-core machine), free ports, state and spool under the temporary
     directory (TmpFS too, where srun's PMIx makes its per-step directories), a
     random first job id (concurrent runs must not share PMIx namespaces), no
     cgroups (proctrack/linuxproc, task/none) and no accounting;
  3. starts slurmctld and slurmd in the foreground (as its children) and waits until
     `sinfo` shows the node idle;
  4. submits two jobs with sbatch: TP=2 through `srun --mpi=pmix`, and PP=2 through
     mpirun inside the allocation (LOOM_LAUNCHER=mpirun), each with a greedy query
     `--prompt-ids 1 --max-new-tokens 20`, and waits for both (300 s at most);
  5. checks each job's state, exit code and output file;
  6. always tears everything down: cancels the jobs, stops slurmd, slurmctld and
     munged, then kills whatever they left behind (the test makes itself the
     "child subreaper", so orphaned slurmstepd and task processes are its own
     descendants and can be found by parent pid), and removes the directory.

Without --real the jobs run STANDIN (tests/slurm/standin.c, a stand-in for `loom
serve`/`loom client` that checks the MPI world and reports every rank); with --real
they run LOOM on the demo model tests/data/stories260K and the query's output must
contain the story's start, "Once upon a time". Setting LOOM_SLURM_REAL=1 in the
environment has the same effect as --real.

A missing Slurm/munge, a non-root user, or daemons that do not come up are failures
(exit 1) with a message that says what to install or where the logs are.
"""
import argparse
import ctypes
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from ports import free_port  # noqa: E402

PACKAGES = "slurmctld slurmd slurm-client munge"
JOB_TIMEOUT = 300


class Failure(Exception):
    pass


def log(msg):
    print(f"slurm_test: {msg}", flush=True)


def find(name):
    for d in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            return p
    p = shutil.which(name)
    if not p:
        raise Failure(f"{name} not found: install the Debian packages {PACKAGES} "
                      f"(apt-get install {PACKAGES})")
    return p


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            lines = f.readlines()
        return "".join(lines[-n:])
    except OSError as e:
        return f"({e})\n"


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == pid:
            out.append(int(d))
    return out


class Cluster:
    def __init__(self, args):
        self.args = args
        self.procs = {}
        self.jobs = []
        self.dir = tempfile.mkdtemp(prefix="loom-slurm-")
        os.chmod(self.dir, 0o755)
        self.node = socket.gethostname().split(".")[0]
        self.env = dict(os.environ)
        self.env["SLURM_CONF"] = os.path.join(self.dir, "slurm.conf")
        for v in list(self.env):
            if v.startswith("SLURM_") and v != "SLURM_CONF":
                del self.env[v]  # when the test itself runs inside a Slurm job

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def run(self, *cmd, check=True, timeout=60):
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise Failure(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def start(self, name, cmd):
        logf = open(self.path("log", name + ".out"), "w")
        self.procs[name] = subprocess.Popen(cmd, env=self.env, stdin=subprocess.DEVNULL,
                                            stdout=logf, stderr=subprocess.STDOUT,
                                            preexec_fn=die_with_parent)
        logf.close()

    def check_alive(self):
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise Failure(f"{name} exited with status {p.returncode}:\n"
                              + tail(self.path("log", name + ".out")))

    def setup(self):
        munged = find("munged")
        slurmctld, slurmd = find("slurmctld"), find("slurmd")
        for tool in ("sinfo", "sbatch", "squeue", "scontrol", "scancel", "srun"):
            find(tool)
        for d in ("munge", "munge-run", "state", "spool", "log", "jobs", "tmp"):
            os.mkdir(self.path(d))
        os.chmod(self.path("munge"), 0o700)
        os.chmod(self.path("munge-run"), 0o755)  # munged wants its socket directory world-searchable
        os.chmod(self.path("jobs"), 0o777)
        os.chmod(self.path("tmp"), 0o1777)  # TmpFS: srun's PMIx puts its per-step directories here

        key = self.path("munge", "munge.key")
        with open(key, "wb") as f:
            f.write(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = self.path("munge-run", "munge.socket")
        self.start("munged", [munged, "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                              f"--pid-file={self.path('munge-run', 'munged.pid')}",
                              f"--seed-file={self.path('munge-run', 'munged.seed')}",
                              f"--log-file={self.path('log', 'munged.log')}"])
        deadline = time.time() + 20
        while not os.path.exists(sock):
            self.check_alive()
            if time.time() > deadline:
                raise Failure("munged did not create its socket within 20 s:\n"
                              + tail(self.path("log", "munged.out")))
            time.sleep(0.1)

        cpus = max(8, os.cpu_count() or 1)
        ctld_port, slurmd_port = free_port(), free_port()
        # Job ids unique across concurrent runs of this test: srun's PMIx namespace
        # (slurm.pmix.JOB.STEP), and from it Open MPI's shared-memory segment names,
        # come from the job id, so two clusters both at job 1 would share segments.
        first_job = random.randint(1000, 60_000_000)
        conf = f"""# generated by tests/slurm/slurm_test.py
ClusterName=loomtest
FirstJobId={first_job}
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sock}
StateSaveLocation={self.path('state')}
SlurmdSpoolDir={self.path('spool')}
TmpFS={self.path('tmp')}
SlurmctldPidFile={self.path('slurmctld.pid')}
SlurmdPidFile={self.path('slurmd.pid')}
SlurmctldLogFile={self.path('log', 'slurmctld.log')}
SlurmdLogFile={self.path('log', 'slurmd.log')}
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=loomtest Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        with open(self.env["SLURM_CONF"], "w") as f:
            f.write(conf)

        self.start("slurmctld", [slurmctld, "-D", "-i", "-f", self.env["SLURM_CONF"]])
        self.start("slurmd", [slurmd, "-D", "-N", self.node, "-f", self.env["SLURM_CONF"]])
        deadline = time.time() + 60
        state = ""
        while True:
            self.check_alive()
            r = self.run("sinfo", "--noheader", "--nodes", self.node, "--format=%t", check=False)
            state = r.stdout.strip()
            if r.returncode == 0 and state.startswith("idle"):
                break
            if time.time() > deadline:
                raise Failure(f"node {self.node} not idle within 60 s (sinfo: {state or r.stderr.strip()}):\n"
                              "--- slurmctld ---\n" + tail(self.path("log", "slurmctld.out"))
                              + "--- slurmd ---\n" + tail(self.path("log", "slurmd.out")))
            time.sleep(0.5)
        log(f"Slurm up in {self.dir}: node {self.node} idle, {cpus} CPUs, slurmctld port {ctld_port}")

    def submit(self, name, ntasks, env, args):
        env_all = dict(self.env)
        env_all.update(env)
        out = self.path("jobs", f"{name}.out")
        cmd = ["sbatch", "--parsable", f"--job-name=loom-{name}", f"--ntasks={ntasks}",
               f"--output={out}", f"--chdir={self.path('jobs')}", "--time=10",
               os.path.join(self.args.source_root, "launch", "slurm", "loom.sbatch")] + args
        r = subprocess.run(cmd, env=env_all, capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise Failure(f"sbatch failed ({r.returncode}): {r.stderr.strip()}")
        job = r.stdout.strip().split(";")[0]
        self.jobs.append(job)
        log(f"submitted job {job} ({name}): {' '.join(cmd[1:])}")
        return job, out

    def job_info(self, job):
        r = self.run("scontrol", "--oneliner", "show", "job", job, check=False)
        info = {}
        for field in r.stdout.split():
            if "=" in field:
                k, v = field.split("=", 1)
                info.setdefault(k, v)
        return info

    def wait(self, jobs, timeout):
        deadline = time.time() + timeout
        pending = set(jobs)
        final = {}
        while pending:
            self.check_alive()
            for job in sorted(pending):
                info = self.job_info(job)
                state = info.get("JobState", "?")
                if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "?"):
                    final[job] = info
                    pending.discard(job)
            if pending and time.time() > deadline:
                outs = "".join(f"--- {self.path('jobs', f)} (tail) ---\n{tail(self.path('jobs', f), 20)}"
                               for f in sorted(os.listdir(self.path("jobs"))))
                raise Failure(f"jobs {sorted(pending)} still not finished after {timeout} s "
                              f"(states: {[self.job_info(j).get('JobState') for j in sorted(pending)]})\n{outs}")
            time.sleep(0.5)
        return final

    def teardown(self):
        if self.jobs and self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            self.run("scancel", *self.jobs, check=False, timeout=20)
            deadline = time.time() + 10
            while time.time() < deadline:
                r = self.run("squeue", "--noheader", "--jobs", ",".join(self.jobs), "--format=%i", check=False)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is None or p.poll() is not None:
                continue
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                log(f"{name} ignored SIGTERM; killing it")
                p.kill()
                p.wait(10)
        # Whatever the daemons left (slurmstepd, job processes) was re-parented to us.
        for _ in range(3):
            left = []
            todo = children_of(os.getpid())
            while todo:
                pid = todo.pop()
                left.append(pid)
                todo.extend(children_of(pid))
            live = [p for p in left if not is_zombie(p)]
            for pid in live:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            reap()
            if not live:
                break
            log(f"killed {len(live)} leftover process(es): {live}")
            time.sleep(0.5)
        if self.args.keep:
            log(f"kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def prctl(option, value):
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        return -1


def die_with_parent():
    # In the daemon, before exec: SIGKILL it if the test is killed (meson's timeout).
    PR_SET_PDEATHSIG = 1
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def on_signal(sig, _frame):
    raise Failure(f"interrupted by signal {sig}; tearing Slurm down")


def is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        return stat[stat.rindex(")") + 2] == "Z"
    except (OSError, ValueError, IndexError):
        return True


def reap():
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sanitizer_env():
    """For sanitizer builds (launch/setup.sh test): leaks that Open MPI and PMIx keep
    until exit are not the job's; everything else still fails it."""
    supp = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lsan.supp")
    return {"ASAN_OPTIONS": "detect_leaks=1:fast_unwind_on_malloc=0:abort_on_error=1",
            "LSAN_OPTIONS": f"suppressions={supp}:print_suppressions=0",
            "OMPI_MCA_mca_base_component_disable_dlclose": "1"}


def client_output(text):
    start = text.find("---- loom client output ----")
    end = text.find("---- end of loom client output")
    if start < 0 or end < 0:
        return None
    return text[start:end].split("\n", 1)[1]


def check_job(name, job, info, out, real, tp, pp, launcher):
    try:
        with open(out, errors="replace") as f:
            text = f.read()
    except OSError as e:
        raise Failure(f"job {job} ({name}): no output file {out}: {e}")
    problems = []
    state, code = info.get("JobState"), info.get("ExitCode")
    if state != "COMPLETED" or code != "0:0":
        problems.append(f"job state {state}, exit code {code} (expected COMPLETED, 0:0)")
    if "cluster healthy at" not in text:
        problems.append("the cluster never became healthy")
    reply = client_output(text)
    if reply is None:
        problems.append("no loom client output section")
    elif real:
        if "Once upon a time" not in reply:
            problems.append("the greedy query's output does not contain 'Once upon a time'")
    else:
        world = 1 + tp * pp
        want = f"standin: world={world} tp={tp} pp={pp} ranks=[{','.join(map(str, range(world)))}]"
        if want not in reply:
            problems.append(f"stand-in reply lacks '{want}'")
        for r in range(world):
            role = "coordinator" if r == 0 else f"worker stage={(r - 1) // tp} tp={(r - 1) % tp}"
            if f"loom-standin: rank {r} {role} " not in text:
                problems.append(f"no line for rank {r} ({role})")
            if launcher == "srun" and f"SLURM_PROCID={r}" not in text:
                problems.append(f"rank {r} was not started by srun (no SLURM_PROCID={r})")
    if launcher == "srun" and "cluster exited with status 0" not in text:
        problems.append("the cluster did not exit cleanly (status 0) after SIGTERM")
    if problems:
        raise Failure(f"job {job} ({name}) failed:\n  - " + "\n  - ".join(problems)
                      + f"\n--- {out} ---\n{text}")
    log(f"job {job} ({name}) ok; client output:\n{reply.rstrip()}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source-root", required=True)
    ap.add_argument("--loom", required=True, help="the loom binary (used with --real)")
    ap.add_argument("--standin", help="the stand-in binary (used without --real)")
    ap.add_argument("--real", action="store_true", help="run the real `loom serve` on the demo model")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--job-timeout", type=int, default=JOB_TIMEOUT, help="seconds to wait for the jobs")
    args = ap.parse_args()
    args.source_root = os.path.abspath(args.source_root)
    real = args.real or os.environ.get("LOOM_SLURM_REAL") == "1"
    binary = os.path.abspath(args.loom if real else (args.standin or ""))
    if not os.access(binary, os.X_OK):
        print(f"slurm_test: FAIL: {'--loom' if real else '--standin'} binary {binary!r} is not executable",
              file=sys.stderr)
        return 1
    model = os.path.join(args.source_root, "tests", "data", "stories260K")
    log(f"mode: {'real loom serve on ' + model if real else 'stand-in ' + binary}")

    if os.geteuid() != 0:
        print("slurm_test: FAIL: must run as root (it starts slurmd, which launches jobs as their user)",
              file=sys.stderr)
        return 1
    # Orphans of the daemons (slurmstepd, job processes) become our children: see teardown.
    PR_SET_CHILD_SUBREAPER = 36
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    # meson's timeout sends SIGTERM: turn it (and ^C) into a failure so that the
    # `finally` below still tears everything down.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    cluster = None
    t0 = time.time()
    try:
        cluster = Cluster(args)
        cluster.setup()
        common = {"LOOM_BIN": binary, "LOOM_HOME": args.source_root, "MODEL": model,
                  "PROMPT_IDS": "1", "MAX_NEW_TOKENS": "20", "HEALTH_WAIT": "120",
                  "CLIENT_ARGS": "--timeout 120",
                  "OMP_NUM_THREADS": "1", "OMPI_MCA_mpi_yield_when_idle": "1"}
        common.update(sanitizer_env())
        cases = [  # name, tp, pp, launcher
            ("srun-tp2", 2, 1, "srun"),
            ("mpirun-pp2", 1, 2, "mpirun"),
        ]
        submitted = []
        for name, tp, pp, launcher in cases:
            env = dict(common, TP=str(tp), PP=str(pp), LOOM_LAUNCHER=launcher,
                       LISTEN=f"tcp://127.0.0.1:{free_port()}")
            job, out = cluster.submit(name, 1 + tp * pp, env, [])
            submitted.append((name, job, out, tp, pp, launcher))
        final = cluster.wait([s[1] for s in submitted], args.job_timeout)
        failures = []
        for name, job, out, tp, pp, launcher in submitted:
            try:
                check_job(name, job, final[job], out, real, tp, pp, launcher)
            except Failure as e:
                failures.append(str(e))
        if failures:
            raise Failure("\n".join(failures))
    except (Failure, subprocess.TimeoutExpired, OSError) as e:
        print(f"slurm_test: FAIL: {e}", file=sys.stderr)
        if cluster:
            for name in ("slurmctld", "slurmd"):
                p = cluster.path("log", name + ".out")
                if os.path.exists(p):
                    print(f"--- {name} log (tail) ---\n{tail(p, 15)}", file=sys.stderr)
        return 1
    finally:
        if cluster:
            cluster.teardown()
    log(f"PASS in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
