#!/usr/bin/env python
"""Fine-tune a (possibly pruned, possibly CrAM-trained) model for sequence classification: GLUE or your own
csv/json data.

Modelled on transformers' ``examples/pytorch/text-classification/run_glue.py`` (same flags), plus:

* ``--keep_sparsity``: a pruned model keeps its zeros exactly zero while fine-tuning (default: on when the
  model is sparse; ``--keep_sparsity false`` turns it off);
* ``--cram_rho`` / ``--cram_sparsities``: CrAM during fine-tuning (off unless one of them is given);
* ``--gradual_sparsity 0.8`` (``--gradual_start_step``, ``--gradual_end_step``, ``--gradual_update_every``,
  ``--gradual_scope``): gradual magnitude pruning while fine-tuning (cubic schedule, mask then held);
* ``--distill_teacher_model_name_or_path`` (``--distill_temperature``, ``--distill_hardness``): knowledge
  distillation from a dense classifier fine-tuned on the same labels, in the same order (checked once the
  labels are read from the data, before tokenizing);
* ``--eval_sparsities 0.5 0.7 0.9 2:4``: after fine-tuning, one-shot prune at each level and evaluate
  (table printed, ``eval_sparsities.json`` in ``--output_dir``).

Metrics are computed locally (``task_metrics.py``, beside this script), so only GLUE's data needs the Hub.

    python recipes/run_glue.py --model_name_or_path sparse-bert --task_name rte --do_train --do_eval \\
        --max_seq_length 128 --per_device_train_batch_size 32 --learning_rate 2e-5 --num_train_epochs 3 \\
        --output_dir out/rte --eval_sparsities 0.7 0.8 0.9

    python recipes/run_glue.py config.yaml --max_steps 10   # a config file (or .json), flags override it
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import datasets
import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EvalPrediction,
    set_seed,
)

from command_line import run_recipe, setup_logging
from cram_hf import CrAMTrainer
from cram_hf.errors import UsageError
from cram_hf.files import check_not_empty, write_text
from cram_hf.metrics import classification_metrics, regression_metrics
from gradual_pruning import gradual_pruning_callback
from hub_access import from_the_hub
from one_shot_table import finetune_one_shot_table
from preflight import load_distill_teacher, preflight_finetune
from recipe_arguments import ModelArguments, check_sample_limits, parse_finetune_args
from recipe_data import limit, padding_collator, window_length
from task_metrics import GLUE_TASKS, glue_metrics
from train_and_save import setup_keep_sparsity, train_and_save

task_to_keys = {
    "cola": ("sentence", None),
    "mnli": ("premise", "hypothesis"),
    "mrpc": ("sentence1", "sentence2"),
    "qnli": ("question", "sentence"),
    "qqp": ("question1", "question2"),
    "rte": ("sentence1", "sentence2"),
    "sst2": ("sentence", None),
    "stsb": ("sentence1", "sentence2"),
    "wnli": ("sentence1", "sentence2"),
}
assert set(task_to_keys) == set(GLUE_TASKS)

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on, and how to tokenize it."""

    task_name: Optional[str] = field(
        default=None, metadata={"help": "GLUE task, loaded from the Hub: " + ", ".join(task_to_keys)}
    )
    train_file: Optional[str] = field(
        default=None, metadata={"help": "csv or json(l) file with the training data."}
    )
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "csv or json(l) file with the dev data."}
    )
    test_file: Optional[str] = field(default=None, metadata={"help": "csv or json(l) file to predict on."})
    text_column_names: Optional[str] = field(
        default=None,
        metadata={
            "help": "Comma-separated text column(s) of your files, one or two (a sentence pair). Default: "
            "sentence1,sentence2 if present, else the first one or two string columns."
        },
    )
    label_column_name: str = field(default="label", metadata={"help": "Label column of your files."})
    max_seq_length: int = field(
        default=128,
        metadata={"help": "Maximum total input length after tokenization; longer inputs are truncated."},
    )
    pad_to_max_length: bool = field(
        default=True,
        metadata={
            "help": "Pad every input to max_seq_length. If false, pad each batch to its longest input "
            "(faster on CPU)."
        },
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized datasets."})
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes for tokenization."}
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the training set."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the evaluation set(s)."}
    )
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the prediction set."}
    )

    def __post_init__(self):
        check_sample_limits(self)
        if self.task_name is not None:
            self.task_name = self.task_name.lower()
            if self.task_name not in task_to_keys:
                raise ValueError(
                    f"task_name: unknown task {self.task_name!r}; choose one of {', '.join(task_to_keys)}, or pass "
                    "--train_file/--validation_file for your own data."
                )
        elif self.train_file is None and self.validation_file is None:
            raise ValueError("Need either --task_name or --train_file/--validation_file.")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is not None:
                if path.rsplit(".", 1)[-1] not in ("csv", "json", "jsonl"):
                    raise ValueError(f"{name}: {path!r} should be a csv, json or jsonl file.")
                if not os.path.isfile(path):
                    raise ValueError(f"{name}: {path!r} does not exist.")
                check_not_empty(path, name)
        if self.max_seq_length < 8:
            raise ValueError(f"max_seq_length: must be at least 8, got {self.max_seq_length}.")


