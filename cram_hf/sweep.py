"""Sparsity sweep: prune each model at each level (in place, restored exactly), evaluate, tabulate and plot.

The use case is a pruning curve — metric against sparsity — of a CrAM-trained model next to a normally
trained one. Magnitude levels form a line per model; N:M patterns (2:4, 4:8) are drawn as separate,
labelled markers at their sparsity, since they are a different kind of compression.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .calibration import fit_seq_length
from .choices import TABLE_EXTENSIONS, TEXT_EXTENSIONS, builder_for, extension
from .compression import Level, level_name, level_sparsity
from .files import check_not_empty, replacing
from .pruning import (
    check_levels_fit,
    format_one_shot_table,
    one_shot,
    one_shot_table_header,
    one_shot_table_row,
)
from .sweep_options import (  # noqa: F401 - part of this module's interface
    DEFAULT_LEVELS,
    HIGHER_IS_BETTER,
    METRICS,
    TASKS,
    SweepOptions,
)

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- arguments


def check_validation_file(path: str, task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"--task: must be one of {TASKS}, got {task!r}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--validation_file: no such file {path!r}.")
    ext = extension(path)
    allowed = TEXT_EXTENSIONS + TABLE_EXTENSIONS if task == "mlm" else TABLE_EXTENSIONS
    if ext not in allowed:
        raise ValueError(f"--validation_file: {task} needs a {'/'.join(allowed)} file, got {path!r}.")
    check_not_empty(path, "--validation_file")


def check_mlm_probability(mlm_probability: float) -> None:
    if not 0 < mlm_probability < 1:
        raise ValueError(f"--mlm_probability: must be in (0, 1), got {mlm_probability}.")


def check_levels_fit_models(models: Sequence[str], levels: Sequence[Level], task: str, targets=None) -> None:
    """Every level can prune every model (``--targets`` match, N:M divides the input dimensions), checked on
    skeletons built from the configs, before any model is loaded or level evaluated."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

    from .checkpoint import check_levels_reachable, lacks_tokenizer, meta_model

    cls = AutoModelForMaskedLM if task == "mlm" else AutoModelForSequenceClassification
    for path in models:
        if lacks_tokenizer(path):
            raise ValueError(
                f"model: {path!r} has no tokenizer saved with it, and the sweep tokenizes the validation text with "
                "the model's own; save one into the folder (tokenizer.save_pretrained(folder))."
            )
        try:
            config = AutoConfig.from_pretrained(path)
        except OSError as err:  # a Hub id that cannot be fetched; transformers' message spans lines
            raise ValueError(f"model: could not load {path!r}: {' '.join(str(err).split())}") from err
        skeleton = meta_model(config, cls)
        if skeleton is None:
            continue
        try:
            check_levels_fit(skeleton, levels, targets, levels_name="--sparsities", targets_name="--targets")
        except ValueError as err:
            raise ValueError(f"{str(err).rstrip('.')} (model {path!r}).") from None
        check_levels_reachable(path, levels, targets, levels_name="--sparsities")


def check_metric(metric: Optional[str], task: str) -> str:
    metric = metric or "accuracy"
    if metric not in METRICS[task]:
        raise ValueError(f"--metric: {task} reports {METRICS[task]}, got {metric!r}.")
    return metric


def _load_raw(path: str):
    from datasets import load_dataset

    return load_dataset(builder_for(path), data_files=path, split="train")


# ------------------------------------------------------------------------------------------ evaluation


def _pick_column(columns, wanted: Optional[str], candidates: Sequence[str], what: str) -> Optional[str]:
    if wanted:
        if wanted not in columns:
            raise ValueError(f"--{what}_column: {wanted!r} is not a column of the data (columns: {columns}).")
        return wanted
    return next((c for c in candidates if c in columns), None)


def _check_label_column(columns, label_column: str, path: str) -> None:
    if label_column not in columns:
        raise ValueError(f"--label_column: {label_column!r} is not a column of {path} (columns: {columns}).")


