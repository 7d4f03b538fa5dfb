#!/usr/bin/env python3
"""Tests of `loom tokenize` (through the stand-alone tokenize_cli driver).

Ids must equal HF `encode(text, add_special_tokens=...)`; output formats,
--help, and usage/runtime errors (exit 2 / exit 1, one stderr line prefixed
"loom tokenize: ") are checked too. Usage: test_cli.py TOKENIZE_CLI DATA_DIR
"""
import json
import os
import subprocess
import sys
import tempfile

failures = 0


def run(exe, *args):
    p = subprocess.run([exe, *args], capture_output=True, text=True, encoding="utf-8")
    return p.returncode, p.stdout, p.stderr


def check(cond, what, detail=""):
    global failures
    if cond:
        print("ok   " + what)
    else:
        failures += 1
        print("FAIL " + what + (("\n     " + detail) if detail else ""))


def main():
    exe, data = sys.argv[1], sys.argv[2]
    try:
        from tokenizers import Tokenizer
    except ImportError:
        sys.exit("test_cli.py: the Python package `tokenizers` is required (pip install tokenizers)")

    texts = ["Hello, world!", "<s>Hi</s> there", "  spaces\tand\nnewlines  ", "你好 👍🏽", "<|im_start|>user",
             "x"]
    for name in ["gpt2", "qwen2", "mistral-v1", "mistral-v3"]:
        d = os.path.join(data, "tokenizers", name)
        hf = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
        for t in texts:
            for special in (False, True):
                want = hf.encode(t, add_special_tokens=special).ids
                args = ["--model", d, "--text", t] + (["--add-special-tokens"] if special else [])
                rc, out, err = run(exe, *args)
                got = out.strip()
                check(rc == 0 and got == " ".join(map(str, want)),
                      "%s %r special=%s" % (name, t, special), "expected %s got %r (rc %d, %s)" % (want, got, rc, err))
                rc, out, err = run(exe, *args, "--json")
                ok = rc == 0 and out.endswith("\n") and out.count("\n") == 1
                check(ok and json.loads(out) == {"ids": want} and out == json.dumps({"ids": want}, separators=(",", ":")) + "\n",
                      "%s %r --json" % (name, t), "got %r" % out)

    gpt2 = os.path.join(data, "tokenizers", "gpt2")
    rc, out, err = run(exe, "--model", gpt2, "--text", "")
    check(rc == 0 and out == "\n", "empty text prints an empty line", repr(out))
    rc, out, err = run(exe, "--model", gpt2, "--text", "", "--json")
    check(rc == 0 and out == '{"ids":[]}\n', "empty text --json", repr(out))
    rc, out, err = run(exe, "--help")
    check(rc == 0 and "usage: loom tokenize" in out and err == "", "--help exits 0 with usage on stdout")

    usage_cases = [
        ([], "no arguments"),
        (["--text", "hi"], "missing --model"),
        (["--model", gpt2], "missing --text"),
        (["--model", gpt2, "--text", "hi", "--bogus"], "unknown option"),
        (["--model", gpt2, "--text"], "option without value"),
        (["--model", gpt2, "--text", "hi", "stray"], "stray argument"),
    ]
    for args, what in usage_cases:
        rc, out, err = run(exe, *args)
        lines = err.strip().split("\n")
        check(rc == 2 and out == "" and len(lines) == 1 and lines[0].startswith("loom tokenize: "),
              "usage error: " + what, "rc %d stderr %r" % (rc, err))

    with tempfile.TemporaryDirectory(prefix="loom-tok-cli-") as tmp:
        bad = os.path.join(tmp, "bad")
        os.makedirs(bad)
        with open(os.path.join(bad, "tokenizer.json"), "w") as f:
            f.write('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [')
        runtime_cases = [
            (["--model", os.path.join(tmp, "nope"), "--text", "hi"], "missing model dir", "cannot open"),
            (["--model", bad, "--text", "hi"], "truncated tokenizer.json", "malformed JSON"),
            (["--model", gpt2, "--text", "bad \udcff utf8"], "invalid UTF-8 text", "UTF-8"),
        ]
        for args, what, want in runtime_cases:
            try:
                p = subprocess.run([exe, *[a.encode("utf-8", "surrogateescape") for a in args]],
                                   capture_output=True)
                rc, out, err = p.returncode, p.stdout.decode(), p.stderr.decode()
            except Exception as e:  # pragma: no cover
                rc, out, err = -1, "", str(e)
            lines = err.strip().split("\n")
            check(rc == 1 and out == "" and len(lines) == 1 and lines[0].startswith("loom tokenize: ") and want in err,
                  "runtime error: " + what, "rc %d stderr %r" % (rc, err))

    print("cli: %d failure(s)" % failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
