#!/usr/bin/env python3
"""`loom client` against tests/client/mock_server (standard library only).

    client_cases.py LOOM MOCK_SERVER CASE

One case per meson test: output formats (--json, plain, --stream), flags
forwarded, --health/--stats, and the failure paths (error chunk, timeouts, a
server that dies, a server of another wire version, usage errors).
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "common"))
from ports import free_port  # noqa: E402

import mock_helper
from mock_helper import MOCK_STATS, Mock

LOOM, MOCK = sys.argv[1], sys.argv[2]
CASES = {}
mock_helper.MOCK = MOCK


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def client(*args, timeout=30):
    return subprocess.run([LOOM, "client", *args], capture_output=True, text=True, timeout=timeout)


def expect_ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def expect_fail(p, *needles, code=1):
    assert p.returncode == code, f"exit {p.returncode}, wanted {code}\nstdout: {p.stdout}\nstderr: {p.stderr}"
    for n in needles:
        assert n in p.stderr, f"stderr lacks {n!r}: {p.stderr!r}"
    assert p.stderr.startswith("loom client: "), p.stderr
    return p


def one_json_line(p):
    lines = p.stdout.splitlines()
    assert len(lines) == 1, f"want exactly one line, got {p.stdout!r}"
    return lines[0], json.loads(lines[0])


# --- output formats -----------------------------------------------------------

@case
def json_text_prompt():
    with Mock() as m:
        line, j = one_json_line(expect_ok(client("--endpoint", m.endpoint, "--prompt", "hi", "--max-new-tokens", "3", "--json")))
    # the same compact format and key order as `loom run --json`
    assert line == '{"prompt_ids":[104,105],"output_ids":[1000,1001,1002],"text":"w0 w1 w2 "}', line


@case
def json_prompt_ids():
    with Mock() as m:
        _, j = one_json_line(expect_ok(client("--endpoint", m.endpoint, "--prompt-ids", "5, 6,7", "--max-new-tokens", "2", "--json")))
    assert j == {"prompt_ids": [5, 6, 7], "output_ids": [1000, 1001], "text": "w0 w1 "}, j


@case
def json_escapes():
    with Mock() as m:
        _, j = one_json_line(expect_ok(client("--endpoint", m.endpoint, "--prompt", "QUOTE", "--max-new-tokens", "2", "--json")))
        assert j["text"] == 'back\\slash\tsay "hi"\n', j
        _, j = one_json_line(expect_ok(client("--endpoint", m.endpoint, "--prompt", "UTF8", "--max-new-tokens", "2", "--json")))
        assert j["text"] == "h\u00e9llo \u2192 ", j


@case
def plain_text():
    with Mock() as m:
        p = expect_ok(client("--endpoint", m.endpoint, "--prompt", "hi", "--max-new-tokens", "4"))
    assert p.stdout == "w0 w1 w2 w3 \n", repr(p.stdout)


@case
def stream_prints_as_it_goes():
    """--stream: text shows up while the server is still generating (SLOW: a token per 200 ms)."""
    with Mock() as m:
        t0 = time.monotonic()
        p = subprocess.Popen([LOOM, "client", "--endpoint", m.endpoint, "--prompt", "SLOW", "--max-new-tokens", "8", "--stream"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        first = os.read(p.stdout.fileno(), 3)
        t_first = time.monotonic() - t0
        rest, err = p.communicate(timeout=20)
        t_all = time.monotonic() - t0
    assert p.returncode == 0, err
    out = (first + rest).decode()
    assert out == "w0 w1 w2 w3 w4 w5 w6 w7 \n", repr(out)
    assert t_first < t_all - 0.8, f"first bytes after {t_first:.2f} s, all after {t_all:.2f} s: not streamed"


@case
def stream_json_same():
    with Mock() as m:
        a = expect_ok(client("--endpoint", m.endpoint, "--prompt", "hello", "--max-new-tokens", "6", "--json")).stdout
        b = expect_ok(client("--endpoint", m.endpoint, "--prompt", "hello", "--max-new-tokens", "6", "--json", "--stream")).stdout
        c = expect_ok(client("--endpoint", m.endpoint, "--prompt", "hello", "--max-new-tokens", "6", "--stream")).stdout
        d = expect_ok(client("--endpoint", m.endpoint, "--prompt", "hello", "--max-new-tokens", "6")).stdout
    assert a == b, (a, b)
    assert c == d == json.loads(a)["text"] + "\n", (c, d)


@case
def flags_forwarded():
    with Mock() as m:
        p = expect_ok(client("--endpoint", m.endpoint, "--prompt", "ECHO", "--max-new-tokens", "1", "--temperature", "0.5",
                             "--top-k", "3", "--top-p", "0.25", "--repetition-penalty", "1.5", "--seed", "18446744073709551615",
                             "--stop", "a b", "--stop", "c", "--stop-id", "7", "--stop-id", "9", "--stream"))
        assert p.stdout == ("temperature=0.5 top_k=3 top_p=0.25 repetition_penalty=1.5 seed=18446744073709551615 stream=1 "
                            "stops=a b|c stop_ids=7,9\n"), repr(p.stdout)
        p = expect_ok(client("--endpoint", m.endpoint, "--prompt", "ECHO", "--max-new-tokens", "1"))
        assert p.stdout.startswith("temperature=0 top_k=0 top_p=1 repetition_penalty=1 seed=0 stream=0 "), repr(p.stdout)


@case
def stop_string():
    with Mock() as m:
        _, j = one_json_line(expect_ok(client("--endpoint", m.endpoint, "--prompt", "x", "--max-new-tokens", "9", "--stop", "w3",
                                              "--json")))
    assert j["text"] == "w0 w1 w2 " and len(j["output_ids"]) == 4, j


# --- health and stats ---------------------------------------------------------

@case
def health_ok():
    with Mock() as m:
        p = expect_ok(client("--endpoint", m.endpoint, "--health"))
    assert p.stdout == "serving\n", p.stdout


@case
def health_not_serving():
    with Mock("--mode", "notserving") as m:
        expect_fail(client("--endpoint", m.endpoint, "--health"), "not serving")
        t0 = time.monotonic()
        expect_fail(client("--endpoint", m.endpoint, "--health", "--wait", "1"), "not serving")
        assert 0.9 < time.monotonic() - t0 < 5


@case
def health_nobody():
    t0 = time.monotonic()
    p = client("--endpoint", f"tcp://127.0.0.1:{free_port()}", "--health", "--timeout", "0.5")
    # the refusal is reported as such when seen within the timeout; on a loaded machine it may not be
    expect_fail(p, "no connection" if "no connection" in p.stderr else "no health reply")
    assert time.monotonic() - t0 < 3
    t0 = time.monotonic()
    expect_fail(client("--endpoint", f"tcp://127.0.0.1:{free_port()}", "--health", "--wait", "1"), "no connection")
    assert time.monotonic() - t0 < 4


@case
def health_wait_until_serving():
    with Mock("--serving-after", "1.5") as m:
        expect_fail(client("--endpoint", m.endpoint, "--health"), "not serving")
        t0 = time.monotonic()
        p = expect_ok(client("--endpoint", m.endpoint, "--health", "--wait", "20"))
        assert p.stdout == "serving\n"
        assert time.monotonic() - t0 < 5


@case
def health_wait_server_starts_late():
    """--wait keeps trying while nobody listens yet, and succeeds once the server is up."""
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    p = subprocess.Popen([LOOM, "client", "--endpoint", endpoint, "--health", "--wait", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    assert p.poll() is None, "gave up before the server started"
    with Mock("--endpoint", endpoint):
        out, err = p.communicate(timeout=15)
    assert p.returncode == 0 and out == "serving\n", (p.returncode, out, err)


@case
def stats_json():
    with Mock() as m:
        line, j = one_json_line(expect_ok(client("--endpoint", m.endpoint, "--stats")))
    assert j == MOCK_STATS, line
    # the original four keys come first, in their original order
    assert list(j)[:4] == ["running", "waiting", "tokens_per_s", "kv_used_fraction"], line


# --- failures -----------------------------------------------------------------

@case
def error_chunk_exit_1():
    with Mock() as m:
        p = expect_fail(client("--endpoint", m.endpoint, "--prompt", "ERROR", "--max-new-tokens", "5", "--stream"),
                        "mock: the worker failed")
        assert p.stdout == "w0 w1 \n", repr(p.stdout)  # what came before the error, then a newline
        p = expect_fail(client("--endpoint", m.endpoint, "--prompt", "ERROR", "--max-new-tokens", "5", "--json"),
                        "mock: the worker failed")
        assert p.stdout == "", p.stdout


@case
def empty_prompt_error():
    with Mock() as m:
        expect_fail(client("--endpoint", m.endpoint, "--prompt", "", "--max-new-tokens", "5"), "the prompt is empty")
        # the server keeps serving
        expect_ok(client("--endpoint", m.endpoint, "--prompt", "a", "--max-new-tokens", "1"))


@case
def timeout_silent_request():
    """The server answers health but never this request: --timeout ends it."""
    with Mock() as m:
        t0 = time.monotonic()
        expect_fail(client("--endpoint", m.endpoint, "--prompt", "SILENT", "--max-new-tokens", "5", "--timeout", "1"), "timed out")
        assert time.monotonic() - t0 < 3, time.monotonic() - t0


@case
def timeout_silent_server():
    with Mock("--mode", "silent") as m:
        for args in (["--prompt", "hi", "--max-new-tokens", "5"], ["--health"], ["--stats"]):
            t0 = time.monotonic()
            expect_fail(client("--endpoint", m.endpoint, *args, "--timeout", "1"))
            assert time.monotonic() - t0 < 3, (args, time.monotonic() - t0)


@case
def idle_timeout():
    with Mock() as m:
        t0 = time.monotonic()
        expect_fail(client("--endpoint", m.endpoint, "--prompt", "SILENT", "--max-new-tokens", "5", "--idle-timeout", "0.5"),
                    "idle timeout")
        assert time.monotonic() - t0 < 3
        # a slow but steady stream is not idle
        expect_ok(client("--endpoint", m.endpoint, "--prompt", "SLOW", "--max-new-tokens", "4", "--idle-timeout", "1", "--stream"))


@case
def server_dies_mid_stream():
    """No --timeout: the lost connection alone ends the request, quickly."""
    with Mock(crashes=True) as m:
        t0 = time.monotonic()
        p = expect_fail(client("--endpoint", m.endpoint, "--prompt", "DIE", "--max-new-tokens", "5", "--stream"),
                        "lost the connection")
        assert time.monotonic() - t0 < 8, time.monotonic() - t0
        assert p.stdout == "w0 \n", repr(p.stdout)


@case
def server_last_words():
    """The server answers with an error chunk and closes at once: the client
    shows that message, not a lost connection."""
    for _ in range(5):
        with Mock() as m:
            expect_fail(client("--endpoint", m.endpoint, "--prompt", "BYE", "--max-new-tokens", "5", "--stream"),
                        "mock: the server is shutting down")


@case
def wrong_version_server():
    with Mock("--mode", "badversion") as m:
        for args in (["--prompt", "hi", "--max-new-tokens", "5"], ["--health"], ["--health", "--wait", "5"], ["--stats"]):
            t0 = time.monotonic()
            expect_fail(client("--endpoint", m.endpoint, *args), "wire version 2 is not supported (this peer speaks version 1)")
            assert time.monotonic() - t0 < 3, args


@case
def garbage_server():
    with Mock("--mode", "garbage") as m:
        expect_fail(client("--endpoint", m.endpoint, "--prompt", "hi", "--max-new-tokens", "5"), "malformed")


@case
def usage_errors():
    bad = [
        ["--prompt", "hi"],                                             # no --max-new-tokens
        ["--max-new-tokens", "3"],                                      # no prompt
        ["--prompt", "a", "--prompt-ids", "1", "--max-new-tokens", "3"],
        ["--prompt", "a", "--max-new-tokens", "0"],
        ["--prompt", "a", "--max-new-tokens", "x"],
        ["--prompt-ids", "1,,2", "--max-new-tokens", "3"],
        ["--prompt", "a", "--max-new-tokens", "3", "--top-p", "1.5"],
        ["--prompt", "a", "--max-new-tokens", "3", "--temperature", "-1"],
        ["--prompt", "a", "--max-new-tokens", "3", "--timeout", "-2"],
        ["--prompt", "a", "--max-new-tokens", "3", "--stop", ""],
        ["--health", "--stats"],
        ["--health", "--prompt", "a", "--max-new-tokens", "1"],
        ["--stats", "--wait", "3"],
        ["--endpoint"],
        ["--frobnicate"],
        ["--health", "extra"],
    ]
    for args in bad:
        p = client(*args)
        assert p.returncode == 2, (args, p.returncode, p.stderr)
        assert p.stderr.startswith("loom client: ") and p.stdout == "", (args, p.stderr)


@case
def help_text():
    p = expect_ok(client("--help"))
    assert p.stdout.startswith("usage: loom client"), p.stdout
    for flag in ("--endpoint", "--prompt-ids", "--stream", "--json", "--health", "--wait", "--stats", "--timeout"):
        assert flag in p.stdout, flag


if __name__ == "__main__":
    name = sys.argv[3]
    if name not in CASES:
        sys.exit(f"unknown case {name}; cases: {', '.join(CASES)}")
    CASES[name]()
    print(f"{name}: ok")
