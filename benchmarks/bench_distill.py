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

``--upstream`` adds the upstream path, for each seed: continued masked-LM training of MiniLM on the Austen
chapters (bench_evidence.py's settings) — the dense AdamW run (the upstream teacher), CrAM+ Multi, and CrAM+ Multi
distilling from that teacher (``--upstream_distill_temperature``, ``--upstream_distill_hardness``: oBERT's
upstream 5.5 and 1.0) — then sparse transfer to BBC: each CrAM+ upstream model pruned at ``--upstream_levels``
and fine-tuned with the mask kept, on the labels alone and with KD from the dense upstream model's dense BBC
fine-tune, against that dense fine-tune.

``--merge_from distill.json`` adds an earlier run's levels (same seeds and settings) to this one's report.

Test accuracy, mean ± std over ``--seeds``; the KD gain is paired (KD minus labels alone, seed by seed). Writes
``distill.json``, ``distill.md`` (table) and ``distill.png`` (accuracy against sparsity) to ``--output_dir``.
``--quick`` is a few-minute smoke run on a subset.

    python benchmarks/bench_evidence.py --save_models out/bbc-models --output_dir benchmarks/results/evidence
    python benchmarks/bench_distill.py --models_dir out/bbc-models --output_dir benchmarks/results/distill
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_common.py

import argparse
import copy
import json
import sys
import tempfile
import time

from bench_common import (
    MODELS,
    TRAINING_OPTIONS,
    Data,
    add_evidence_arguments,
    aggregate,
    cell,
    classifier_from,
    dense_model,
    evaluate,
    level_axis,
    log,
    min_max_errors,
    mlm_score,
    rewrite_report,
    run_args,
    save_figure,
    save_report,
    setup_offline_minilm,
    sparse_finetune,
    split_levels,
    spread,
    train,
    train_mlm,
)

from cram_hf.compression import parse_levels
from cram_hf.pruning_spec import PRUNERS, PruningSpec

VARIANTS = {"pruned": "one-shot", "plain": "sparse FT", "kd": "sparse FT + KD"}


def parse_args(argv=None):
    # The models, data and training settings are bench_evidence.py's, so its saved models can be reused.
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/results/distill")
    add_evidence_arguments(p, "seeds")
    p.add_argument("--levels", nargs="+", default=["0.7", "0.8", "0.9", "2:4"], help="One-shot levels.")
    p.add_argument(
        "--pruning_method",
        default="magnitude",
        choices=list(PRUNERS),
        help="magnitude: global ranking; wanda, sparsegpt: uniform per matrix, calibrated.",
    )
    add_evidence_arguments(p, "calibration_samples")
    p.add_argument(
        "--models_dir",
        default=None,
        help="Folder of bench_evidence.py --save_models: bbc-adamw-s{seed} / bbc-cram-s{seed} are loaded from it.",
    )
    g = p.add_argument_group("the dense models, when trained here (bench_evidence.py's defaults)")
    add_evidence_arguments(g, *TRAINING_OPTIONS)
    g = p.add_argument_group("sparse fine-tuning of the students")
    add_evidence_arguments(g, "finetune_steps", "finetune_learning_rate")
    g.add_argument("--distill_temperature", type=float, default=2.0)
    g.add_argument("--distill_hardness", type=float, default=1.0, help="1: KD loss only (oBERT's choice).")
    g = p.add_argument_group("the upstream path (--upstream)")
    g.add_argument(
        "--upstream", action="store_true", help="Also the upstream path (masked LM with KD, then transfer)."
    )
    g.add_argument("--skip_downstream", action="store_true", help="With --upstream: the upstream path alone.")
    g.add_argument("--upstream_levels", nargs="+", default=["0.7"], help="Sparse-transfer levels.")
    add_evidence_arguments(g, "mlm_steps", "mlm_batch_size", "mlm_learning_rate")
    g.add_argument("--upstream_distill_temperature", type=float, default=5.5)
    g.add_argument("--upstream_distill_hardness", type=float, default=1.0)
    p.add_argument(
        "--merge_from",
        default=None,
        help="An earlier distill.json (same seeds and settings, other --levels) whose students to report beside these.",
    )
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
    parse_levels(args.levels + args.cram_sparsities + args.upstream_levels, "level")
    if args.skip_downstream and not args.upstream:
        p.error("--skip_downstream: needs --upstream")
    if args.merge_from is not None and not os.path.isfile(args.merge_from):
        p.error(f"--merge_from: no such file {args.merge_from!r}")
    for name in ("train_steps", "finetune_steps", "batch_size", "calibration_samples"):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    for prefix in ("", "upstream_"):
        t, h = getattr(args, f"{prefix}distill_temperature"), getattr(args, f"{prefix}distill_hardness")
        if not t > 0:
            p.error(f"--{prefix}distill_temperature: must be > 0, got {t}")
        if not 0 <= h <= 1:
            p.error(f"--{prefix}distill_hardness: must be in [0, 1], got {h}")
    if args.models_dir is not None and not os.path.isdir(args.models_dir):
        p.error(f"--models_dir: no such folder {args.models_dir!r}")
    if args.quick:
        args.train_steps, args.finetune_steps, args.mlm_steps = 8, 4, 4
        args.calibration_samples = min(args.calibration_samples, 16)
    return args


# --- the experiment ------------------------------------------------------------------------------------------


def pruning_options(args, data) -> dict:
    """``spec`` and ``calibration`` for :func:`sparse_finetune`: a calibrated pruner uniform per matrix, on
    the BBC calibration batches; magnitude ranked globally."""
    if PRUNERS[args.pruning_method].calibrated:
        return {"spec": PruningSpec(args.pruning_method, "layer"), "calibration": data.bbc_calibration}
    return {"spec": PruningSpec(args.pruning_method, "global")}


def run_seed(args, data, model_path, workdir, seed) -> dict:
    models, timing = {}, {}
    for key in MODELS:
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
                    f"seed {seed}: {MODELS[key]} pruned at {level} ({args.pruning_method}), sparse FT "
                    f"{args.finetune_steps} steps {'with KD from the dense AdamW model' if kd else 'on the labels'}"
                )
                r = sparse_finetune(
                    model,
                    level,
                    data.bbc_train,
                    data.bbc_batches,
                    data.tokenizer,
                    run_args(args, seed=seed),
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


def mlm_model(args, data, model_path, workdir, *, seed, name, cram, teacher=None):
    """bench_evidence.py's upstream run, distilling from ``teacher`` when given; returns the model and its
    held-out masked-LM scores."""
    log(f"seed {seed}: masked LM '{name}', {args.mlm_steps} steps")
    distill = {
        "distill_temperature": args.upstream_distill_temperature,
        "distill_hardness": args.upstream_distill_hardness,
    }
    model, _ = train_mlm(
        args,
        data,
        model_path,
        workdir,
        seed=seed,
        name=f"{name}-s{seed}",
        cram=cram,
        teacher=teacher,
        distill_options=distill,
    )
    return model, mlm_score(model, data)


UPSTREAM = {"cram": "CrAM+ Multi", "cram_kd": "CrAM+ Multi + KD from the dense upstream model"}


def upstream_seed(args, data, model_path, workdir, seed) -> dict:
    """The upstream path of one seed: the dense upstream teacher, CrAM+ with and without KD from it, each CrAM+
    model fine-tuned sparse on BBC (labels alone / KD from the teacher's dense BBC fine-tune)."""
    dense_mlm, mlm = mlm_model(args, data, model_path, workdir, seed=seed, name="mlm-adamw", cram=False)
    models, scores = {}, {"adamw": mlm}
    models["cram"], scores["cram"] = mlm_model(
        args, data, model_path, workdir, seed=seed, name="mlm-cram", cram=True
    )
    models["cram_kd"], scores["cram_kd"] = mlm_model(
        args,
        data,
        model_path,
        workdir,
        seed=seed,
        name="mlm-cram-kd",
        cram=True,
        teacher=copy.deepcopy(dense_mlm),
    )
    for key, s in scores.items():
        log(f"seed {seed}: upstream {key}: masked-token accuracy {s['accuracy']:.4f}")
    settings = run_args(args, seed=seed)
    teacher = classifier_from(dense_mlm, data, workdir, seed=seed, name="up-adamw")
    log(f"seed {seed}: the dense upstream model fine-tuned dense on BBC, {args.finetune_steps} steps")
    train(
        teacher,
        data.bbc_train,
        data.tokenizer,
        settings,
        name=f"up-adamw-dense-s{seed}",
        steps=args.finetune_steps,
        lr=args.finetune_learning_rate,
        workdir=workdir,
    )
    out = {"mlm": scores, "dense_transfer": evaluate(teacher, data.bbc_batches), "students": {}}
    distill = {"distill_temperature": args.distill_temperature, "distill_hardness": args.distill_hardness}
    for key, mlm_ in models.items():
        start = classifier_from(mlm_, data, workdir, seed=seed, name=f"up-{key}")
        for level in args.upstream_levels:
            row = {}
            for variant, kd in (("plain", None), ("kd", teacher)):
                log(
                    f"seed {seed}: upstream {key} pruned at {level}, sparse transfer {'with KD' if kd else 'on the labels'}"
                )
                r = sparse_finetune(
                    start,
                    level,
                    data.bbc_train,
                    data.bbc_batches,
                    data.tokenizer,
                    settings,
                    name=f"up-{key}@{level}-{variant}-s{seed}",
                    workdir=workdir,
                    teacher=kd,
                    distill_options=distill,
                    **pruning_options(args, data),
                )
                row[variant] = {**r["finetuned"], "mask_held_exactly": r["mask_held_exactly"]}
            out["students"].setdefault(key, {})[level] = row
    return out


def merge_earlier(result: dict, path: str) -> None:
    """Add the students of an earlier run at other levels (same seeds, dense models and settings) to ``result``."""
    with open(path) as f:
        earlier = json.load(f)
    cfg, old = result["config"], earlier["config"]
    for key in (
        "seeds",
        "pruning_method",
        "finetune_steps",
        "finetune_learning_rate",
        "distill_temperature",
        "distill_hardness",
        "train_steps",
        "learning_rate",
        "cram_rho",
        "cram_sparsities",
    ):
        if old[key] != cfg[key]:
            raise SystemExit(f"--merge_from: {path} has {key}={old[key]!r}, this run {cfg[key]!r}.")
    twice = set(old["levels"]) & set(cfg["levels"])
    if twice:
        raise SystemExit(f"--merge_from: {path} has the levels {sorted(twice)} too.")
    for run, before in zip(result["runs"], earlier["runs"]):
        for key, levels in before["students"].items():
            run["students"][key].update(levels)
    order = ["0.5", "0.6", "0.7", "0.8", "0.9"]
    merged = set(old["levels"]) | set(cfg["levels"])
    cfg["levels"] = sorted(merged, key=lambda lv: (order.index(lv) if lv in order else len(order), lv))
    cfg["seconds_merged"] = earlier["seconds"]


def kd_gains(result: dict, key: str, level: str) -> list[float]:
    """KD minus labels alone, seed by seed (the two fine-tunes of a seed share the pruned start and data order)."""
    return [
        r["students"][key][level]["kd"]["accuracy"] - r["students"][key][level]["plain"]["accuracy"]
        for r in result["runs"]
    ]


# --- report --------------------------------------------------------------------------------------------------


def upstream_gains(result: dict, level: str) -> dict:
    """Seed by seed: what upstream KD bought (CrAM+ with minus without, per transfer variant) and what
    downstream KD bought (per upstream model)."""
    runs = [r["upstream"]["students"] for r in result["runs"]]

    def acc(s, key, variant):
        return s[key][level][variant]["accuracy"]

    return {
        "upstream KD, labels-only transfer": [
            acc(s, "cram_kd", "plain") - acc(s, "cram", "plain") for s in runs
        ],
        "upstream KD, KD transfer": [acc(s, "cram_kd", "kd") - acc(s, "cram", "kd") for s in runs],
        **{
            f"transfer KD, {UPSTREAM[key]}": [acc(s, key, "kd") - acc(s, key, "plain") for s in runs]
            for key in UPSTREAM
        },
    }


def upstream_lines(result: dict) -> list[str]:
    agg, cfg = result["aggregate"]["upstream"], result["config"]
    levels = cfg["upstream_levels"]
    lines = [
        "**The upstream path** — masked LM on Austen, then sparse transfer to BBC News",
        "",
        "| upstream model | held-out masked-token accuracy | "
        + " | ".join(f"BBC at {lv}: sparse FT | BBC at {lv}: sparse FT + KD" for lv in levels)
        + " |",
        "|---|---|" + "---|---|" * len(levels),
        f"| AdamW (dense; the upstream teacher) | {cell(agg['mlm']['adamw']['accuracy'])} | "
        + " | ".join(f"dense FT: {cell(agg['dense_transfer']['accuracy'])} | —" for _ in levels)
        + " |",
    ]
    for key, name in UPSTREAM.items():
        cells = [
            f"{cell(agg['students'][key][lv]['plain']['accuracy'])} | {cell(agg['students'][key][lv]['kd']['accuracy'])}"
            for lv in levels
        ]
        lines.append(f"| {name} | {cell(agg['mlm'][key]['accuracy'])} | " + " | ".join(cells) + " |")
    lines += ["", "Paired gains (points, mean ± std over seeds):", ""]
    lines += ["| level | " + " | ".join(upstream_gains(result, levels[0])) + " |"]
    lines += ["|---|" + "---|" * len(upstream_gains(result, levels[0]))]
    for lv in levels:
        gains = upstream_gains(result, lv)
        lines.append(f"| {lv} | " + " | ".join(cell(spread(g), 1, 100) for g in gains.values()) + " |")
    held = all(
        r["upstream"]["students"][k][lv][v]["mask_held_exactly"]
        for r in result["runs"]
        for k in UPSTREAM
        for lv in levels
        for v in ("plain", "kd")
    )
    lines += [
        "",
        f"Masked LM: {cfg['mlm_steps']} steps, batch {cfg['mlm_batch_size']}, lr {cfg['mlm_learning_rate']} "
        f"(bench_evidence.py's upstream run); upstream KD at temperature {cfg['upstream_distill_temperature']:g}, "
        f"hardness {cfg['upstream_distill_hardness']:g}, over the masked positions. Transfer: the encoder with the "
        f"seed's BBC head, pruned ({cfg['pruning_method']}), {cfg['finetune_steps']} steps with the mask kept "
        f"(held exactly: {'yes' if held else 'NO'}); KD from the dense upstream model's dense BBC fine-tune at "
        f"temperature {cfg['distill_temperature']:g}, hardness {cfg['distill_hardness']:g}.",
    ]
    return lines


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = []
    if "dense" in result["aggregate"]:
        lines += downstream_lines(result)
    if "upstream" in result["aggregate"]:
        lines += ["", *upstream_lines(result)]
    lines += [
        "",
        f"Whole run: {result['seconds'] / 60:.1f} min on {cfg['threads']} CPU threads"
        + (
            f" (plus {cfg['seconds_merged'] / 60:.1f} min for the levels merged from {cfg['merge_from']})"
            if cfg.get("merge_from")
            else ""
        )
        + ".",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def downstream_lines(result: dict) -> list[str]:
    agg, cfg = result["aggregate"], result["config"]
    lines = [
        "| model | level | " + " | ".join(VARIANTS.values()) + " | KD gain (points) |",
        "|---|---|---|---|---|---|",
    ]
    for key, name in MODELS.items():
        lines.append(f"| {name} | dense | {cell(agg['dense'][key]['accuracy'])} | — | — | — |")
        for level in cfg["levels"]:
            row = agg["students"][key][level]
            cells = [cell(row[v]["accuracy"]) for v in VARIANTS]
            gain = cell(spread(kd_gains(result, key, level)), 1, 100)
            lines.append(f"| {name} | {level} | " + " | ".join(cells) + f" | {gain} |")
    held = all(
        r["students"][k][lv][v]["mask_held_exactly"]
        for r in result["runs"]
        for k in MODELS
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
        + ".",
    ]
    return lines


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        f
        for key, f in (("dense", downstream_panel), ("upstream", upstream_panel))
        if key in result["aggregate"]
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(8.5 * len(panels), 5), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        panel(result, ax)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def downstream_panel(result: dict, ax) -> None:
    agg, cfg = result["aggregate"], result["config"]
    x, labels = level_axis(cfg["levels"])
    colors = {"adamw": "tab:blue", "cram": "tab:red"}
    styles = {"pruned": ":", "plain": "--", "kd": "-"}
    sparsities, patterns = split_levels(cfg["levels"])
    for key, name in MODELS.items():
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
                    yerr=min_max_errors(stats),
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


def upstream_panel(result: dict, ax) -> None:
    agg, cfg = result["aggregate"]["upstream"], result["config"]
    levels = cfg["upstream_levels"]
    bars = [(key, variant) for key in UPSTREAM for variant in ("plain", "kd")]
    width = 0.8 / len(bars)
    for j, (key, variant) in enumerate(bars):
        stats = [agg["students"][key][lv][variant]["accuracy"] for lv in levels]
        ax.bar(
            [i + (j - (len(bars) - 1) / 2) * width for i in range(len(levels))],
            [s["mean"] for s in stats],
            width,
            yerr=min_max_errors(stats),
            capsize=3,
            label=f"{UPSTREAM[key]}: {VARIANTS[variant]}",
        )
    dense = agg["dense_transfer"]["accuracy"]
    ax.axhline(
        dense["mean"], color="black", linewidth=1, label="dense upstream model, dense FT (the KD teacher)"
    )
    lows = [
        agg["students"][k][lv][v]["accuracy"]["min"]
        for k in UPSTREAM
        for lv in levels
        for v in ("plain", "kd")
    ]
    ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.0, dense["max"] + 0.02))
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels(levels)
    ax.set_xlabel("sparsity of the transferred encoder")
    ax.set_ylabel("BBC test accuracy after sparse transfer")
    ax.set_title(
        f"Upstream path: masked LM on Austen (with / without KD), then sparse transfer; seeds {cfg['seeds']}, "
        "bars = min-max",
        fontsize=9,
    )
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7, loc="lower left")


