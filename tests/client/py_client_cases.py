#!/usr/bin/env python3
"""The Python client (proto/python/loom_client.py) against tests/client/mock_server.

    py_client_cases.py MOCK_SERVER CASE

Needs pyzmq, protobuf and grpcio-tools (the test set-up installs them); if one
is missing every case FAILS saying so. loom_pb2 is generated afresh into a
temporary directory, so the generation path is tested too.
"""
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PYDIR = os.path.normpath(os.path.join(HERE, "..", "..", "proto", "python"))
MOCK = sys.argv[1]

missing = []
for mod, pkg in (("zmq", "pyzmq"), ("google.protobuf", "protobuf"), ("grpc_tools.protoc", "grpcio-tools")):
    try:
        __import__(mod)
    except ImportError:
        missing.append(pkg)
if missing:
    print(f"FAIL: the Python client tests need {', '.join(missing)} in {sys.executable} "
          f"(pip install {' '.join(missing)}; launch/setup.sh test installs them)", file=sys.stderr)
    sys.exit(1)

PB2_DIR = tempfile.mkdtemp(prefix="loom-pb2-")
os.environ["LOOM_PB2_DIR"] = PB2_DIR
sys.path.insert(0, PYDIR)
import loom_client as lc  # noqa: E402
import mock_helper  # noqa: E402
from mock_helper import MOCK_STATS, Mock  # noqa: E402

CASES = {}
mock_helper.MOCK = MOCK


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def raises(exc, needle, fn, *a, **kw):
    try:
        fn(*a, **kw)
    except exc as e:
        assert needle in str(e), f"{exc.__name__} without {needle!r}: {e}"
        return e
    raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")


@case
def generate():
    with Mock() as m, lc.LoomClient(m.endpoint) as c:
        r = c.generate("hi", max_new_tokens=3)
        assert (r.prompt_ids, r.output_ids, r.text, r.finish_reason) == ([104, 105], [1000, 1001, 1002], "w0 w1 w2 ", "length"), r
        assert (r.prompt_tokens, r.completion_tokens) == (2, 3), r
        r = c.generate(prompt_ids=[5, 6], max_new_tokens=9, stop=["w2"])
        assert r.prompt_ids == [5, 6] and r.text == "w0 w1 " and r.finish_reason == "stop", r
        r = c.generate("UTF8", max_new_tokens=2)
        assert r.text == "h\u00e9llo \u2192 ", r.text
        r = c.generate("ECHO", max_new_tokens=1, temperature=0.5, top_k=3, top_p=0.25, repetition_penalty=1.5, seed=2**64 - 1,
                       stop=["x", "y"], stop_ids=[4])
        assert r.text == ("temperature=0.5 top_k=3 top_p=0.25 repetition_penalty=1.5 seed=18446744073709551615 stream=0 "
                          "stops=x|y stop_ids=4"), r.text
    assert os.path.exists(os.path.join(PB2_DIR, "loom_pb2.py")), "loom_pb2 was generated"


@case
def stream():
    with Mock() as m, lc.LoomClient(m.endpoint) as c:
        chunks = list(c.stream("hello", max_new_tokens=4))
        assert [ch.token_ids for ch in chunks] == [[1000], [1001], [1002], [1003]], chunks
        assert [ch.finish_reason for ch in chunks] == ["none", "none", "none", "length"]
        assert "".join(ch.text for ch in chunks) == "w0 w1 w2 w3 "
        assert chunks[-1].prompt_ids == list(b"hello")
        # the streamed chunks arrive as they are made
        t0 = time.monotonic()
        times = [time.monotonic() - t0 for _ in c.stream("SLOW", max_new_tokens=5)]
        assert times[0] < times[-1] - 0.6, times
        # many requests on one client
        ids = [c.submit("abc", max_new_tokens=3) for _ in range(5)]
        assert len(set(ids)) == 5 and c.in_flight() == 5
        got = {i: 0 for i in ids}
        while c.in_flight():
            ch = c.next_chunk(5)
            assert ch is not None, "timed out"
            got[ch.request_id] += len(ch.token_ids)
        assert all(v == 3 for v in got.values()), got


