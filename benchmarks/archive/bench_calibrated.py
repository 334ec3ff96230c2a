#!/usr/bin/env python
"""Calibrated one-shot pruners on real data: MiniLM-L6 fine-tuned on BBC News (AdamW and CrAM+ Multi, the
evidence benchmark's downstream setting), then pruned one-shot with magnitude, Wanda and SparseGPT, each with
a uniform per-matrix sparsity (``scope="layer"``) and with the global magnitude allocation (``"global"``);
test accuracy per level. Calibration: training articles, not the test set.

    python benchmarks/archive/bench_calibrated.py --output_dir benchmarks/archive/results/calibrated   # ~10 min on 2 cores
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch
from bench_bbc_transfer import encode, evaluate, load_bbc, log, setup_offline_minilm, train
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from cram_hf.files import write_json, write_text
from cram_hf.pruning import one_shot

METHODS = ("magnitude", "wanda", "sparsegpt")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", default="benchmarks/archive/results/calibrated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train_steps", type=int, default=100)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=48)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--cram_rho", type=float, default=0.05)
    p.add_argument("--cram_sparsities", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "2:4"])
    p.add_argument("--levels", nargs="+", default=["0.7", "0.8", "0.9", "2:4"])
    p.add_argument("--calibration_samples", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()
    train_docs, test_docs, classes = load_bbc(args.seed)
    if args.quick:
        train_docs, test_docs = train_docs[:200], test_docs[:60]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_set = encode(tokenizer, train_docs, args.max_seq_length)
    test_set = encode(tokenizer, test_docs, args.max_seq_length)
    collate = DataCollatorWithPadding(tokenizer)
    batches = [collate(test_set[i : i + 64]) for i in range(0, len(test_set), 64)]
    calib = [{k: v for k, v in r.items() if k != "labels"} for r in train_set[: args.calibration_samples]]
    calibration = [collate(calib[i : i + 16]) for i in range(0, len(calib), 16)]
    rows = {}
    with tempfile.TemporaryDirectory() as workdir:
        for key, cram in (("AdamW", False), ("CrAM+", True)):
            torch.manual_seed(args.seed)
            model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(classes))
            log(f"{key}: {args.train_steps} steps")
            train(
                model,
                train_set,
                tokenizer,
                args,
                name=key,
                steps=args.train_steps,
                lr=args.learning_rate,
                cram=cram,
                workdir=workdir,
            )
            rows[(key, "dense", "-")] = evaluate(model, batches)["accuracy"]
            for method in METHODS:
                for scope in ("global", "layer"):
                    extra = {} if method == "magnitude" else {"calibration": calibration}
                    for r in one_shot(
                        model,
                        args.levels,
                        lambda m: evaluate(m, batches),
                        scope=scope,
                        method=method,
                        **extra,
                    ):
                        rows[(key, method, scope, r["level"])] = r["accuracy"]
                        log(f"  {key} {method:9s} {scope:6s} {r['level']:>4}: {r['accuracy']:.3f}")
    levels = args.levels
    lines = [
        "| model → pruner (scope) | dense | " + " | ".join(levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for key in ("AdamW", "CrAM+"):
        for method in METHODS:
            for scope in ("global", "layer"):
                cells = [f"{rows[(key, method, scope, lv)]:.3f}" for lv in levels]
                dense = (
                    f"{rows[(key, 'dense', '-')]:.3f}" if method == "magnitude" and scope == "global" else ""
                )
                lines.append(f"| {key} → {method} ({scope}) | {dense} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    footer = (
        f"\n\nMiniLM-L6 on BBC News ({len(train_docs)} train / {len(test_docs)} test articles, first "
        f"{args.max_seq_length} tokens), {args.train_steps} steps, batch {args.batch_size}, lr "
        f"{args.learning_rate}, seed {args.seed}; CrAM+ rho {args.cram_rho}, levels "
        f"{{{', '.join(args.cram_sparsities)}}}; calibration: {len(calib)} training articles. Test accuracy. "
        f"Whole run {(time.time() - t0) / 60:.1f} min on {args.threads} CPU threads. One seed.\n"
    )
    print(table + footer)
    os.makedirs(args.output_dir, exist_ok=True)
    write_text(os.path.join(args.output_dir, "calibrated.md"), table + footer)
    write_json(
        os.path.join(args.output_dir, "calibrated.json"),
        {"config": vars(args), "accuracy": {" / ".join(k): v for k, v in rows.items()}},
    )


if __name__ == "__main__":
    main()
