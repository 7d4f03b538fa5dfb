#!/usr/bin/env python3
"""Streams one generation from a running loom cluster and prints the text as it
arrives, then the finish reason and token counts on stderr.

    python3 proto/python/stream_example.py --endpoint tcp://127.0.0.1:5555 \
        --prompt "Once upon a time" --max-new-tokens 64
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from loom_client import DEFAULT_ENDPOINT, LoomClient, LoomError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoint", default=DEFAULT_ENDPOINT)
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--wait", type=float, default=0, help="wait up to this many seconds for the cluster to serve")
    ap.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    a = ap.parse_args()
    try:
        with LoomClient(a.endpoint, timeout=0) as c:
            if a.wait:
                c.wait_until_serving(a.wait)
            t0 = time.monotonic()
            first = None
            for chunk in c.stream(a.prompt, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                                  seed=a.seed, timeout=a.timeout):
                if first is None:
                    first = time.monotonic() - t0
                print(chunk.text, end="", flush=True)
            print()
            dt = time.monotonic() - t0
            print(f"[finish: {chunk.finish_reason}; {chunk.prompt_tokens} prompt + {chunk.completion_tokens} new tokens; "
                  f"first chunk after {first:.3f} s, {chunk.completion_tokens / dt:.1f} tok/s]", file=sys.stderr)
    except LoomError as e:
        print(f"\nstream_example: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
