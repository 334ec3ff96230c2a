#!/usr/bin/env python
"""What would close the evidence benchmark's missed goals? CrAM+ with a calibrated pruner, one lever changed at a
time, three seeds, measured against the same seeds' default runs.

The evidence benchmark (``bench_evidence.py``) misses its goals for CrAM+ with the best pruner at 80 %, 90 % and
2:4 (points below its own dense accuracy; 3-seed means). The levers a user has, each changed alone from that
benchmark's settings (MiniLM-L6 on BBC News, 100 steps, lr 3e-4, CrAM+ rho 0.05 at {0.5, ..., 0.9, 2:4}):

* **training** (new runs, each pruned with SparseGPT per matrix and global at ``--levels``):
  ``2x steps`` — CrAM+ and AdamW both trained twice as long (AdamW at 2x steps is also what the same wall-clock
  as full CrAM+ buys); ``goal levels`` — CrAM+ trained on the goal levels {0.7, 0.8, 0.9, 2:4} only;
  ``rho`` — CrAM+ with ``--lever_rho``.
* **the pruner** (the default-trained models, SparseGPT per matrix at ``--pruner_levels``): damping 0.001 and 0.1
  (default 0.01), block size 32 (default 128), and ``--more_calibration`` training articles as calibration
  (default 128).

The default-trained models come from ``--models_dir`` (``bench_evidence.py --save_models DIR``) when saved
there, else they are trained here the same way; their default-pruner results are recomputed here, so every
comparison is within this run. Writes ``levers.json``, ``levers.md`` and ``levers.png`` to ``--output_dir``
(the report is rewritten after every seed, so a stopped run keeps what it finished).

    python benchmarks/bench_levers.py --models_dir /tmp/evidence_models --output_dir benchmarks/results/levers
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_common.py

import argparse
import json
import sys
import tempfile
import time

from bench_common import (
    GOALS,
    MODELS,
    TRAINING_OPTIONS,
    Data,
    add_evidence_arguments,
    aggregate,
    best_pruner,
    cell,
    dense_model,
    downstream,
    evaluate,
    log,
    paired_differences,
    prune_all,
    pts,
    save_figure,
    save_report,
    setup_offline_minilm,
    spread,
)

from cram_hf.compression import parse_levels

TRAINING_PRUNERS = ("sparsegpt/layer", "sparsegpt/global")
DEFAULT = "defaults"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/results/levers")
    add_evidence_arguments(p, "seeds")
    p.add_argument(
        "--levels", nargs="+", default=["0.7", "0.8", "0.9", "2:4"], help="Levels of the training levers."
    )
    p.add_argument(
        "--pruner_levels", nargs="+", default=["0.8", "0.9", "2:4"], help="Levels of the pruner levers."
    )
    p.add_argument(
        "--goal_levels", nargs="+", default=["0.7", "0.8", "0.9", "2:4"], help="CrAM+ levels, 'goal levels'."
    )
    p.add_argument("--lever_rho", type=float, default=0.1, help="The rho lever (0: leave it out).")
    p.add_argument(
        "--more_calibration", type=int, default=512, help="The calibration lever (0: leave it out)."
    )
    p.add_argument(
        "--models_dir", default=None, help="bench_evidence.py --save_models folder of the default runs."
    )
    add_evidence_arguments(p, "calibration_samples", *TRAINING_OPTIONS)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Smoke run: a data subset and a few steps.")
    p.add_argument(
        "--from_json",
        nargs="+",
        default=None,
        help="Rewrite the report from earlier levers.json files (several: runs of other seeds with the same "
        "settings, e.g. one process per seed, reported together); no training.",
    )
    args = p.parse_args(argv)
    parse_levels(args.levels + args.pruner_levels + args.goal_levels + args.cram_sparsities, "level")
    if args.models_dir is not None and not os.path.isdir(args.models_dir):
        p.error(f"--models_dir: no such folder {args.models_dir!r}")
    if args.more_calibration and args.more_calibration <= args.calibration_samples:
        p.error(
            f"--more_calibration: must exceed --calibration_samples ({args.calibration_samples}), got {args.more_calibration}"
        )
    if args.quick:
        args.train_steps, args.calibration_samples = 8, 16
        args.more_calibration = 32 if args.more_calibration else 0
    # What bench_evidence's Data/run_args and bench_distill's dense_model read.
    args.wait_minutes, args.finetune_steps, args.finetune_learning_rate, args.save_models = 0.0, 1, 0.0, None
    return args


def training_levers(args) -> list[tuple[str, dict]]:
    """(name, changes to the default run) per training lever."""
    levers = [
        ("2x steps", {"steps": 2 * args.train_steps}),
        ("goal levels", {"sparsities": list(args.goal_levels)}),
    ]
    if args.lever_rho:
        levers.append((f"rho {args.lever_rho:g}", {"rho": args.lever_rho}))
    return levers


def pruner_levers(args, data) -> list[tuple[str, dict]]:
    """(name, SparseGPT options) per pruner lever; the first is the default."""
    levers = [
        (DEFAULT, {}),
        ("damping 0.001", {"damping": 0.001}),
        ("damping 0.1", {"damping": 0.1}),
        ("block size 32", {"block_size": 32}),
    ]
    if args.more_calibration:
        more = data.bbc_calibration_batches(args.more_calibration)
        levers.append((f"{args.more_calibration} calibration articles", {"calibration": more}))
    return levers


def sparsegpt_rows(args, data, model, options: dict) -> dict:
    """Dense and per-matrix SparseGPT accuracy at ``--pruner_levels`` with ``options``."""
    options = dict(options)
    calibration = options.pop("calibration", data.bbc_calibration)
    return prune_all(
        model,
        args.pruner_levels,
        ("sparsegpt/layer",),
        lambda m: evaluate(m, data.bbc_batches),
        calibration,
        lambda r: f"accuracy {r['accuracy']:.4f}",
        **options,
    )["oneshot"]["sparsegpt/layer"]


def run_seed(args, data, model_path, workdir, seed) -> dict:
    out = {"seed": seed, "training": {}, "pruner": {}}
    base = dict(
        steps=args.train_steps, lr=args.learning_rate, rho=args.cram_rho, sparsities=args.cram_sparsities
    )
    for key in MODELS:
        model, _ = dense_model(args, data, model_path, workdir, seed=seed, key=key)
        out["training"].setdefault(DEFAULT, {})[key] = prune_all(
            model,
            args.levels,
            TRAINING_PRUNERS,
            lambda m: evaluate(m, data.bbc_batches),
            data.bbc_calibration,
            lambda r: f"accuracy {r['accuracy']:.4f}",
        )
        if key == "cram":
            known = out["training"][DEFAULT]["cram"]["oneshot"]["sparsegpt/layer"]
            for name, options in pruner_levers(args, data):
                if name == DEFAULT and set(args.pruner_levels) <= set(known):  # pruned just above
                    out["pruner"][name] = {lv: known[lv] for lv in ["dense", *args.pruner_levels]}
                    continue
                log(f"seed {seed}: {MODELS[key]}, SparseGPT per matrix, {name}")
                out["pruner"][name] = sparsegpt_rows(args, data, model, options)
        del model
    for name, change in training_levers(args):
        keys = MODELS if "steps" in change else ("cram",)
        for key in keys:
            log(f"seed {seed}: {MODELS[key]}, {name}")
            out["training"].setdefault(name, {})[key] = downstream(
                args,
                data,
                model_path,
                workdir,
                seed=seed,
                cram=key == "cram",
                pruners=TRAINING_PRUNERS,
                name=f"{key}-{name.replace(' ', '')}-s{seed}",
                **{**base, **change},
            )
    return out


# --- report --------------------------------------------------------------------------------------------------


def best_of(agg_model: dict, level: str) -> tuple[str, dict]:
    pruner = best_pruner(agg_model, level)
    return pruner, agg_model["oneshot"][pruner][level]["accuracy"]


def dense_of(agg_model: dict) -> float:
    return agg_model["oneshot"][TRAINING_PRUNERS[0]]["dense"]["accuracy"]["mean"]


def gap_cell(dense: float, stats: dict) -> str:
    return f"{stats['mean']:.3f} ({pts(stats['mean'] - dense)})"


def training_lines(result: dict) -> list[str]:
    agg, levels = result["aggregate"]["training"], result["config"]["levels"]
    lines = [
        "**Training levers** — CrAM+ with the better SparseGPT scope at each level: test accuracy (points below its "
        "own dense accuracy), and the paired difference to AdamW's best at the same steps where AdamW was rerun",
        "",
        "| CrAM+ run | steps | dense | " + " | ".join(levels) + " | CrAM+ − AdamW (same steps) |",
        "|---|---|---|" + "---|" * len(levels) + "---|",
    ]
    for name, models in agg.items():
        cram = models["cram"]
        dense = dense_of(cram)
        cells = [gap_cell(dense, best_of(cram, lv)[1]) for lv in levels]
        versus = "—"
        if "adamw" in models:
            diffs = []
            for lv in levels:
                pair = (best_pruner(models["adamw"], lv), best_pruner(cram, lv))
                d = spread(paired_differences(_as_evidence(result, name), "downstream", lv, "accuracy", pair))
                diffs.append(f"{lv}: {pts(d['mean'])}")
            versus = ", ".join(diffs)
        steps = result["config"]["train_steps"] * (2 if name == "2x steps" else 1)
        lines.append(f"| {name} | {steps} | {dense:.3f} | " + " | ".join(cells) + f" | {versus} |")
    adamw_long = agg.get("2x steps", {}).get("adamw")
    if adamw_long:
        dense = dense_of(adamw_long)
        cells = [gap_cell(dense, best_of(adamw_long, lv)[1]) for lv in levels]
        lines.append(
            f"| (AdamW, 2x steps) | {2 * result['config']['train_steps']} | {dense:.3f} | "
            + " | ".join(cells)
            + " | |"
        )
    return lines


def _as_evidence(result: dict, lever: str) -> dict:
    """The runs of one training lever in bench_evidence's shape, for its paired differences."""
    return {"runs": [{"downstream": r["training"][lever]} for r in result["runs"]]}


