#!/usr/bin/env python
"""CrAM below the two-pass cost: the cost-saving schedules (``cram_interval``, ``cram_probability``) against
full CrAM+ and AdamW — time per optimizer step and one-shot accuracy.

The evidence benchmark's settings (``bench_evidence.py``): MiniLM-L6 fine-tuned on BBC News (100 steps, batch
32, lr 3e-4, CrAM+ rho 0.05 at levels {0.5, 0.6, 0.7, 0.8, 0.9, 2:4}), every run of a seed with the same
head and data order, then pruned one-shot with global magnitude and per-matrix SparseGPT; and (``--upstream``)
the continued masked-LM training on the Austen chapters.

* **Cost**: every setting trains ``--timing_steps`` steps, in ``--timing_rounds`` interleaved rounds, one after
  the other in this one process (BBC, and with ``--upstream`` the masked LM too); time per optimizer step from
  the first step's start to the last one's end, as a ratio to AdamW's of the same round (mean over rounds).
* **Accuracy**: each schedule trains the full run on every seed. AdamW and full CrAM+ are the same runs as the
  evidence benchmark's (same settings and seeds): ``--baselines_from evidence.json`` takes their results from
  it (the settings are checked to match), otherwise they are trained here too.

Timing wants an idle machine, accuracy does not (it is deterministic), so the two can run apart: the timing
alone (``--timing_only``) when the machine is idle, the accuracy runs (``--timing_rounds 0``, in as many
processes as convenient) whenever, then one report from both (``--timing_rounds 0 --timing_from T.json
--accuracy_from A.json B.json``; no training).

Writes ``schedules.json``, ``schedules.md`` and ``schedules.png`` (cost ratio vs 80 % one-shot accuracy; only
when some run has a cost ratio, i.e. a timing ran or was reused) to ``--output_dir``.

    python benchmarks/bench_schedules.py --output_dir benchmarks/results/schedules
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_common.py

import argparse
import json
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

from bench_common import (
    Data,
    StepClock,
    bbc_model,
    downstream,
    log,
    min_max_errors,
    rewrite_report,
    run_args,
    save_figure,
    save_report,
    setup_offline_minilm,
    spread,
    train,
    train_mlm,
    upstream,
)

from cram_hf.schedule import cram_step_due

PRUNERS = ("magnitude/global", "sparsegpt/layer")
ADAMW, FULL = "AdamW", "CrAM+ (every step)"


def schedule_name(interval: int, probability: float) -> str:
    if interval > 1:
        return f"CrAM+ every {interval} steps"
    if probability < 1:
        return f"CrAM+ with probability {probability:g}"
    return FULL


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/results/schedules")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--intervals", type=int, nargs="*", default=[2, 4], help="cram_interval settings.")
    p.add_argument(
        "--probabilities", type=float, nargs="*", default=[0.25, 0.5], help="cram_probability settings."
    )
    p.add_argument("--levels", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"])
    p.add_argument("--cram_rho", type=float, default=0.05)
    p.add_argument("--cram_sparsities", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"])
    p.add_argument("--train_steps", type=int, default=100)
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--max_seq_length", type=int, default=48)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--calibration_samples", type=int, default=128)
    p.add_argument(
        "--upstream",
        action="store_true",
        help="Also the masked-LM runs on Austen (seeds --upstream_seeds).",
    )
    p.add_argument("--upstream_seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--upstream_only",
        action="store_true",
        help="With --upstream: the masked-LM accuracy runs alone (no BBC runs; the BBC timing still runs).",
    )
    p.add_argument("--mlm_steps", type=int, default=120)
    p.add_argument("--mlm_batch_size", type=int, default=16)
    p.add_argument("--mlm_learning_rate", type=float, default=5e-4)
    p.add_argument("--timing_steps", type=int, default=16, help="Steps per setting in each timing round.")
    p.add_argument(
        "--timing_rounds",
        type=int,
        default=2,
        help="0: no timing (e.g. while another job loads the machine).",
    )
    p.add_argument(
        "--skip_baselines",
        action="store_true",
        help="Train the schedules only (AdamW and full CrAM+ to come from --baselines_from later).",
    )
    p.add_argument(
        "--timing_only",
        action="store_true",
        help="Only the timing runs (on an idle machine; the accuracy runs to come from --accuracy_from later).",
    )
    p.add_argument(
        "--accuracy_from",
        nargs="+",
        default=None,
        help="schedules.json files (of --timing_rounds 0 runs) whose accuracy runs to reuse, merged seed by seed: "
        "no accuracy runs here.",
    )
    p.add_argument(
        "--timing_from",
        default=None,
        help="A schedules.json (of a --timing_only run) whose timing to reuse, with --timing_rounds 0.",
    )
    p.add_argument(
        "--baselines_from", default=None, help="An evidence.json whose AdamW and CrAM+ runs to reuse."
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--from_json", default=None, help="Rewrite the report from an earlier run's json.")
    args = p.parse_args(argv)
    for k in args.intervals:
        if k < 2:
            p.error(f"--intervals: each must be an integer >= 2 (1 is full CrAM, always run), got {k}")
    for q in args.probabilities:
        if not 0 < q < 1:
            p.error(f"--probabilities: each must be in (0, 1) (1 is full CrAM, always run), got {q}")
    if args.timing_from and args.timing_rounds:
        p.error("--timing_from: reuses an earlier run's timing, so it needs --timing_rounds 0")
    if args.upstream_only and not args.upstream:
        p.error("--upstream_only: needs --upstream")
    if args.timing_only and (args.accuracy_from or not args.timing_rounds):
        p.error(
            "--timing_only: runs the timing alone, so it needs --timing_rounds >= 1 and no --accuracy_from"
        )
    if args.quick:
        args.train_steps, args.mlm_steps, args.timing_steps, args.timing_rounds = 8, 8, 4, 1
        args.calibration_samples = 16
    # What bench_evidence's Data and run_args read.
    args.pruners, args.save_models, args.finetune_steps, args.finetune_learning_rate = PRUNERS, None, 1, 0.0
    return args


def settings(args) -> list[tuple[str, dict]]:
    """(name, cram options) per run; ``None`` = AdamW."""
    runs = [(ADAMW, None), (FULL, {})]
    runs += [(schedule_name(k, 1.0), {"cram_interval": k}) for k in args.intervals]
    runs += [(schedule_name(1, q), {"cram_probability": q}) for q in args.probabilities]
    return runs


def _timed_run(args, data, model_path, workdir, *, name, options, mlm) -> float:
    """Seconds per optimizer step of one short run (seed 0) of a setting, BBC or the masked LM."""
    clock = StepClock()
    common = dict(cram=options is not None, cram_options=options, callbacks=[clock], steps=args.timing_steps)
    if mlm:
        train_mlm(args, data, model_path, workdir, seed=0, name=name, **common)
    else:
        train(
            bbc_model(data, model_path, 0),
            data.bbc_train,
            data.tokenizer,
            run_args(args, seed=0),
            name=name,
            lr=args.learning_rate,
            workdir=workdir,
            **common,
        )
    return (clock.end - clock.start) / args.timing_steps


def timing(args, data, model_path, workdir) -> dict:
    """Seconds per optimizer step of every setting, trained side by side in interleaved rounds: on BBC in
    ``rounds`` and, with ``--upstream``, on the masked LM in ``upstream_rounds``."""
    out = {"rounds": [], "upstream_rounds": []}
    tasks = [("rounds", False)] + ([("upstream_rounds", True)] if args.upstream else [])
    for r in range(args.timing_rounds):
        for key, mlm in tasks:
            row = {}
            for name, options in settings(args):
                row[name] = _timed_run(
                    args,
                    data,
                    model_path,
                    workdir,
                    name=f"time-{key}-{len(row)}-r{r}",
                    options=options,
                    mlm=mlm,
                )
                log(
                    f"  timing round {r} ({'masked LM' if mlm else 'BBC'}): {name}: {row[name]:.3f} s per step"
                )
            out[key].append(row)
    return out


def baselines(args, path: str) -> dict:
    """AdamW and full CrAM+ per seed from an evidence run with the same settings."""
    with open(path) as f:
        evidence = json.load(f)
    cfg = evidence["config"]
    for key in (
        "train_steps",
        "learning_rate",
        "batch_size",
        "max_seq_length",
        "cram_rho",
        "cram_sparsities",
        "weight_decay",
        "calibration_samples",
        "mlm_steps",
        "mlm_batch_size",
        "mlm_learning_rate",
    ):
        if cfg[key] != getattr(args, key):
            raise SystemExit(
                f"--baselines_from: {path} has {key}={cfg[key]!r}, this run {getattr(args, key)!r}."
            )
    missing = set(args.levels) - set(cfg["levels"])
    if missing:
        raise SystemExit(f"--baselines_from: {path} lacks the levels {sorted(missing)}.")
    runs = {r["seed"]: r for r in evidence["runs"]}
    absent = [s for s in args.seeds if s not in runs]
    if absent:
        raise SystemExit(f"--baselines_from: {path} has no seeds {absent}.")
    return runs


def merge_accuracy(paths: list, known: dict) -> dict:
    """The accuracy rows of earlier ``--timing_rounds 0`` runs, merged seed by seed (a run named in two files
    is an error), with AdamW and full CrAM+ filled in from ``known`` (an evidence run's seeds) where absent."""
    merged = {"downstream": {}, "upstream": {}}
    for path in paths:
        with open(path) as f:
            earlier = json.load(f)
        for exp in merged:
            for row in earlier.get(exp, []):
                runs = merged[exp].setdefault(row["seed"], {})
                twice = set(runs) & set(row["runs"])
                if twice:
                    raise SystemExit(
                        f"--accuracy_from: {path} repeats {sorted(twice)} for {exp} seed {row['seed']}."
                    )
                runs.update(row["runs"])
    for exp, rows in merged.items():
        for seed, runs in rows.items():
            for name, key in ((ADAMW, "adamw"), (FULL, "cram")):
                if name not in runs and seed in known:
                    runs[name] = known[seed][exp][key]
    return {
        exp: [{"seed": seed, "runs": runs} for seed, runs in sorted(rows.items())]
        for exp, rows in merged.items()
    }


def earlier_timing(path: str) -> dict:
    with open(path) as f:
        timing_ = json.load(f)["timing"]
    return {"rounds": timing_["rounds"], "upstream_rounds": timing_.get("upstream_rounds", [])}


def run(args, data, model_path, workdir) -> dict:
    measured = timing(args, data, model_path, workdir)
    out = {"timing": earlier_timing(args.timing_from) if args.timing_from else measured}
    out.update(downstream=[], upstream=[])
    if args.timing_only:
        return out
    known = baselines(args, args.baselines_from) if args.baselines_from else {}
    if args.accuracy_from:
        merged = merge_accuracy(args.accuracy_from, known)
        names = {name for name, _ in settings(args)}
        for exp in ("downstream", "upstream"):
            for row in merged[exp]:
                if set(row["runs"]) != names:
                    raise SystemExit(
                        f"--accuracy_from: {exp} seed {row['seed']} has the runs {sorted(row['runs'])}, this "
                        f"run's settings are {sorted(names)}."
                    )
        return {**out, **merged}
    exps = [] if args.upstream_only else [("downstream", args.seeds)]
    exps += [("upstream", args.upstream_seeds)] if args.upstream else []
    for exp, seeds in exps:
        for seed in seeds:
            row = {"seed": seed, "runs": {}}
            for name, options in settings(args):
                if name in (ADAMW, FULL) and (seed in known or args.skip_baselines):
                    if seed in known:
                        row["runs"][name] = known[seed][exp]["adamw" if name == ADAMW else "cram"]
                    continue
                log(f"seed {seed}: {name}, {exp}")
                common = dict(
                    seed=seed,
                    cram=options is not None,
                    pruners=PRUNERS,
                    cram_options=options,
                    name=f"{exp}-{len(row['runs'])}-s{seed}",
                )
                if exp == "downstream":
                    row["runs"][name] = downstream(
                        args,
                        data,
                        model_path,
                        workdir,
                        steps=args.train_steps,
                        lr=args.learning_rate,
                        rho=args.cram_rho,
                        sparsities=args.cram_sparsities,
                        **common,
                    )
                else:
                    model, row["runs"][name] = upstream(args, data, model_path, workdir, **common)
                    del model
            out[exp].append(row)
    return out


# --- report --------------------------------------------------------------------------------------------------


def summarise(rows: list[dict], levels, rounds: list) -> dict:
    """Per run name: the cost ratio (seconds per step over AdamW's in the same timing round of ``rounds``)
    and, per pruner and level, the accuracy — each as the spread over rounds / seeds."""
    out = {}
    # AdamW and full CrAM+ first, however they were merged in (--accuracy_from with --baselines_from).
    for name in sorted(rows[0]["runs"], key=lambda n: (n != ADAMW, n != FULL)):
        out[name] = {
            "cost_ratio": spread(r[name] / r[ADAMW] for r in rounds) if rounds else None,
            "seconds_per_step": spread(r[name] for r in rounds) if rounds else None,
            "accuracy": {
                p: {
                    lv: spread(r["runs"][name]["oneshot"][p][lv]["accuracy"] for r in rows)
                    for lv in ["dense", *levels]
                }
                for p in PRUNERS
            },
        }
    return out


def best(summary_run: dict, level: str) -> tuple[str, dict]:
    return max(summary_run["accuracy"].items(), key=lambda kv: kv[1][level]["mean"])


def cram_share(name: str, cfg: dict, steps: int, seed: int) -> float:
    """The share of ``steps`` optimizer steps that take the CrAM update under run ``name``'s schedule."""
    options = dict(settings(SimpleNamespace(**cfg)))[name]
    if options is None:
        return 0.0
    schedule = {
        "interval": options.get("cram_interval", 1),
        "probability": options.get("cram_probability", 1.0),
    }
    return statistics.fmean(cram_step_due(t, seed=seed, **schedule) for t in range(steps))


def ratio_cell(summary_run: dict) -> str:
    r = summary_run["cost_ratio"]
    return "—" if r is None else f"{r['mean']:.2f}×"


def table_lines(summary: dict, levels, title: str, cfg: dict) -> list[str]:
    cols = ["dense", *levels]
    lines = [
        f"**{title}** — accuracy with the better of global magnitude / per-matrix SparseGPT at each level "
        "(mean ± std over seeds), and time per optimizer step as a ratio to AdamW's",
        "",
        "| run | time / AdamW's | CrAM steps (timing / training, seed 0) | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for name, s in summary.items():
        cells = []
        for lv in cols:
            pruner, acc = best(s, lv)
            tag = "" if lv == "dense" else (" M" if pruner.startswith("magnitude") else " S")
            cells.append(f"{acc[lv]['mean']:.3f} ± {acc[lv]['std']:.3f}{tag}")
        share = f"{cram_share(name, cfg, cfg['timing_steps'], 0):.0%} / {cram_share(name, cfg, cfg['train_steps'], 0):.0%}"
        lines.append(f"| {name} | {ratio_cell(s)} | {share} | " + " | ".join(cells) + " |")
    lines += ["", "M = global magnitude was the better pruner, S = per-matrix SparseGPT."]
    return lines


def target_lines(summary: dict) -> list[str]:
    """The issue's target: 80 % one-shot within 1 point of full CrAM+ at <= 1.3× AdamW's time per step."""
    full = best(summary[FULL], "0.8")[1]["0.8"]["mean"]
    lines = [
        "| run | time / AdamW's | 80 % (best pruner) | vs full CrAM+ | target met |",
        "|---|---|---|---|---|",
    ]
    for name, s in summary.items():
        acc = best(s, "0.8")[1]["0.8"]["mean"]
        gap = round(100 * (acc - full), 1)
        met = "—"
        if name not in (ADAMW, FULL) and s["cost_ratio"] is not None:
            met = "yes" if s["cost_ratio"]["mean"] <= 1.3 and gap >= -1.0 else "no"
        lines.append(f"| {name} | {ratio_cell(s)} | {acc:.3f} | {gap:+.1f} pts | {met} |")
    return lines


def cost_lines(timing_: dict) -> list[str]:
    """Seconds per optimizer step of every setting and its ratio to AdamW's (mean over the rounds)."""
    tasks = [("BBC", timing_["rounds"]), ("masked LM", timing_.get("upstream_rounds", []))]
    tasks = [(task, rounds) for task, rounds in tasks if rounds]
    if not tasks:
        return []
    lines = [
        "Time per optimizer step (mean ± std over the interleaved rounds), and as a ratio to AdamW's of the same round:",
        "",
        "| run | " + " | ".join(f"{task}: s / step | {task}: / AdamW's" for task, _ in tasks) + " |",
        "|---|" + "---|---|" * len(tasks),
    ]
    for name in tasks[0][1][0]:
        cells = []
        for _, rounds in tasks:
            sec, ratio = spread(r[name] for r in rounds), spread(r[name] / r[ADAMW] for r in rounds)
            cells += [f"{sec['mean']:.3f} ± {sec['std']:.3f}", f"{ratio['mean']:.2f}× ± {ratio['std']:.2f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    cfg, summary = result["config"], result["summary"]
    lines = []
    titles = {
        "downstream": "Downstream (BBC News)",
        "upstream": "Upstream (masked LM on Austen; masked-token accuracy)",
    }
    for exp, title in titles.items():
        if not summary.get(exp):
            continue
        lines += [*table_lines(summary[exp], cfg["levels"], title, cfg), ""]
        if FULL in summary[exp]:  # a --skip_baselines run has none yet
            lines += [
                f"{title.split(' (')[0]} target: 80 % one-shot within 1 point of full CrAM+ at ≤ 1.3× AdamW's "
                "time per step:",
                "",
                *target_lines(summary[exp]),
                "",
            ]
    lines += cost_lines(result["timing"])
    rounds = len(result["timing"]["rounds"])
    lines += [
        "",
        f"Settings: MiniLM-L6, BBC {cfg['train_steps']} steps, batch {cfg['batch_size']}, lr {cfg['learning_rate']}; "
        f"CrAM+ rho {cfg['cram_rho']}, levels {{{', '.join(cfg['cram_sparsities'])}}}; seeds "
        f"{', '.join(map(str, cfg['seeds']))}; time per step from {rounds} interleaved rounds of "
        f"{cfg['timing_steps']} steps per setting"
        + (f" (timing from {cfg['timing_from']})" if cfg.get("timing_from") else "")
        + (f" (accuracy runs from {', '.join(cfg['accuracy_from'])})" if cfg.get("accuracy_from") else "")
        + (f"; AdamW and full CrAM+ accuracy from {cfg['baselines_from']}" if cfg["baselines_from"] else "")
        + (
            f"; masked LM {cfg['mlm_steps']} steps, batch {cfg['mlm_batch_size']}, seeds "
            f"{', '.join(map(str, cfg['upstream_seeds']))}"
            if cfg["upstream"]
            else ""
        )
        + f". Whole run {result['seconds'] / 60:.1f} min on {cfg['threads']} CPU threads.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    panels = [
        (exp, ylabel)
        for exp, ylabel in (
            ("downstream", "BBC test accuracy, one-shot 80 % (better pruner)"),
            ("upstream", "Austen masked-token accuracy, one-shot 80 %"),
        )
        if any(s["cost_ratio"] is not None for s in result["summary"].get(exp, {}).values())
    ]
    if not panels:  # no timing: every point would lack its x, and an empty figure says nothing
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(7.5 * len(panels), 4.8), squeeze=False)
    for ax, (exp, ylabel) in zip(axes[0], panels):
        for name, s in result["summary"][exp].items():
            pruner, acc = best(s, "0.8")
            r = s["cost_ratio"]
            if r is None:
                continue
            ax.errorbar(
                [r["mean"]],
                [acc["0.8"]["mean"]],
                xerr=min_max_errors([r]),
                yerr=min_max_errors([acc["0.8"]]),
                marker="o",
                capsize=3,
                label=f"{name} ({'magnitude' if pruner.startswith('magnitude') else 'SparseGPT'})",
            )
        ax.axvline(1.3, color="gray", linestyle=":", linewidth=1)
        ax.set_xlabel("time per optimizer step / AdamW's (same seed, side by side)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(
        "Cost-saving CrAM schedules: cost vs 80 % one-shot accuracy (bars = min-max over rounds / seeds)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_report(result: dict, output_dir: str) -> str:
    levels = result["config"]["levels"]
    rounds = {"downstream": "rounds", "upstream": "upstream_rounds"}
    result["summary"] = {
        exp: summarise(result[exp], levels, result["timing"].get(key, []))
        for exp, key in rounds.items()
        if result.get(exp)
    }
    return save_report(output_dir, "schedules", result, markdown(result), lambda path: plot(result, path))


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return rewrite_report(args.from_json, args.output_dir, write_report)
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()
    data = Data(args, model_path)
    command = " ".join(["python", "benchmarks/bench_schedules.py", *(sys.argv[1:] if argv is None else argv)])
    with tempfile.TemporaryDirectory() as workdir:
        result = {"command": command, "config": vars(args), **run(args, data, model_path, workdir)}
    result["seconds"] = time.time() - t0
    table = write_report(result, args.output_dir)
    print(table)
    log(f"done in {result['seconds'] / 60:.1f} min; wrote to {args.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