def label_ids(labels: list, config) -> list[int]:
    """Labels as class ids: integers as they are; strings through the model's ``label2id`` when it names
    them all, else by sorted order (as transformers' ``run_glue.py`` does)."""
    if all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in labels):
        ids = [int(x) for x in labels]
    else:
        names = [str(x) for x in labels]
        label2id = {str(k): int(v) for k, v in (getattr(config, "label2id", None) or {}).items()}
        if not set(names) <= set(label2id):
            label2id = {name: i for i, name in enumerate(sorted(set(names)))}
            logger.warning(
                "labels: the model's label2id does not name %s; using sorted order %s.",
                sorted(set(names) - set(config.label2id or {}))[:5],
                label2id,
            )
        ids = [label2id[x] for x in names]
    num_labels = int(getattr(config, "num_labels", 0) or 0)
    bad = [i for i in ids if not 0 <= i < num_labels]
    if bad:
        raise ValueError(f"labels: id {bad[0]} is outside the model's {num_labels} classes.")
    return ids


class ClassificationEval:
    """Accuracy, macro-F1 and mean cross-entropy of a sequence-classification model on a csv/json file."""

    def __init__(
        self,
        path: str,
        tokenizer,
        config,
        *,
        max_seq_length: int = 128,
        batch_size: int = 32,
        max_eval_samples: Optional[int] = None,
        text_column: Optional[str] = None,
        text_pair_column: Optional[str] = None,
        label_column: str = "label",
    ):
        raw = _load_raw(path)
        if max_eval_samples is not None:
            raw = raw.select(range(min(max_eval_samples, len(raw))))
        columns = raw.column_names
        text = _pick_column(columns, text_column, ("text", "sentence", "sentence1", "question"), "text")
        if text is None:
            raise ValueError(f"--text_column: no 'text' or 'sentence' column in {path} (columns: {columns}).")
        pair = _pick_column(
            columns, text_pair_column, ("sentence2",) if text == "sentence1" else (), "text_pair"
        )
        _check_label_column(columns, label_column, path)
        if len(raw) == 0:
            raise ValueError(f"--validation_file: {path} has no rows.")
        self.labels = torch.tensor(label_ids(raw[label_column], config))
        texts, pairs = raw[text], raw[pair] if pair else None
        # Tokenize once; every level and every copy of the model reuses the batches.
        self.batches = []
        for start in range(0, len(texts), batch_size):
            stop = start + batch_size
            enc = tokenizer(
                texts[start:stop],
                pairs[start:stop] if pairs else None,
                padding=True,
                truncation=True,
                max_length=max_seq_length,
                return_tensors="pt",
            )
            self.batches.append((dict(enc), self.labels[start:stop]))

    @torch.no_grad()
    def __call__(self, model) -> dict:
        from sklearn.metrics import f1_score

        model.eval()
        device = next(model.parameters()).device
        preds, loss_sum = [], 0.0
        for enc, labels in self.batches:
            logits = model(**{k: v.to(device) for k, v in enc.items()}).logits.float()
            loss_sum += float(torch.nn.functional.cross_entropy(logits, labels.to(device), reduction="sum"))
            preds.append(logits.argmax(-1).cpu())
        pred = torch.cat(preds).numpy()
        gold = self.labels.numpy()
        return {
            "accuracy": float((pred == gold).mean()),
            "f1": float(f1_score(gold, pred, average="macro")),
            "loss": loss_sum / len(gold),
            "samples": int(len(gold)),
        }


class MLMEval:
    """Masked-LM loss, perplexity and accuracy on a text file, with the same masks for every model/level."""

    def __init__(
        self,
        path: str,
        tokenizer,
        *,
        max_seq_length: int = 128,
        batch_size: int = 32,
        max_eval_samples: Optional[int] = None,
        line_by_line: bool = False,
        mlm_probability: float = 0.15,
        seed: int = 0,
        text_column: Optional[str] = None,
    ):
        from .mlm_data import ReproducibleMLMCollator, tokenize_for_mlm

        self.dataset = tokenize_for_mlm(
            _load_raw(path),
            tokenizer,
            max_seq_length=max_seq_length,
            line_by_line=line_by_line,
            text_column=text_column,
        )
        if max_eval_samples is not None:
            self.dataset = self.dataset.select(range(min(max_eval_samples, len(self.dataset))))
        if len(self.dataset) == 0:
            raise ValueError(
                f"--validation_file: {path} yields no block of {max_seq_length} tokens; "
                "use --line_by_line or a smaller --max_seq_length."
            )
        self.collator = ReproducibleMLMCollator(tokenizer, mlm_probability=mlm_probability, seed=seed)
        self.batch_size = batch_size

    def __call__(self, model) -> dict:
        from .mlm import evaluate_mlm

        result = evaluate_mlm(model, self.dataset, self.collator, batch_size=self.batch_size)
        result["samples"] = len(self.dataset)
        return result


