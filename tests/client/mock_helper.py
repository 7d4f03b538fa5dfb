"""What the client test scripts share: the values tests/client/mock_server.c
answers to Stats, and a running mock_server (set MOCK to its path first)."""
import subprocess

MOCK = None  # path of the mock_server binary, set by the test script

# What mock_server answers to Stats (the 64-bit counts exceed INT32_MAX on purpose).
MOCK_STATS = {"running": 0, "waiting": 3, "tokens_per_s": 42.5, "kv_used_fraction": 0.25,
              "kv_blocks_total": 5000000000, "kv_blocks_used": 1250000000, "kv_blocks_free": 3000000000,
              "kv_blocks_cached": 750000000, "tokens_per_block": 16, "prefix_hit_rate": 0.625,
              "preemptions": 7, "refused": 2, "completed": 11,
              "timed_steps": 6000000000, "step_cycle_ms": 8.0, "step_compute_ms": 7.5, "overhead_fraction": 0.0625}


class Mock:
    """A running mock_server; the endpoint is its first stdout line."""

    def __init__(self, *args, crashes=False):
        self.crashes = crashes  # the mock exits on its own (DIE); else it must exit 0 (sanitizers clean)
        self.p = subprocess.Popen([MOCK, *args], stdout=subprocess.PIPE, text=True)
        self.endpoint = self.p.stdout.readline().strip()
        assert self.endpoint.startswith("tcp://"), f"mock_server did not start: {self.endpoint!r}"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.p.poll() is None:
            self.p.terminate()
        rc = self.p.wait(timeout=10)
        self.p.stdout.close()
        if exc[0] is None and not self.crashes:
            assert rc == 0, f"mock_server exited with {rc} (a sanitizer report?)"