@dataclass
class ClassifierModelArguments(ModelArguments):
    """Which model/config/tokenizer to fine-tune from, and how to read a classifier of another head size."""

    use_fast_tokenizer: bool = field(
        default=True, metadata={"help": "Use a fast (tokenizers-backed) tokenizer."}
    )
    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classification head of a different size."}
    )


def parse_args(argv=None):
    """Flags, or a YAML/JSON config file (same names) optionally followed by flags that override it."""
    return parse_finetune_args(ClassifierModelArguments, DataTrainingArguments, argv)


def pick_text_columns(data_args, raw_datasets) -> tuple[str, Optional[str]]:
    """The one or two text columns; a clear error when the data lacks them."""
    if data_args.task_name is not None and data_args.text_column_names is None:
        return task_to_keys[data_args.task_name]
    split = next(iter(raw_datasets.values()))
    columns = split.column_names
    if data_args.text_column_names is not None:
        names = [c.strip() for c in data_args.text_column_names.split(",") if c.strip()]
        if not 1 <= len(names) <= 2:
            raise UsageError(
                f"text_column_names: give one or two columns, got {data_args.text_column_names!r}."
            )
    elif "sentence1" in columns and "sentence2" in columns:
        names = ["sentence1", "sentence2"]
    else:
        strings = [
            c
            for c in columns
            if c != data_args.label_column_name
            and getattr(split.features[c], "dtype", None) in ("string", "large_string")
        ]
        if not strings:
            raise UsageError(
                f"No text column found: the data has columns {columns} and none of them (apart from the label "
                f"column {data_args.label_column_name!r}) holds text. Pass --text_column_names."
            )
        names = strings[:2]
    for split_name, split_data in raw_datasets.items():
        missing = [c for c in names if c not in split_data.column_names]
        if missing:
            raise UsageError(
                f"text_column_names: column(s) {missing} missing from the {split_name} data (columns: "
                f"{split_data.column_names})."
            )
    return names[0], (names[1] if len(names) > 1 else None)