def write_report(result: dict, output_dir: str) -> str:
    runs = result["runs"]
    result["aggregate"] = {}
    if "students" in runs[0]:
        result["aggregate"] = aggregate(
            {"runs": [{k: r[k] for k in ("seed", "dense", "students")} for r in runs]}
        )
    if "upstream" in runs[0]:
        result["aggregate"]["upstream"] = aggregate({"runs": [{"up": r["upstream"]} for r in runs]})["up"]
    return save_report(output_dir, "distill", result, markdown(result), lambda path: plot(result, path))


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return rewrite_report(args.from_json, args.output_dir, write_report)
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()
    data = Data(args, model_path)
    log(f"BBC {data.bbc_sizes}; levels {args.levels}, pruning {args.pruning_method}, seeds {args.seeds}")
    command = " ".join(["python", "benchmarks/bench_distill.py", *(sys.argv[1:] if argv is None else argv)])
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            run = {"seed": seed}
            if not args.skip_downstream:
                run.update(run_seed(args, data, model_path, workdir, seed))
            if args.upstream:
                run["upstream"] = upstream_seed(args, data, model_path, workdir, seed)
            runs.append(run)
    result = {
        "command": command,
        "config": vars(args),
        "data": data.bbc_sizes,
        "runs": runs,
        "seconds": time.time() - t0,
    }
    if args.merge_from:
        merge_earlier(result, args.merge_from)
    table = write_report(result, args.output_dir)
    print(table)
    log(f"done in {result['seconds'] / 60:.1f} min; wrote distill.{{json,md,png}} to {args.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
