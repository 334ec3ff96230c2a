#!/usr/bin/env python
"""2:4 inference against dense, side by side in one run: a bert-base-size encoder pruned to 2:4, its target
weights on PyTorch's semi-structured kernels (``load_sparse(semi_structured=True)``) against the same weights
dense, per batch size, eager and compiled.

Where the kernels do not run (a CPU, a card older than sm80) the 2:4 model is the fallback — dense with its
zeros — and what is measured is that its outputs equal the dense model's and that it costs the same. On a GPU
the 2:4 column is the kernels'.

    python benchmarks/bench_inference.py                                  # CPU: fallback, fp32
    python benchmarks/bench_inference.py --device cuda --dtype float16    # GPU: the 2:4 kernels
"""

import argparse
import os
import platform
import statistics
import tempfile
import time

import torch
from transformers import BertConfig, BertModel

from cram_hf import load_sparse, prune, save_sparse
from cram_hf.files import write_json, write_text

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on CUDA, fp32 on CPU)"
    )
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--layers", type=int, default=12, help="bert-base: 12 (fewer for a quick CPU run)")
    p.add_argument("--repeats", type=int, default=10, help="timed forwards per setting (median reported)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--no_compile", action="store_true", help="eager only")
    p.add_argument("--output_dir", default=os.path.join(ROOT, "benchmarks", "results", "inference"))
    return p.parse_args(argv)


def timed_pair(first, second, ids, repeats, warmup, device):
    """Median forward time of two models, measured alternately (first, second, first, ...) so that a load
    that comes and goes on the machine weighs on both alike."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = ([], [])
    with torch.inference_mode():
        for _ in range(warmup):
            first(input_ids=ids)
            second(input_ids=ids)
        for _ in range(repeats):
            for model, out in zip((first, second), times):
                sync()
                t = time.perf_counter()
                model(input_ids=ids)
                sync()
                out.append(time.perf_counter() - t)
    return statistics.median(times[0]), statistics.median(times[1])


def main(argv=None):
    args = parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("float16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    config = BertConfig(num_hidden_layers=args.layers)  # bert-base: hidden 768, intermediate 3072
    with tempfile.TemporaryDirectory() as tmp:
        model = BertModel(config, add_pooling_layer=False)
        save_sparse(model, os.path.join(tmp, "m"), report=prune(model, "2:4"))
        load = dict(device_map=str(device), dtype=dtype, add_pooling_layer=False)
        dense = load_sparse(os.path.join(tmp, "m"), BertModel, **load).eval()
        sparse = load_sparse(os.path.join(tmp, "m"), BertModel, semi_structured=True, **load).eval()
    from torch.sparse import SparseSemiStructuredTensor

    kernels = sum(isinstance(p, SparseSemiStructuredTensor) for p in sparse.parameters())
    # Two models of one class share the compiled code's cache; with three batch sizes each they would pass
    # dynamo's default limit of 8 entries and one of them would silently fall back to eager.
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    rows = []
    modes = ["eager"] + ([] if args.no_compile else ["compiled"])
    for mode in modes:
        runs = {"dense": dense, "2:4": sparse}
        if mode == "compiled":
            runs = {k: torch.compile(m) for k, m in runs.items()}
        for batch in args.batch_sizes:
            ids = torch.randint(
                1000, 30000, (batch, args.seq), generator=torch.Generator().manual_seed(batch)
            )
            ids = ids.to(device)
            with torch.inference_mode():
                diff = float((runs["dense"](input_ids=ids)[0] - runs["2:4"](input_ids=ids)[0]).abs().max())
            t_dense, t_sparse = timed_pair(runs["dense"], runs["2:4"], ids, args.repeats, args.warmup, device)
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "dense_ms": 1000 * t_dense,
                    "sparse_ms": 1000 * t_sparse,
                    "speedup": t_dense / t_sparse,
                    "max_abs_diff": diff,
                }
            )
            print(
                f"{mode:8s} batch {batch:3d}: dense {1000 * t_dense:9.1f} ms, 2:4 {1000 * t_sparse:9.1f} ms, "
                f"speed-up {t_dense / t_sparse:.2f}x, max |diff| {diff:.3g}",
                flush=True,
            )
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    record = {
        "device": args.device,
        "card": card,
        "threads": torch.get_num_threads(),
        "dtype": str(dtype),
        "layers": args.layers,
        "seq": args.seq,
        "repeats": args.repeats,
        "target_weights_on_kernels": kernels,
        "torch": torch.__version__,
        "rows": rows,
    }
    lines = [
        f"2:4 inference vs dense, {args.layers}-layer bert-base-size encoder, seq {args.seq}, {dtype}, on "
        f"{card} ({'2:4 kernels: ' + str(kernels) + ' weights' if kernels else 'no kernels: the dense fallback'}); "
        f"median of {args.repeats} forwards each, dense and 2:4 alternated.",
        "",
        "| mode | batch | dense (ms) | 2:4 (ms) | speed-up | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['mode']} | {r['batch']} | {r['dense_ms']:.1f} | {r['sparse_ms']:.1f} | {r['speedup']:.2f}x | "
        f"{r['max_abs_diff']:.3g} |"
        for r in rows
    ]
    stem = os.path.join(args.output_dir, f"inference_{device.type}")
    write_json(stem + ".json", record)
    write_text(stem + ".md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
