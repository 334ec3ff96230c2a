#!/usr/bin/env python
"""Distillation benchmark: does knowledge distillation from the dense model recover more of what one-shot
pruning costs than sparse fine-tuning on the labels alone — for a plainly trained and for a CrAM+ model?

MiniLM-L6 on BBC News, with the data, split and training settings of ``bench_evidence.py``. For each seed:

1. the dense fine-tuned AdamW and CrAM+ Multi models of that seed: loaded from ``--models_dir`` when a folder
   ``bbc-adamw-s{seed}`` / ``bbc-cram-s{seed}`` holds a saved model (``bench_evidence.py --save_models DIR``
   writes them), else trained here the same way;
2. the teacher: the dense AdamW model of the seed (frozen);
3. the students: each model pruned one-shot at every ``--levels`` level (global magnitude, or
   ``--pruning_method sparsegpt``/``wanda`` per matrix, calibrated on training articles) and fine-tuned
   ``--finetune_steps`` steps with the mask kept (``KeepSparsityCallback``), once on the labels alone and once
   with KD from the teacher (``--distill_temperature``, ``--distill_hardness``): same steps, learning rate,
   data order and pruned start.

Test accuracy, mean ± std over ``--seeds``; the KD gain is paired (KD minus labels alone, seed by seed). Writes
``distill.json``, ``distill.md`` (table) and ``distill.png`` (accuracy against sparsity) to ``--output_dir``.
``--quick`` is a few-minute smoke run on a subset.

    python benchmarks/bench_evidence.py --save_models out/bbc-models --output_dir benchmarks/results/evidence
    python benchmarks/bench_distill.py --models_dir out/bbc-models --output_dir benchmarks/results/distill
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_bbc_transfer.py

import argparse
import copy
import sys
import tempfile
import time

import bench_evidence as ev
from bench_bbc_transfer import (
    evaluate,
    log,
    rewrite_report,
    save_report,
    setup_offline_minilm,
    sparse_finetune,
    train,
)
from transformers import AutoModelForSequenceClassification

from cram_hf.compression import parse_level
from cram_hf.sweep_options import METHODS as PRUNING_METHODS

VARIANTS = {"pruned": "one-shot", "plain": "sparse FT", "kd": "sparse FT + KD"}


def parse_args(argv=None):
    # The models, data and training settings are bench_evidence.py's, so its saved models can be reused.
    evidence = ev.parse_args([])
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/results/distill")
    p.add_argument("--seeds", type=int, nargs="+", default=evidence.seeds)
    p.add_argument("--levels", nargs="+", default=["0.7", "0.8", "0.9", "2:4"], help="One-shot levels.")
    p.add_argument(
        "--pruning_method",
        default="magnitude",
        choices=list(PRUNING_METHODS),
        help="magnitude: global ranking; wanda, sparsegpt: uniform per matrix, calibrated.",
    )
    p.add_argument("--calibration_samples", type=int, default=evidence.calibration_samples)
    p.add_argument(
        "--models_dir",
        default=None,
        help="Folder of bench_evidence.py --save_models: bbc-adamw-s{seed} / bbc-cram-s{seed} are loaded from it.",
    )
    g = p.add_argument_group("the dense models, when trained here (bench_evidence.py's defaults)")
    for name in ("max_seq_length", "batch_size", "train_steps"):
        g.add_argument(f"--{name}", type=int, default=getattr(evidence, name))
    for name in ("learning_rate", "weight_decay", "cram_rho"):
        g.add_argument(f"--{name}", type=float, default=getattr(evidence, name))
    g.add_argument("--cram_sparsities", nargs="+", default=evidence.cram_sparsities)
    g = p.add_argument_group("sparse fine-tuning of the students")
    g.add_argument("--finetune_steps", type=int, default=evidence.finetune_steps)
    g.add_argument("--finetune_learning_rate", type=float, default=evidence.finetune_learning_rate)
    g.add_argument("--distill_temperature", type=float, default=2.0)
    g.add_argument("--distill_hardness", type=float, default=1.0, help="1: KD loss only (oBERT's choice).")
    p.add_argument(
        "--wait_minutes",
        type=float,
        default=0.0,
        help="Wait this long for a model of --models_dir that a running bench_evidence.py has yet to save.",
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Smoke run: a data subset and a few steps.")
    p.add_argument(
        "--from_json",
        default=None,
        help="Rewrite the table and plot from an earlier distill.json; no training.",
    )
    args = p.parse_args(argv)
    for v in args.levels + args.cram_sparsities:
        parse_level(v, "level")
    for name in ("train_steps", "finetune_steps", "batch_size", "calibration_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if not args.distill_temperature > 0:
        p.error(f"--distill_temperature: must be > 0, got {args.distill_temperature}")
    if not 0 <= args.distill_hardness <= 1:
        p.error(f"--distill_hardness: must be in [0, 1], got {args.distill_hardness}")
    if args.models_dir is not None and not os.path.isdir(args.models_dir):
        p.error(f"--models_dir: no such folder {args.models_dir!r}")
    if args.quick:
        args.train_steps, args.finetune_steps = 8, 4
        args.calibration_samples = min(args.calibration_samples, 16)
    return args


# --- the experiment ------------------------------------------------------------------------------------------


def dense_model(args, data, model_path, workdir, *, seed, key):
    """bench_evidence.py's fine-tuned model ``key`` of ``seed``: from ``--models_dir`` when saved there, else
    trained here as bench_evidence.py trains it."""
    name = f"bbc-{key}-s{seed}"
    saved = os.path.join(args.models_dir, name) if args.models_dir else None
    # The tokenizer is saved after the weights: its files mean the weights are complete.
    done = saved and os.path.join(saved, "tokenizer_config.json")
    deadline = time.time() + 60 * args.wait_minutes
    while done and not os.path.isfile(done) and time.time() < deadline:
        time.sleep(20)  # a bench_evidence.py run still writing them (--wait_minutes)
    if done and os.path.isfile(done):
        log(f"seed {seed}: {ev.MODELS[key]} loaded from {saved}")
        return AutoModelForSequenceClassification.from_pretrained(saved), {"loaded_from": saved}
    log(f"seed {seed}: training {ev.MODELS[key]} on BBC, {args.train_steps} steps")
    model = ev.bbc_model(data, model_path, seed)
    timing = train(
        model,
        data.bbc_train,
        data.tokenizer,
        ev.run_args(args, seed=seed),
        name=name,
        steps=args.train_steps,
        lr=args.learning_rate,
        cram=key == "cram",
        workdir=workdir,
    )
    return model, timing


def pruning_options(args, data) -> dict:
    if args.pruning_method == "magnitude":
        return {"method": "magnitude", "scope": "global"}
    return {"method": args.pruning_method, "scope": "layer", "calibration": data.bbc_calibration}


def run_seed(args, data, model_path, workdir, seed) -> dict:
    models, timing = {}, {}
    for key in ev.MODELS:
        models[key], timing[key] = dense_model(args, data, model_path, workdir, seed=seed, key=key)
    # A copy: the trainer freezes its teacher in place, and the students are copies of models["adamw"] too.
    teacher = copy.deepcopy(models["adamw"])
    dense = {key: evaluate(model, data.bbc_batches) for key, model in models.items()}
    log(f"seed {seed}: dense accuracy " + ", ".join(f"{k} {v['accuracy']:.4f}" for k, v in dense.items()))
    distill = {"distill_temperature": args.distill_temperature, "distill_hardness": args.distill_hardness}
    students = {}
    for key, model in models.items():
        for level in args.levels:
            row = {}
            for variant, kd in (("plain", None), ("kd", teacher)):
                log(
                    f"seed {seed}: {ev.MODELS[key]} pruned at {level} ({args.pruning_method}), sparse FT "
                    f"{args.finetune_steps} steps {'with KD from the dense AdamW model' if kd else 'on the labels'}"
                )
                r = sparse_finetune(
                    model,
                    level,
                    data.bbc_train,
                    data.bbc_batches,
                    data.tokenizer,
                    ev.run_args(args, seed=seed),
                    name=f"{key}@{level}-{variant}-s{seed}",
                    workdir=workdir,
                    teacher=kd,
                    distill_options=distill,
                    **pruning_options(args, data),
                )
                row.update(pruned=r["pruned"], target_sparsity=r["target_sparsity"])
                row[variant] = {**r["finetuned"], "mask_held_exactly": r["mask_held_exactly"]}
            students.setdefault(key, {})[level] = row
    return {"seed": seed, "dense": dense, "students": students, "timing": timing}


def kd_gains(result: dict, key: str, level: str) -> list[float]:
    """KD minus labels alone, seed by seed (the two fine-tunes of a seed share the pruned start and data order)."""
    return [
        r["students"][key][level]["kd"]["accuracy"] - r["students"][key][level]["plain"]["accuracy"]
        for r in result["runs"]
    ]


# --- report --------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    agg, cfg = result["aggregate"], result["config"]
    lines = [
        "| model | level | " + " | ".join(VARIANTS.values()) + " | KD gain (points) |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in ev.MODELS.items():
        lines.append(f"| {name} | dense | {ev.cell(agg['dense'][key]['accuracy'])} | — | — | — |")
        for level in cfg["levels"]:
            row = agg["students"][key][level]
            cells = [ev.cell(row[v]["accuracy"]) for v in VARIANTS]
            gain = ev.cell(ev.spread(kd_gains(result, key, level)), 1, 100)
            lines.append(f"| {name} | {level} | " + " | ".join(cells) + f" | {gain} |")
    held = all(
        r["students"][k][lv][v]["mask_held_exactly"]
        for r in result["runs"]
        for k in ev.MODELS
        for lv in cfg["levels"]
        for v in ("plain", "kd")
    )
    pruner = (
        "global magnitude" if cfg["pruning_method"] == "magnitude" else f"{cfg['pruning_method']} per matrix"
    )
    sources = {t.get("loaded_from") is not None for r in result["runs"] for t in r["timing"].values()}
    lines += [
        "",
        f"Test accuracy on {result['data']['test']} held-out BBC News articles, mean ± std over seeds "
        f"{cfg['seeds']}; KD gain: sparse FT + KD minus sparse FT, seed by seed. One-shot: {pruner} over the "
        "encoder's 36 Linear weight matrices (2:4 as a pattern). Sparse FT: "
        f"{cfg['finetune_steps']} steps at lr {cfg['finetune_learning_rate']}, batch {cfg['batch_size']}, mask held by "
        f"KeepSparsityCallback (zero pattern verified identical afterwards: {'yes' if held else 'NO'}); with KD the "
        f"loss is {cfg['distill_hardness']:g}·KD + {1 - cfg['distill_hardness']:g}·cross-entropy at temperature "
        f"{cfg['distill_temperature']:g}, the teacher the dense AdamW model of the same seed.",
        "Dense models: "
        + (
            f"loaded from {cfg['models_dir']} (bench_evidence.py --save_models)"
            if sources == {True}
            else f"{cfg['train_steps']} steps, lr {cfg['learning_rate']}, CrAM+ rho {cfg['cram_rho']}, levels "
            f"{{{', '.join(cfg['cram_sparsities'])}}} (bench_evidence.py's settings)"
            + (", partly loaded from --models_dir" if len(sources) > 1 else "")
        )
        + f". Whole run: {result['seconds'] / 60:.1f} min on {cfg['threads']} CPU threads.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, cfg = result["aggregate"], result["config"]
    x, labels = ev._level_axis(cfg["levels"])
    fig, ax = plt.subplots(figsize=(8.5, 5))
    colors = {"adamw": "tab:blue", "cram": "tab:red"}
    styles = {"pruned": ":", "plain": "--", "kd": "-"}
    sparsities = [lv for lv in cfg["levels"] if not isinstance(parse_level(lv), tuple)]
    patterns = [lv for lv in cfg["levels"] if lv not in sparsities]
    for key, name in ev.MODELS.items():
        for j, (variant, label) in enumerate(VARIANTS.items()):
            shift = (j - 1) * 0.006 + (0.003 if key == "cram" else -0.003)
            # Sparsities joined by a line; N:M patterns are not on that axis, so they stand alone.
            for levels, linestyle in ((sparsities, styles[variant]), (patterns, "none")):
                if not levels:
                    continue
                stats = [agg["students"][key][lv][variant]["accuracy"] for lv in levels]
                ax.errorbar(
                    [x[lv] + shift for lv in levels],
                    [s["mean"] for s in stats],
                    yerr=ev.min_max_errors(stats),
                    marker="o" if variant == "kd" else ".",
                    capsize=2,
                    color=colors[key],
                    linestyle=linestyle,
                    label=f"{name}: {label}" if levels is sparsities or not sparsities else None,
                )
        dense = agg["dense"][key]["accuracy"]["mean"]
        ax.plot([x["dense"]], [dense], marker="s", color=colors[key], linestyle="none")
    ax.axhline(
        agg["dense"]["adamw"]["accuracy"]["mean"], color="gray", linewidth=0.8, label="teacher (dense AdamW)"
    )
    ax.axvline(0.95, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks([x[lv] for lv in ["dense", *cfg["levels"]]])
    ax.set_xticklabels(labels)
    ax.set_xlabel("sparsity of the encoder's Linear weights (N:M pattern right of the line)")
    ax.set_ylabel("BBC test accuracy")
    ax.set_title(
        f"MiniLM-L6 on BBC News: sparse fine-tuning with and without KD; mean over seeds {cfg['seeds']}, "
        "bars = min-max",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    ev._save(fig, path)
    plt.close(fig)


def write_report(result: dict, output_dir: str) -> str:
    result["aggregate"] = ev.aggregate(
        {"runs": [{k: r[k] for k in ("seed", "dense", "students")} for r in result["runs"]]}
    )
    return save_report(output_dir, "distill", result, markdown(result), lambda path: plot(result, path))


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return rewrite_report(args.from_json, args.output_dir, write_report)
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()
    data = ev.Data(args, model_path)
    log(f"BBC {data.bbc_sizes}; levels {args.levels}, pruning {args.pruning_method}, seeds {args.seeds}")
    command = " ".join(["python", "benchmarks/bench_distill.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory() as workdir:
        runs = [run_seed(args, data, model_path, workdir, seed) for seed in args.seeds]
    result = {
        "command": command,
        "config": vars(args),
        "data": data.bbc_sizes,
        "runs": runs,
        "seconds": time.time() - t0,
    }
    table = write_report(result, args.output_dir)
    print(table)
    log(f"done in {result['seconds'] / 60:.1f} min; wrote distill.{{json,md,png}} to {args.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
