#!/usr/bin/env python3
"""Meson test driver: loom's tokenizer vs Hugging Face `tokenizers`.

Builds one tokenizer configuration (a real tokenizer.json from tests/data, or a
variant of one with other model/normalizer/pre-tokenizer/decoder settings),
computes HF expectations with expected_ids.py into a temporary directory, then
runs the C checker `tokenizer_test --hf DIR EXPECT.json`, which prints every
mismatch (text, expected, got). Nothing is written to the source tree.

Usage: run_hf_tests.py --bin tokenizer_test --data tests/data --variant NAME
       run_hf_tests.py --list
"""
import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, HERE)
import expected_ids  # noqa: E402

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def added(content, id_, special=False, normalized=None, lstrip=False, rstrip=False, single_word=False):
    return {"id": id_, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
            "normalized": (not special) if normalized is None else normalized, "special": special}


def template(bos_name, bos_id, eos=None):
    single = [{"SpecialToken": {"id": bos_name, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]
    specials = {bos_name: {"id": bos_name, "ids": [bos_id], "tokens": [bos_name]}}
    if eos:
        single.append({"SpecialToken": {"id": eos[0], "type_id": 0}})
        specials[eos[0]] = {"id": eos[0], "ids": [eos[1]], "tokens": [eos[0]]}
    return {"type": "TemplateProcessing", "single": single, "pair": single, "special_tokens": specials}


def v_gpt2_legacy(j):
    # "a b" merge strings, prefix space, BOS and EOS from a template
    j["model"]["merges"] = [" ".join(m) for m in j["model"]["merges"]]
    j["pre_tokenizer"]["add_prefix_space"] = True
    j["post_processor"] = template("<|endoftext|>", 50256, ("<|endoftext|>", 50256))


def v_gpt2_nodecoder(j):
    j["decoder"] = None
    j["post_processor"] = None
    j["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "NFKC"},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "},
        {"type": "Replace", "pattern": {"String": "ab"}, "content": "AB"}]}


def v_gpt2_splits(j):
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\d"}, "behavior": "Contiguous", "invert": False},
        {"type": "Split", "pattern": {"String": ","}, "behavior": "MergedWithPrevious", "invert": False},
        {"type": "Split", "pattern": {"Regex": r"\s+"}, "behavior": "MergedWithNext", "invert": False},
        {"type": "Split", "pattern": {"Regex": r"[^aeiou]+"}, "behavior": "Isolated", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def v_gpt2_removed(j):
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\s+|(?=[A-Z])"}, "behavior": "Removed", "invert": False},
        {"type": "Split", "pattern": {"String": "e"}, "behavior": "Removed", "invert": True},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}


