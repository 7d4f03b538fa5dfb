#!/usr/bin/env python3
"""Hugging Face transformers baseline for `loom bench` (issue 4, item 7).

Builds a random-weight causal LM from a config.json or a shape preset (no
downloads: the GPU machine is offline), then times eager `generate` (greedy,
fp16 by default, default attention implementation) for every batch size and
input/output length, exactly as loom bench takes them:

    python3 bench/hf_baseline.py --preset llama-7b \
        --batch-size "1;8;64" --input-output-len "128,256;2048,256" --json hf.json

Per case it prints latency (prefill + all output tokens), TTFT (a separate
generate of one token: prefill plus the first sample), decode tokens/s
(batch * (out - 1) / (latency - TTFT)), total output tokens/s and the peak GPU
memory torch allocated (weights included). A case that runs out of memory is
reported as "OOM" and the sweep goes on. Output length is forced (no EOS).
"""

import argparse
import datetime
import inspect
import json
import os
import platform
import statistics
import sys
import time

# Shapes of the presets loom bench knows (Llama-2 7B/13B/70B, Llama-3 8B).
PRESETS = {
    "llama-7b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                     intermediate_size=11008, vocab_size=32000, max_position_embeddings=4096,
                     rope_theta=10000.0, rms_norm_eps=1e-5),
    "llama3-8b": dict(hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                      intermediate_size=14336, vocab_size=128256, max_position_embeddings=8192,
                      rope_theta=500000.0, rms_norm_eps=1e-5),
    "llama-13b": dict(hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40,
                      intermediate_size=13824, vocab_size=32000, max_position_embeddings=4096,
                      rope_theta=10000.0, rms_norm_eps=1e-5),
    "llama-70b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                      intermediate_size=28672, vocab_size=32000, max_position_embeddings=4096,
                      rope_theta=10000.0, rms_norm_eps=1e-5),
}


def parse_batches(s):
    try:
        out = [int(x) for x in s.split(";") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad --batch-size {s!r}: want e.g. \"1;8;64\"")
    if not out or min(out) < 1:
        raise argparse.ArgumentTypeError(f"bad --batch-size {s!r}: want positive integers")
    return out


def parse_lens(s):
    out = []
    for part in s.split(";"):
        if not part.strip():
            continue
        try:
            i, o = (int(x) for x in part.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad --input-output-len {s!r}: want e.g. \"128,256;2048,256\"")
        if i < 1 or o < 1:
            raise argparse.ArgumentTypeError(f"bad --input-output-len {s!r}: lengths must be positive")
        out.append((i, o))
    if not out:
        raise argparse.ArgumentTypeError("empty --input-output-len")
    return out


def make_config(args, transformers):
    """A transformers config from --config (file or directory) or --preset."""
    if args.config:
        path = args.config
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path) as f:
            d = json.load(f)
        model_type = d.pop("model_type", None)
        if not model_type:
            sys.exit(f"hf_baseline: {path} has no model_type")
        for k in ("architectures", "torch_dtype", "dtype", "transformers_version", "quantization_config",
                  "auto_map"):
            d.pop(k, None)
        cfg = transformers.AutoConfig.for_model(model_type, **d)
        name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    else:
        d = dict(PRESETS[args.preset])
        sig = inspect.signature(transformers.LlamaConfig.__init__).parameters
        if "rope_parameters" in sig:  # transformers 5.x
            theta = d.pop("rope_theta")
            d["rope_parameters"] = {"rope_type": "default", "rope_theta": theta}
        cfg = transformers.LlamaConfig(**d)
        name = args.preset
    if args.layers:
        cfg.num_hidden_layers = args.layers
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = cfg.layer_types[:args.layers]
    cfg.bos_token_id = None
    cfg.eos_token_id = None
    cfg.pad_token_id = None
    cfg.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
    return cfg, name


def build_model(cfg, dtype, args, torch, transformers):
    kw = {}
    if args.attn_implementation:
        kw["attn_implementation"] = args.attn_implementation
    torch.manual_seed(args.seed)
    with torch.device("cuda"):
        try:
            model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=dtype, **kw)
        except TypeError:  # transformers 4.x before `dtype`
            model = transformers.AutoModelForCausalLM.from_config(cfg, torch_dtype=dtype, **kw)
    model = model.to(device="cuda", dtype=dtype).eval()
    # Initialise every tensor ourselves (on the GPU, in a second or so): the
    # library may skip its init under a device context, leaving garbage.
    std = float(getattr(cfg, "initializer_range", 0.02))
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if "norm" in pname and pname.endswith(".weight"):
                p.fill_(1.0)
            elif pname.endswith(".bias"):
                p.zero_()
            else:
                p.normal_(0.0, std)
    model.generation_config = transformers.GenerationConfig(
        do_sample=False, bos_token_id=None, eos_token_id=None, pad_token_id=0)
    return model