@case
def stream_close_cancels():
    with Mock() as m, lc.LoomClient(m.endpoint) as c:
        n = 0
        t0 = time.monotonic()
        for ch in c.stream("SLOW", max_new_tokens=100):
            n += 1
            if n == 2:
                break  # closes the generator: cancels on the server
        assert time.monotonic() - t0 < 3
        assert c.in_flight() == 0
        assert c.stats()["running"] == 0, "the mock still runs the request"
        assert c.generate("x", max_new_tokens=1).text == "w0 "


@case
def health_stats():
    with Mock() as m, lc.LoomClient(m.endpoint) as c:
        assert c.health() is True
        assert c.stats() == MOCK_STATS, c.stats()
    with Mock("--mode", "notserving") as m, lc.LoomClient(m.endpoint) as c:
        assert c.health() is False
        raises(lc.LoomTimeout, "not serving", c.wait_until_serving, 0.5)
    with Mock("--serving-after", "1") as m, lc.LoomClient(m.endpoint) as c:
        c.wait_until_serving(10)
    t0 = time.monotonic()
    raises(lc.LoomError, "no connection", lc.LoomClient, "tcp://127.0.0.1:1", timeout=0.5)
    assert time.monotonic() - t0 < 2
    raises(lc.LoomError, "cannot connect", lc.LoomClient, "not an endpoint")


@case
def error_chunk():
    with Mock() as m, lc.LoomClient(m.endpoint) as c:
        seen = []
        e = raises(lc.LoomServerError, "mock: the worker failed", lambda: seen.extend(c.stream("ERROR", max_new_tokens=5)))
        assert len(seen) == 2 and e.request_id, (seen, e.request_id)
        raises(lc.LoomServerError, "the prompt is empty", c.generate, "", max_new_tokens=5)
        raises(lc.LoomServerError, "max_new_tokens", c.generate, "x", max_new_tokens=0)
        assert c.generate("x", max_new_tokens=1).text == "w0 "  # still serving


@case
def timeout():
    with Mock(crashes=True) as m, lc.LoomClient(m.endpoint) as c:
        t0 = time.monotonic()
        raises(lc.LoomTimeout, "timed out", c.generate, "SILENT", max_new_tokens=5, timeout=0.5)
        raises(lc.LoomTimeout, "idle timeout", c.generate, "SILENT", max_new_tokens=5, idle_timeout=0.5)
        assert time.monotonic() - t0 < 3
        assert c.in_flight() == 0 and c.health()
        t0 = time.monotonic()
        raises(lc.LoomConnectionLost, "lost the connection", c.generate, "DIE", max_new_tokens=5, stream=True)
        assert time.monotonic() - t0 < 8
    for _ in range(3):
        with Mock() as m, lc.LoomClient(m.endpoint) as c:
            raises(lc.LoomServerError, "shutting down", c.generate, "BYE", max_new_tokens=5)
    with Mock("--mode", "silent") as m:
        t0 = time.monotonic()
        raises(lc.LoomTimeout, "no health reply", lc.LoomClient, m.endpoint, timeout=0.5)
        assert time.monotonic() - t0 < 2


@case
def wrong_version():
    with Mock("--mode", "badversion") as m:
        raises(lc.LoomProtocolError, "wire version 2 is not supported (this peer speaks version 1)", lc.LoomClient, m.endpoint)
    with Mock("--mode", "garbage") as m:
        raises(lc.LoomProtocolError, "malformed", lc.LoomClient, m.endpoint)
    raises(lc.LoomProtocolError, "empty message", lc.unpack, b"")
    env = lc.pb.Envelope()
    env.health.SetInParent()
    env.version = 3
    raises(lc.LoomProtocolError, "wire version 3", lc.unpack, env.SerializeToString())
    assert lc.unpack(lc.pack(env)).WhichOneof("body") == "health"


@case
def example_script():
    with Mock() as m:
        p = subprocess.run([sys.executable, os.path.join(PYDIR, "stream_example.py"), "--endpoint", m.endpoint,
                            "--prompt", "hi", "--max-new-tokens", "3", "--wait", "5"],
                           capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "w0 w1 w2 \n", repr(p.stdout)
    assert "finish: length; 2 prompt + 3 new tokens" in p.stderr, p.stderr


if __name__ == "__main__":
    name = sys.argv[2]
    if name not in CASES:
        sys.exit(f"unknown case {name}; cases: {', '.join(CASES)}")
    try:
        CASES[name]()
    finally:
        import shutil
        shutil.rmtree(PB2_DIR, ignore_errors=True)
    print(f"{name}: ok")