# ----------------------------------------------------------------------------------------------- sweep


def model_label(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) or path


def _unique_labels(paths: Sequence[str], names: Optional[Sequence[str]]) -> list[str]:
    if names:
        if len(names) != len(paths):
            raise ValueError(f"--model_names: {len(names)} names for {len(paths)} models.")
        return list(names)
    labels = [model_label(p) for p in paths]
    return [path if labels.count(label) > 1 else label for path, label in zip(paths, labels)]


def label_config(path: str, label_names: Optional[Sequence[str]]) -> dict:
    """``from_pretrained`` overrides that give a checkpoint without a matching classifier the data's classes.

    Only when the data's labels are strings the checkpoint does not name (e.g. an encoder with no head):
    the labels in sorted order, as :func:`label_ids` maps them. A trained head of another size then fails
    loudly in ``from_pretrained`` rather than being scored against the wrong classes.
    """
    from transformers import AutoConfig

    if not label_names:
        return {}
    config = AutoConfig.from_pretrained(path)
    if set(label_names) <= {str(k) for k in (config.label2id or {})}:
        return {}
    names = sorted(label_names)
    return {
        "num_labels": len(names),
        "id2label": dict(enumerate(names)),
        "label2id": {n: i for i, n in enumerate(names)},
    }


def _string_labels(path: str, label_column: str) -> Optional[list[str]]:
    raw = _load_raw(path)
    _check_label_column(raw.column_names, label_column, path)
    values = raw.unique(label_column)
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return None
    return [str(v) for v in values]


def _load_model(path: str, task: str, overrides: Optional[dict] = None):
    """The model for ``task`` and the names of weights the checkpoint lacks (an untrained head): reported,
    not hidden."""
    from transformers import AutoConfig, AutoModelForMaskedLM, AutoModelForSequenceClassification

    from .checkpoint import is_compact, load_sparse

    cls = AutoModelForMaskedLM if task == "mlm" else AutoModelForSequenceClassification
    overrides = overrides or {}
    if os.path.isdir(path) and is_compact(path):
        concrete = cls._model_mapping[type(AutoConfig.from_pretrained(path))]
        model, info = load_sparse(path, concrete, output_loading_info=True, **overrides)
    else:
        model, info = cls.from_pretrained(path, output_loading_info=True, **overrides)
    return model, sorted(info.get("missing_keys") or [])