def pruner_lines(result: dict) -> list[str]:
    agg, levels = result["aggregate"]["pruner"], result["config"]["pruner_levels"]
    lines = [
        "**Pruner levers** — the default-trained CrAM+ models, SparseGPT per matrix: test accuracy (points below "
        "dense), and the paired change from the default SparseGPT settings",
        "",
        "| SparseGPT setting | " + " | ".join(levels) + " | change vs defaults (points) |",
        "|---|" + "---|" * len(levels) + "---|",
    ]
    for name, rows in agg.items():
        dense = rows["dense"]["accuracy"]["mean"]
        cells = [gap_cell(dense, rows[lv]["accuracy"]) for lv in levels]
        changes = "—"
        if name != DEFAULT:
            diffs = [
                spread(
                    [
                        r["pruner"][name][lv]["accuracy"] - r["pruner"][DEFAULT][lv]["accuracy"]
                        for r in result["runs"]
                    ]
                )
                for lv in levels
            ]
            changes = ", ".join(f"{lv}: {cell(d, 1, 100)}" for lv, d in zip(levels, diffs))
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {changes} |")
    return lines


def goal_lines(result: dict) -> list[str]:
    """Per goal level, the default gap and the best lever's gap (points below CrAM+'s own dense accuracy)."""
    training, pruner = result["aggregate"]["training"], result["aggregate"]["pruner"]
    lines = [
        "Against the goals (CrAM+ with the best pruner, points below its own dense accuracy; means over the seeds):",
        "",
        "| level | goal | defaults | best lever | its gap | met |",
        "|---|---|---|---|---|---|",
    ]
    for lv, goal in GOALS.items():
        candidates = []
        for name, models in training.items():
            if lv in result["config"]["levels"]:
                cram = models["cram"]
                dense = dense_of(cram)
                candidates.append((name, dense - best_of(cram, lv)[1]["mean"]))
        for name, rows in pruner.items():
            if lv in result["config"]["pruner_levels"] and name != DEFAULT:
                candidates.append(
                    (f"SparseGPT {name}", rows["dense"]["accuracy"]["mean"] - rows[lv]["accuracy"]["mean"])
                )
        default = dict(candidates).get(DEFAULT)
        if default is None:
            continue
        name, gap = min(candidates, key=lambda c: c[1])
        met = "yes" if 100 * gap <= goal + 1e-9 else f"no, by {100 * gap - goal:.1f}"
        lines.append(
            f"| {lv} | {goal:g} pts | {100 * default:.1f} pts | {name} | {100 * gap:.1f} pts | {met} |"
        )
    return lines


