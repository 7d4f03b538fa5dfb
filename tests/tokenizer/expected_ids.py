#!/usr/bin/env python3
"""Expected tokenizer results, computed with Hugging Face `tokenizers`.

For every text of the corpus files: encode(text, add_special_tokens=False/True)
ids, decode(ids_with_specials, skip_special_tokens=False/True), and whether
decode(encode(text)) reproduces the text. Also random id sequences (biased
towards byte tokens and special tokens) with their HF decodes, to exercise
invalid UTF-8 and the streaming decoder. All values come from HF, never loom.

Usage: expected_ids.py --tokenizer DIR --corpus corpus.txt [--corpus more.txt]
                       [--extra-text FILE] [--lossless] --out expect.json
"""
import argparse
import json
import random
import sys
import unicodedata

FORMAT_VERSION = 1


def read_corpus(path):
    """One JSON string per line; lines starting with '#' are comments."""
    texts = []
    with open(path, encoding="utf-8") as f:
        for line in f.read().split("\n"):
            if not line.strip() or line.startswith("#"):
                continue
            texts.append(json.loads(line))
    return texts


def byte_like_ids(tok):
    """Ids that stand for single bytes: "<0xAB>" tokens, or byte-level tokens
    of one character whose byte is >= 0x80 (pieces of multi-byte UTF-8)."""
    ids = []
    bl_chars = {}
    n = 0
    printable = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    for b in range(256):
        if b in printable:
            bl_chars[chr(b)] = b
        else:
            bl_chars[chr(256 + n)] = b
            n += 1
    for t, i in tok.get_vocab(with_added_tokens=False).items():
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            ids.append(i)
        elif len(t) == 1 and bl_chars.get(t, 0) >= 0x80:
            ids.append(i)
    return sorted(ids)


def compute(tokenizer_dir, corpus_paths, extra_texts=(), lossless=False, n_random=60, seed=1234):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        sys.exit("expected_ids.py: the Python package `tokenizers` is required (pip install tokenizers)")
    tok = Tokenizer.from_file(tokenizer_dir + "/tokenizer.json")
    has_normalizer = tok.normalizer is not None

    texts = []
    for p in corpus_paths:
        texts += read_corpus(p)
    texts += list(extra_texts)

    cases = []
    for text in texts:
        ids = tok.encode(text, add_special_tokens=False).ids
        ids_sp = tok.encode(text, add_special_tokens=True).ids
        case = {
            "text": text,
            "ids": ids,
            "ids_special": ids_sp,
            "decode": tok.decode(ids_sp, skip_special_tokens=False),
            "decode_skip": tok.decode(ids_sp, skip_special_tokens=True),
            "decode_plain": tok.decode(ids, skip_special_tokens=False),
        }
        # byte-level BPE keeps every byte; only a normalizer may change the text
        case["roundtrip"] = bool(lossless) and (not has_normalizer or unicodedata.normalize("NFC", text) == text)
        if case["roundtrip"] and case["decode_plain"] != text:
            sys.exit("expected_ids.py: HF itself does not round-trip %r" % text)
        cases.append(case)

    rng = random.Random(seed)
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    added = tok.get_added_tokens_decoder()
    special_ids = sorted(added)
    special_texts = {t.content for t in added.values() if t.special}
    byte_ids = byte_like_ids(tok)
    rand = []
    for _ in range(n_random):
        seq = []
        for _ in range(rng.randint(1, 40)):
            r = rng.random()
            if r < 0.45 and byte_ids:
                seq.append(rng.choice(byte_ids))
            elif r < 0.55 and special_ids:
                seq.append(rng.choice(special_ids))
            else:
                seq.append(rng.randrange(vocab_size))
        rand.append({
            "ids": seq,
            "decode": tok.decode(seq, skip_special_tokens=False),
            "decode_skip": tok.decode(seq, skip_special_tokens=True),
        })

    return {
        "format_version": FORMAT_VERSION,
        "tokenizer": tokenizer_dir,
        "vocab_size": vocab_size,
        "lossless": bool(lossless),
        # "special" as decode(skip_special_tokens=True) sees it: by the id's token text
        "added": [{"content": t.content, "id": i, "special": tok.id_to_token(i) in special_texts}
                  for i, t in sorted(added.items())],
        "cases": cases,
        "random": rand,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer", required=True, help="directory holding tokenizer.json")
    ap.add_argument("--corpus", action="append", default=[], help="corpus file (repeatable)")
    ap.add_argument("--extra-text", action="append", default=[], help="whole file used as one more case")
    ap.add_argument("--lossless", action="store_true", help="decode(encode(x)) == x is expected")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    extra = [open(p, encoding="utf-8").read() for p in a.extra_text]
    res = compute(a.tokenizer, a.corpus, extra, a.lossless)
    with open(a.out, "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=True)


if __name__ == "__main__":
    main()