def run_sweep(
    models: Sequence[str],
    options: SweepOptions,
    *,
    output_dir: Optional[str] = None,
    progress: bool = True,
    print_fn: Callable = print,
) -> dict:
    """Sweep every model over every level of ``options``; write ``sweep.json``, ``sweep.csv`` and
    ``sweep.png`` to ``output_dir`` (if given) and return the sweep record."""
    from transformers import AutoTokenizer

    from .checkpoint import check_writable_dir

    # Everything checkable before a model is loaded or the data read.
    o = options
    levels = o.levels
    metric = check_metric(o.metric, o.task)
    check_validation_file(o.validation_file, o.task)
    if o.task == "mlm":
        check_mlm_probability(o.mlm_probability)
    if output_dir:
        check_writable_dir(output_dir, "--output_dir")
    labels = _unique_labels(models, o.model_names)
    check_levels_fit_models(models, levels, o.task, o.targets)
    # Each row's share of its model's dense metric, when the levels include the dense point (0).
    has_dense = any(not isinstance(lv, tuple) and level_sparsity(lv) == 0 for lv in levels)
    metrics = METRICS[o.task] + (("kept",) if has_dense else ())
    record = {
        "task": o.task,
        "metric": metric,
        "validation_file": os.path.abspath(o.validation_file),
        "levels": [level_name(level) for level in levels],
        "scope": o.scope,
        "targets": o.targets,
        "max_eval_samples": o.max_eval_samples,
        "max_seq_length": o.max_seq_length,
        "methods": list(o.methods),
        "calibration_file": os.path.abspath(o.calibration_file) if o.calibration_file else None,
        "models": [],
        "results": [],
        "warnings": [],
    }
    label_names = _string_labels(o.validation_file, o.label_column) if o.task == "classification" else None
    header = one_shot_table_header(metrics, with_model=True)
    bar = tqdm(
        total=len(models) * len(levels) * len(o.methods), desc="sweep", disable=not progress, unit="level"
    )
    write = bar.write if progress else print_fn
    write(header)
    import datasets

    # datasets' own bars (loading, tokenizing) would break the table into pieces.
    bars_were_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    dense = {}  # model label (· method) -> its dense metric
    try:
        for path, label in zip(models, labels):
            tokenizer = AutoTokenizer.from_pretrained(path)
            overrides = label_config(path, label_names) if o.task == "classification" else {}
            model, missing = _load_model(path, o.task, overrides)
            if missing:
                msg = (
                    f"{label}: {len(missing)} weights are not in the checkpoint and were initialised at random "
                    f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); its scores measure "
                    "an untrained head."
                )
                logger.warning(msg)
                record["warnings"].append(msg)
            seq = fit_seq_length(o.max_seq_length, model.config, "--max_seq_length")
            common = dict(
                max_seq_length=seq,
                batch_size=o.batch_size,
                max_eval_samples=o.max_eval_samples,
                text_column=o.text_column,
            )
            if o.task == "mlm":
                evaluate = MLMEval(
                    o.validation_file,
                    tokenizer,
                    line_by_line=o.line_by_line,
                    mlm_probability=o.mlm_probability,
                    seed=o.seed,
                    **common,
                )
            else:
                evaluate = ClassificationEval(
                    o.validation_file,
                    tokenizer,
                    model.config,
                    label_column=o.label_column,
                    text_pair_column=o.text_pair_column,
                    **common,
                )
            record["models"].append({"name": label, "path": path, "missing_weights": missing})
            bar.set_postfix_str(label)

            def show(row):
                if row["sparsity"] == 0 and row["pattern"] is None:
                    dense.setdefault(row["model"], row[metric])
                if "kept" in metrics and row["model"] in dense:
                    row["kept"] = kept_share(row[metric], dense[row["model"]], metric)
                write(one_shot_table_row(row, metrics, with_model=True))
                bar.update(1)

            calibration = None
            if any(spec.pruner.calibrated for spec in o.specs.values()):
                from .calibration import calibration_batches

                calibration = calibration_batches(
                    o.calibration_file,
                    tokenizer,
                    num_samples=o.num_calibration_samples,
                    max_seq_length=seq,
                    seed=o.seed,
                )
            for method in o.methods:
                name = label if o.methods == ["magnitude"] else f"{label} · {method}"
                if len(set(o.scopes.values())) > 1:
                    name += f" ({SCOPE_NAMES[o.scopes[method]]})"
                spec = o.specs[method]
                # In place, restored bit-exactly after each level: no copy of the model per level.
                record["results"] += one_shot(
                    model,
                    levels,
                    evaluate,
                    spec=spec,
                    label=name,
                    on_row=show,
                    calibration=calibration if spec.pruner.calibrated else None,
                )
            del model
    finally:
        bar.close()
        if bars_were_on:
            datasets.enable_progress_bars()
    if output_dir:
        write_outputs(record, output_dir)
    return record


# --------------------------------------------------------------------------------------------- outputs


SCOPE_NAMES = {"global": "global", "layer": "per matrix"}