def v_llama3(j):
    # Llama-3 layout on the Qwen2 vocab: Split + ByteLevel(use_regex=false),
    # ignore_merges, BOS through Sequence[ByteLevel, TemplateProcessing]
    j["normalizer"] = None
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    j["model"]["ignore_merges"] = True
    j["added_tokens"] += [added("<|begin_of_text|>", 151646, special=True),
                          added("<|eot_id|>", 151647, special=True)]
    j["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        template("<|begin_of_text|>", 151646)]}


def v_qwen2_digits(j):
    # DeepSeek-style: digits split one by one before the regex
    j["pre_tokenizer"]["pretokenizers"].insert(0, {"type": "Digits", "individual_digits": True})


def v_gpt2_wsplit_digits(j):
    j["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "WhitespaceSplit"}, {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}


def v_qwen2_added(j):
    vocab = j["model"]["vocab"]
    j["added_tokens"] += [
        added("<tool>", 151646, special=True, lstrip=True, rstrip=True),
        added("world", vocab["world"], single_word=True, normalized=False),
        added("café", 151647, normalized=True),
        added(" spaced", 151648, normalized=False),
        added("<lonely>", 151649, lstrip=True),
        added("<|endoftext|><|im_end|>", 151650, special=True),
    ]


QWEN2_ADDED_TEXTS = [
    "a <tool> b", "x<tool>\n\ny", "  <tool>  <tool>  ", "hello world!", "helloworld", "world", "the world's end",
    "worlds apart, _world_ world_", "cafe\u0301 café CAFÉ", "it's  spaced out", "spaced", "a   <lonely> b",
    "<|endoftext|><|im_end|> and <|endoftext|> <|im_end|>", "\u00e9world world\u0301",
]


def v_mistral_v1_unk(j):
    j["model"]["byte_fallback"] = False


def v_mistral_v1_unk_nofuse(j):
    j["model"]["byte_fallback"] = False
    j["model"]["fuse_unk"] = False


def v_mistral_v1_added(j):
    j["added_tokens"] += [
        added("<mask>", 32000, normalized=True, single_word=True),
        added("[INST]", 32001, special=True, rstrip=True),
        added("héllo", 32002, normalized=False),
        # special but normalized: HF decodes it as "▁<m2>" and then does not skip it
        added("<m2>", 32003, special=True, normalized=True),
    ]


MISTRAL_ADDED_TEXTS = ["<mask>", "a <mask> b", "a<mask>b", "[INST] hi [INST]   there", "héllo héllo", " <mask>",
                       "<m2> x <m2>"]


def metaspace(scheme, split):
    return {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": split}


def v_mistral_v3_always(j):
    j["pre_tokenizer"] = metaspace("always", True)
    j["decoder"] = metaspace("always", True)


def v_mistral_v3_never(j):
    j["pre_tokenizer"] = metaspace("never", False)
    j["decoder"] = metaspace("never", False)


def v_mistral_v3_first_split(j):
    j["pre_tokenizer"] = metaspace("first", True)
    j["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "ByteFallback"}, {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first",
                                   "split": True}]}


# name -> (base dir under tests/data, transform or None, lossless, extra cases)
VARIANTS = {
    "gpt2": ("tokenizers/gpt2", None, True, []),
    "qwen2": ("tokenizers/qwen2", None, True, []),
    "mistral-v1": ("tokenizers/mistral-v1", None, False, []),
    "mistral-v3": ("tokenizers/mistral-v3", None, False, []),
    "stories260K": ("stories260K", None, False, []),
    "gpt2-legacy-merges": ("tokenizers/gpt2", v_gpt2_legacy, False, []),
    "gpt2-nodecoder-nfkc": ("tokenizers/gpt2", v_gpt2_nodecoder, False, []),
    "gpt2-split-behaviors": ("tokenizers/gpt2", v_gpt2_splits, True, []),
    "gpt2-split-removed": ("tokenizers/gpt2", v_gpt2_removed, False, []),
    "llama3-style": ("tokenizers/qwen2", v_llama3, True, []),
    "qwen2-digits": ("tokenizers/qwen2", v_qwen2_digits, True, []),
    "gpt2-wsplit-digits": ("tokenizers/gpt2", v_gpt2_wsplit_digits, False, []),
    "qwen2-added-flags": ("tokenizers/qwen2", v_qwen2_added, False, QWEN2_ADDED_TEXTS),
    "mistral-v1-unk": ("tokenizers/mistral-v1", v_mistral_v1_unk, False, []),
    "mistral-v1-unk-nofuse": ("tokenizers/mistral-v1", v_mistral_v1_unk_nofuse, False, []),
    "mistral-v1-added": ("tokenizers/mistral-v1", v_mistral_v1_added, False, MISTRAL_ADDED_TEXTS),
    "mistral-v3-always": ("tokenizers/mistral-v3", v_mistral_v3_always, False, []),
    "mistral-v3-never": ("tokenizers/mistral-v3", v_mistral_v3_never, False, []),
    "mistral-v3-first-split": ("tokenizers/mistral-v3", v_mistral_v3_first_split, False, []),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", help="tokenizer_test executable")
    ap.add_argument("--data", help="tests/data directory")
    ap.add_argument("--variant", choices=sorted(VARIANTS))
    ap.add_argument("--list", action="store_true")
    a = ap.parse_args()
    if a.list:
        print("\n".join(VARIANTS))
        return 0
    if not (a.bin and a.data and a.variant):
        ap.error("--bin, --data and --variant are required")
    base, transform, lossless, extra_cases = VARIANTS[a.variant]
    base_dir = os.path.join(a.data, base)
    corpus = [os.path.join(HERE, "corpus.txt")]
    # a longer stretch of real English prose
    extra = [open(os.path.join(a.data, "tokenizers/qwen2/LICENSE"), encoding="utf-8").read()] + extra_cases
    with tempfile.TemporaryDirectory(prefix="loom-tok-") as tmp:
        tok_dir = base_dir
        if transform:
            with open(os.path.join(base_dir, "tokenizer.json"), encoding="utf-8") as f:
                j = json.load(f)
            j = copy.deepcopy(j)
            transform(j)
            tok_dir = os.path.join(tmp, a.variant)
            os.makedirs(tok_dir)
            with open(os.path.join(tok_dir, "tokenizer.json"), "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
        expect = os.path.join(tmp, "expect.json")
        res = expected_ids.compute(tok_dir, corpus, extra, lossless)
        with open(expect, "w", encoding="utf-8") as f:
            json.dump(res, f, ensure_ascii=True)
        print("variant %s: %d cases from HF tokenizers, checking loom" % (a.variant, len(res["cases"])), flush=True)
        return subprocess.call([a.bin, "--hf", tok_dir, expect])


if __name__ == "__main__":
    sys.exit(main())