def run_case(model, torch, vocab, batch, in_len, out_len, args):
    g = torch.Generator(device="cuda").manual_seed(args.seed + batch * 7919 + in_len)
    ids = torch.randint(1, vocab, (batch, in_len), device="cuda", generator=g)
    mask = torch.ones_like(ids)

    def gen(n_new):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=n_new,
                                 min_new_tokens=n_new, pad_token_id=0, eos_token_id=None)
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
        if out.shape[1] != in_len + n_new:
            raise RuntimeError(f"generate returned {out.shape[1] - in_len} new tokens, wanted {n_new}")
        return t

    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    for _ in range(args.warmup):
        gen(min(out_len, 4))
    ttft = [gen(1) for _ in range(args.runs)]
    lat = [gen(out_len) for _ in range(args.runs)]
    peak = torch.cuda.max_memory_allocated()
    t_lat, t_ttft = statistics.median(lat), statistics.median(ttft)
    decode_s = t_lat - t_ttft
    return dict(batch=batch, input_len=in_len, output_len=out_len, status="ok",
                latency_ms=t_lat * 1e3, ttft_ms=t_ttft * 1e3,
                decode_ms_per_step=decode_s / max(out_len - 1, 1) * 1e3,
                decode_tok_s=batch * (out_len - 1) / decode_s if out_len > 1 and decode_s > 0 else None,
                output_tok_s=batch * out_len / t_lat,
                peak_mem_bytes=peak, latency_runs_ms=[x * 1e3 for x in lat], ttft_runs_ms=[x * 1e3 for x in ttft])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="config.json (or a directory holding one)")
    src.add_argument("--preset", choices=sorted(PRESETS), help="shape preset (default llama-7b)")
    ap.add_argument("--batch-size", type=parse_batches, default=parse_batches("1;8;64"),
                    help='batch sizes, ";"-separated (default "1;8;64")')
    ap.add_argument("--input-output-len", type=parse_lens, default=parse_lens("128,256;2048,256"),
                    help='input,output pairs, ";"-separated (default "128,256;2048,256")')
    ap.add_argument("--dtype", choices=["fp16", "bf16"], default="fp16")
    ap.add_argument("--attn-implementation", default=None,
                    help="transformers attn_implementation (default: the library's, sdpa)")
    ap.add_argument("--layers", type=int, default=0, help="override num_hidden_layers (quick checks)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up generates per case (default 1)")
    ap.add_argument("--runs", type=int, default=1, help="timed runs per case; the median is reported (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="write the full numbers here")
    args = ap.parse_args()
    if not args.config and not args.preset:
        args.preset = "llama-7b"
    if args.runs < 1 or args.warmup < 0 or args.layers < 0:
        ap.error("--runs must be >= 1, --warmup and --layers >= 0")

    import torch
    import transformers
    if not torch.cuda.is_available():
        sys.exit("hf_baseline: no CUDA device")
    dtype = torch.float16 if args.dtype == "fp16" else torch.bfloat16
    cfg, name = make_config(args, transformers)
    t0 = time.perf_counter()
    model = build_model(cfg, dtype, args, torch, transformers)
    torch.cuda.synchronize()
    build_s = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    dev = torch.cuda.get_device_name()
    print(f"hf_baseline: {name}, {n_params / 1e9:.2f} B params, {weight_bytes / 1e9:.2f} GB of weights "
          f"({args.dtype}), attn {model.config._attn_implementation}, built in {build_s:.1f} s on {dev}; "
          f"torch {torch.__version__}, transformers {transformers.__version__}", flush=True)

    results = []
    for in_len, out_len in args.input_output_len:
        for batch in args.batch_size:
            try:
                r = run_case(model, torch, cfg.vocab_size, batch, in_len, out_len, args)
            except torch.OutOfMemoryError as e:
                r = dict(batch=batch, input_len=in_len, output_len=out_len, status="oom", error=str(e)[:300])
            torch.cuda.empty_cache()
            results.append(r)
            if r["status"] == "ok":
                print(f"  batch {batch:3d} in {in_len:5d} out {out_len:4d}: latency {r['latency_ms']:9.1f} ms, "
                      f"TTFT {r['ttft_ms']:8.1f} ms, decode {r['decode_tok_s'] or 0:8.1f} tok/s, "
                      f"peak {r['peak_mem_bytes'] / 2**30:6.2f} GiB", flush=True)
            else:
                print(f"  batch {batch:3d} in {in_len:5d} out {out_len:4d}: OOM", flush=True)

    if args.json:
        doc = dict(tool="hf_baseline", date=datetime.datetime.now(datetime.timezone.utc).isoformat(),
                   host=platform.node(), gpu=dev, torch=torch.__version__, transformers=transformers.__version__,
                   model=name, config=cfg.to_dict(), dtype=args.dtype, params=n_params, weight_bytes=weight_bytes,
                   attn_implementation=model.config._attn_implementation, warmup=args.warmup, runs=args.runs,
                   command=" ".join(sys.argv), results=results)
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1, default=str)

    # The short table last.
    print(f"\n{'batch':>5} {'in':>5} {'out':>4} {'latency ms':>11} {'TTFT ms':>9} {'decode tok/s':>12} "
          f"{'peak GiB':>8}")
    for r in results:
        if r["status"] != "ok":
            print(f"{r['batch']:5d} {r['input_len']:5d} {r['output_len']:4d} {'OOM':>11}")
            continue
        print(f"{r['batch']:5d} {r['input_len']:5d} {r['output_len']:4d} {r['latency_ms']:11.1f} "
              f"{r['ttft_ms']:9.1f} {r['decode_tok_s'] or 0:12.1f} {r['peak_mem_bytes'] / 2**30:8.2f}")


if __name__ == "__main__":
    main()