def seeds_run(result: dict) -> list:
    """The seeds this report covers (a stopped run covers fewer than ``--seeds``)."""
    return [r["seed"] for r in result["runs"]]


def markdown(result: dict) -> str:
    cfg = result["config"]
    lines = [
        *goal_lines(result),
        "",
        *training_lines(result),
        "",
        *pruner_lines(result),
        "",
        f"MiniLM-L6 on BBC News (bench_evidence.py's data and settings: {cfg['train_steps']} steps, lr "
        f"{cfg['learning_rate']}, CrAM+ rho {cfg['cram_rho']} at {{{', '.join(cfg['cram_sparsities'])}}}); mean over "
        f"seeds {seeds_run(result)}, paired differences seed by seed. SparseGPT defaults: damping 0.01, block size 128, "
        f"{cfg['calibration_samples']} calibration articles. Compute: {result['seconds'] / 60:.1f} min in all, "
        f"{cfg['threads']} CPU thread(s) per process.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    panels = (
        (axes[0], result["config"]["levels"], "training levers (better SparseGPT scope)"),
        (axes[1], result["config"]["pruner_levels"], "SparseGPT settings (per matrix)"),
    )
    training, pruner = result["aggregate"]["training"], result["aggregate"]["pruner"]
    curves = [
        (
            name,
            {
                lv: 100 * (best_of(m["cram"], lv)[1]["mean"] - dense_of(m["cram"]))
                for lv in result["config"]["levels"]
            },
        )
        for name, m in training.items()
    ]
    pruner_curves = [
        (
            name,
            {
                lv: 100 * (rows[lv]["accuracy"]["mean"] - rows["dense"]["accuracy"]["mean"])
                for lv in result["config"]["pruner_levels"]
            },
        )
        for name, rows in pruner.items()
    ]
    for (ax, levels, title), series in zip(panels, (curves, pruner_curves)):
        for name, gaps in series:
            ax.plot(range(len(levels)), [gaps[lv] for lv in levels], marker="o", label=name)
        goals = [-GOALS[lv] if lv in GOALS else float("nan") for lv in levels]
        ax.plot(range(len(levels)), goals, color="black", linestyle="--", linewidth=1, label="goal")
        ax.set_xticks(range(len(levels)))
        ax.set_xticklabels(levels)
        ax.set_xlabel("one-shot level")
        ax.set_ylabel("CrAM+ one-shot minus its dense accuracy (points)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(
        f"What moves CrAM+'s one-shot gap, MiniLM-L6 on BBC News; mean over seeds {seeds_run(result)}",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_report(result: dict, output_dir: str) -> str:
    result["aggregate"] = aggregate(
        {"runs": [{k: r[k] for k in ("seed", "training", "pruner")} for r in result["runs"]]}
    )
    return save_report(output_dir, "levers", result, markdown(result), lambda path: plot(result, path))


# Settings that may differ between runs reported together: which seeds, where, and how fast.
PER_PROCESS = ("seeds", "output_dir", "threads", "from_json")


def combined(paths: list) -> dict:
    """The runs of several levers.json files with the same settings, seed by seed, as one result."""
    results = []
    for path in paths:
        with open(path) as f:
            results.append(json.load(f))
    first = results[0]
    for path, other in zip(paths[1:], results[1:]):
        for key, value in first["config"].items():
            if key not in PER_PROCESS and other["config"].get(key) != value:
                raise SystemExit(
                    f"--from_json: {path} has {key}={other['config'].get(key)!r}, {paths[0]} {value!r}."
                )
    runs = sorted((r for res in results for r in res["runs"]), key=lambda r: r["seed"])
    seeds = [r["seed"] for r in runs]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"--from_json: a seed appears twice among {seeds}.")
    return {
        **first,
        "command": " ; ".join(res["command"] for res in results),
        "runs": runs,
        "seconds": sum(res["seconds"] for res in results),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        result = combined(args.from_json)
        print(write_report(result, args.output_dir))
        return result
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()
    data = Data(args, model_path)
    command = " ".join(["python", "benchmarks/bench_levers.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "config": vars(args), "runs": []}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            result["runs"].append(run_seed(args, data, model_path, workdir, seed))
            result["seconds"] = time.time() - t0
            table = write_report(result, args.output_dir)  # after every seed: a stopped run keeps its seeds
    print(table)
    log(f"done in {result['seconds'] / 60:.1f} min; wrote levers.{{json,md,png}} to {args.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