def main(argv=None):
    model_args, data_args, sparse_args, gradual_args, training_args = parse_args(argv)

    setup_logging(training_args, logger)
    common = preflight_finetune(
        model_args, sparse_args, gradual_args, training_args, AutoModelForSequenceClassification
    )
    set_seed(training_args.seed)

    # ---- data: loaded and checked before the model, so bad inputs fail fast ----
    if data_args.task_name is not None:
        with from_the_hub(
            "task_name", data_args.task_name, "pass csv/json files with --train_file/--validation_file"
        ):
            raw_datasets = datasets.load_dataset(
                "nyu-mll/glue", data_args.task_name, cache_dir=model_args.cache_dir
            )
    else:
        data_files = {}
        for split, path in (
            ("train", data_args.train_file),
            ("validation", data_args.validation_file),
            ("test", data_args.test_file),
        ):
            if path is not None:
                data_files[split] = path
        extension = data_files[next(iter(data_files))].rsplit(".", 1)[-1]
        builder = "csv" if extension == "csv" else "json"
        raw_datasets = datasets.load_dataset(builder, data_files=data_files, cache_dir=model_args.cache_dir)

    validation_split = "validation_matched" if data_args.task_name == "mnli" else "validation"
    needed = (
        ("train", "--do_train", "--train_file"),
        (validation_split, "--do_eval", "--validation_file"),
        ("test_matched" if data_args.task_name == "mnli" else "test", "--do_predict", "--test_file"),
    )
    for split, flag, file_flag in needed:
        if getattr(training_args, flag[2:]) and split not in raw_datasets:
            raise UsageError(f"{flag} needs {split} data: pass {file_flag}.")
    label_column = "label" if data_args.task_name is not None else data_args.label_column_name
    for split in ("train", validation_split):
        if split in raw_datasets and label_column not in raw_datasets[split].column_names:
            raise UsageError(
                f"label_column_name: no column {label_column!r} in the {split} data (columns: "
                f"{raw_datasets[split].column_names})."
            )
    sentence1_key, sentence2_key = pick_text_columns(data_args, raw_datasets)

    labelled = raw_datasets["train"] if "train" in raw_datasets else raw_datasets[validation_split]
    if data_args.task_name is not None:
        is_regression = data_args.task_name == "stsb"
        label_list = None if is_regression else labelled.features["label"].names
    else:
        is_regression = labelled.features[label_column].dtype in ("float32", "float64")
        label_list = None
        if not is_regression:
            values = set()
            for split in ("train", "validation"):
                if split in raw_datasets:
                    values.update(raw_datasets[split].unique(label_column))
            label_list = sorted(values)
    num_labels = 1 if is_regression else len(label_list)

    # ---- model ----
    source = model_args.config_name or model_args.model_name_or_path
    with from_the_hub("model_name_or_path", source, "pass a local model folder"):
        config = AutoConfig.from_pretrained(
            source,
            num_labels=num_labels,
            finetuning_task=data_args.task_name or "text-classification",
            **common,
        )
    if label_list is not None:
        config.label2id = {str(v): i for i, v in enumerate(label_list)}
        config.id2label = {i: str(v) for i, v in enumerate(label_list)}
    # The labels are known only now, from the data: the teacher must have them, in this order.
    teacher = load_distill_teacher(training_args, config, AutoModelForSequenceClassification, **common)
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path,
        use_fast=model_args.use_fast_tokenizer,
        **common,
    )
    model = AutoModelForSequenceClassification.from_pretrained(
        model_args.model_name_or_path,
        config=config,
        ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
        **common,
    )
    keep_sparsity = setup_keep_sparsity(
        model, model_args.model_name_or_path, sparse_args, targets=training_args.cram_targets
    )
    gradual = gradual_pruning_callback(gradual_args, training_args, model, sparse_args)

    label_to_id = None
    if label_list is not None and data_args.task_name is None:
        label_to_id = {v: i for i, v in enumerate(label_list)}

    max_seq_length = window_length(data_args.max_seq_length, tokenizer, logger)
    padding = "max_length" if data_args.pad_to_max_length else False

    def preprocess(examples):
        texts = (
            (examples[sentence1_key],)
            if sentence2_key is None
            else (examples[sentence1_key], examples[sentence2_key])
        )
        result = tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)
        if label_column in examples:
            labels = examples[label_column]
            if label_to_id is not None:
                labels = [label_to_id.get(v, -1) for v in labels]
            elif is_regression:
                labels = [float(v) for v in labels]
            # Named "labels" (what the model takes): datasets would keep the raw column's type under "label".
            result["labels"] = labels
        return result

    with training_args.main_process_first(desc="dataset map pre-processing"):
        raw_datasets = datasets.DatasetDict(
            {
                split: data.map(
                    preprocess,
                    batched=True,
                    num_proc=data_args.preprocessing_num_workers,
                    remove_columns=data.column_names,
                    load_from_cache_file=not data_args.overwrite_cache,
                    desc=f"Running tokenizer on {split}",
                )
                for split, data in raw_datasets.items()
            }
        )

    train_dataset = (
        limit(raw_datasets["train"], data_args.max_train_samples) if training_args.do_train else None
    )
    eval_sets = {}
    if training_args.do_eval:
        if data_args.task_name == "mnli":
            eval_sets["mnli"] = limit(raw_datasets["validation_matched"], data_args.max_eval_samples)
            eval_sets["mnli-mm"] = limit(raw_datasets["validation_mismatched"], data_args.max_eval_samples)
        else:
            eval_sets[data_args.task_name or "validation"] = limit(
                raw_datasets["validation"], data_args.max_eval_samples
            )
    predict_dataset = None
    if training_args.do_predict:
        predict_split = "test_matched" if data_args.task_name == "mnli" else "test"
        predict_dataset = limit(raw_datasets[predict_split], data_args.max_predict_samples)

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.squeeze(preds) if is_regression else np.argmax(preds, axis=1)
        if data_args.task_name is not None:
            result = glue_metrics(data_args.task_name, preds, p.label_ids)
            if len(result) > 1:
                result["combined_score"] = float(np.mean(list(result.values())))
            return result
        if is_regression:
            return regression_metrics(preds, p.label_ids)
        return classification_metrics(preds, p.label_ids, num_labels)

    trainer = CrAMTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=next(iter(eval_sets.values())) if eval_sets else None,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=padding_collator(tokenizer, data_args.pad_to_max_length, training_args.fp16),
        callbacks=[c for c in (keep_sparsity, gradual) if c is not None] or None,
        teacher_model=teacher,
    )

    if training_args.do_train:
        train_and_save(trainer, train_dataset, keep_sparsity, model_args.model_name_or_path, gradual)

    def evaluate_all() -> dict:
        """Every evaluation set (MNLI: matched and mismatched, the latter's keys suffixed ``_mm``)."""
        combined = {}
        for name, dataset in eval_sets.items():
            metrics = trainer.evaluate(eval_dataset=dataset)
            metrics["eval_samples"] = len(dataset)
            if name == "mnli-mm":
                metrics = {k + "_mm": v for k, v in metrics.items()}
            combined.update(metrics)
        return combined

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        dense_metrics = evaluate_all()
        trainer.log_metrics("eval", dense_metrics)
        trainer.save_metrics("eval", dense_metrics)
        if sparse_args.eval_sparsities:
            logger.info("*** One-shot pruning: %s ***", " ".join(sparse_args.eval_sparsities))
            finetune_one_shot_table(
                evaluate_all, trainer, sparse_args, training_args, tokenizer, max_seq_length, dense_metrics
            )

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predict_dataset = predict_dataset.remove_columns(
            [c for c in ("labels",) if c in predict_dataset.column_names]
        )
        predictions = trainer.predict(predict_dataset, metric_key_prefix="predict").predictions
        predictions = predictions[0] if isinstance(predictions, tuple) else predictions
        predictions = np.squeeze(predictions) if is_regression else np.argmax(predictions, axis=1)
        if trainer.is_world_process_zero():
            lines = ["index\tprediction"]
            for index, item in enumerate(np.atleast_1d(predictions)):
                lines.append(f"{index}\t{item:.3f}" if is_regression else f"{index}\t{label_list[int(item)]}")
            name = data_args.task_name or "classification"
            write_text(
                os.path.join(training_args.output_dir, f"predict_results_{name}.txt"), "\n".join(lines) + "\n"
            )

    return trainer


if __name__ == "__main__":
    run_recipe(main)
