#!/usr/bin/env python3
"""Reads meson's testlog.json and prints the failing tests and a last line
"N passed, N failed" (skips are listed but not counted as passed). Exits
non-zero when a test failed or none ran."""
import json
import sys

passed, failed, skipped = 0, [], []
with open(sys.argv[1]) as f:
    for line in f:
        if not line.strip():
            continue
        t = json.loads(line)
        r = t.get("result")
        if r in ("OK", "EXPECTEDFAIL"):
            passed += 1
        elif r == "SKIP":
            skipped.append(t["name"])
        else:
            failed.append(f'{t["name"]} ({r})')
for name in skipped:
    print(f"skipped: {name}")
for name in failed:
    print(f"FAILED: {name}")
print(f"{passed} passed, {len(failed)} failed")
sys.exit(1 if failed or passed == 0 else 0)