def kept_share(value: float, dense: float, metric: str) -> float:
    """How much of the dense model's ``metric`` a pruned model keeps: ``value / dense`` where higher is better,
    ``dense / value`` where lower is (loss, perplexity), so 1.0 is "as good as dense" either way."""
    if HIGHER_IS_BETTER.get(metric, True):
        return value / dense if dense else float("nan")
    return dense / value if value else float("nan")


def _columns(record: dict) -> tuple:
    rows = record["results"]
    return METRICS[record["task"]] + (("kept",) if rows and any("kept" in r for r in rows) else ())


def format_table(record: dict) -> str:
    """The sweep's results as the package's one-shot table (one row per model and level; ``kept``: the share
    of the model's dense metric, when the levels include 0)."""
    return format_one_shot_table(record["results"], _columns(record), with_model=True)


def write_csv(record: dict, path: str) -> None:
    metrics = _columns(record)
    fields = [
        "model",
        "level",
        "pattern",
        "sparsity",
        "achieved_sparsity",
        "model_sparsity",
        *metrics,
        "samples",
        "prune_seconds",
        "eval_seconds",
    ]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for row in record["results"]:
            writer.writerow(row)


def plot_sweep(record: dict, path: str, metric: Optional[str] = None) -> None:
    """Metric vs. sparsity: a line per model through its magnitude levels, N:M patterns as labelled markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = metric or record["metric"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = ["*", "D", "P", "X", "s"]
    models = list(dict.fromkeys(r["model"] for r in record["results"]))
    patterns = sorted({r["pattern"] for r in record["results"] if r["pattern"]})
    for i, name in enumerate(models):
        color = f"C{i}"
        rows = [
            r
            for r in record["results"]
            if r["model"] == name and isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
        ]
        line = sorted((r for r in rows if not r["pattern"]), key=lambda r: r["achieved_sparsity"])
        if line:
            ax.plot(
                [100 * r["achieved_sparsity"] for r in line],
                [r[metric] for r in line],
                "o-",
                color=color,
                label=name,
            )
        for r in (r for r in rows if r["pattern"]):
            idx = patterns.index(r["pattern"])
            # 2:4 and 4:8 share a sparsity (50 %): shrink later markers and stagger labels so both show.
            ax.plot(
                100 * r["achieved_sparsity"],
                r[metric],
                markers[idx % len(markers)],
                color=color,
                markersize=max(14 - 4 * idx, 6),
                markeredgecolor="black",
                linestyle="none",
                label=f"{name} ({r['pattern']})",
                zorder=3 + idx,
            )
            ax.annotate(
                r["pattern"],
                (100 * r["achieved_sparsity"], r[metric]),
                textcoords="offset points",
                xytext=(10, -4) if idx % 2 == 0 else (-32, -4),
                fontsize=9,
                color=color,
            )
    ax.margins(y=0.15)  # room for the N:M labels
    ax.set_xlabel("target sparsity (%)")
    ax.set_ylabel(metric + ("" if HIGHER_IS_BETTER.get(metric, True) else " (lower is better)"))
    methods = record.get("methods") or ["magnitude"]
    scopes = record.get("scope") or "global"
    scopes = [scopes] * len(methods) if isinstance(scopes, str) else scopes
    how = ", ".join(f"{m} {SCOPE_NAMES[s]}" for m, s in zip(methods, scopes))
    ax.set_title(f"One-shot pruning, {record['task']} ({how}; N:M marked apart)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(record: dict, output_dir: str) -> dict:
    """``sweep.json``, ``sweep.csv`` and ``sweep.png`` as the folder ``output_dir`` (replaced whole, like a
    pruned checkpoint): written under a temporary name and moved into place, so an interrupted write leaves
    the folder as it was and no half-written table. Returns their paths."""
    names = {k: f"sweep.{k}" for k in ("json", "csv", "png")}
    with replacing(output_dir, directory=True) as tmp:
        with open(os.path.join(tmp, names["json"]), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        write_csv(record, os.path.join(tmp, names["csv"]))
        plot_sweep(record, os.path.join(tmp, names["png"]))
    return {k: os.path.join(output_dir, name) for k, name in names.items()}
