#!/usr/bin/env python
"""Fine-tune a (possibly pruned, possibly CrAM-trained) model for extractive question answering: SQuAD v1.1,
SQuAD v2.0 or your own data in SQuAD format.

Modelled on transformers' ``examples/pytorch/question-answering/run_qa.py`` (same flags), plus:

* ``--keep_sparsity``: a pruned model keeps its zeros exactly zero while fine-tuning (default: on when the
  model is sparse; ``--keep_sparsity false`` turns it off);
* ``--cram_rho`` / ``--cram_sparsities``: CrAM during fine-tuning (off unless one of them is given);
* ``--gradual_sparsity 0.8`` (``--gradual_start_step``, ``--gradual_end_step``, ``--gradual_update_every``,
  ``--gradual_scope``): gradual magnitude pruning while fine-tuning (cubic schedule, mask then held);
* ``--distill_teacher_model_name_or_path`` (``--distill_temperature``, ``--distill_hardness``): knowledge
  distillation of the start and end logits from a dense QA teacher (checked against the model before any
  data is read);
* ``--eval_sparsities 0.7 0.8 0.9 2:4``: after fine-tuning, one-shot prune at each level and evaluate
  (table printed, ``eval_sparsities.json`` in ``--output_dir``).

Local files: ``--train_file``/``--validation_file``/``--test_file`` in the original nested SQuAD json
(``{"data": [{"paragraphs": [{"context", "qas": [...]}]}]}``), the Hugging Face flat json (``{"data":
[{"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}]}``) or json
lines of such records. Exact match and F1 are computed locally with the official SQuAD normalisation.

    python recipes/run_qa.py --model_name_or_path sparse-bert --dataset_name squad --do_train --do_eval \\
        --max_seq_length 384 --doc_stride 128 --per_device_train_batch_size 12 --learning_rate 3e-5 \\
        --num_train_epochs 2 --output_dir out/squad --eval_sparsities 0.7 0.8 0.9
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import datasets
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoTokenizer,
    set_seed,
)

from command_line import run_recipe, setup_logging
from cram_hf.errors import UsageError, validated
from cram_hf.files import check_not_empty, write_json
from gradual_pruning import gradual_pruning_callback
from hub_access import from_the_hub
from one_shot_table import finetune_one_shot_table
from preflight import load_distill_teacher, preflight_finetune
from recipe_arguments import ModelArguments, check_sample_limits, parse_finetune_args
from recipe_data import limit, padding_collator, window_length
from train_and_save import setup_keep_sparsity, train_and_save
from trainer_qa import QuestionAnsweringTrainer
from utils_qa import (
    ANSWERS,
    CONTEXT,
    QUESTION,
    check_fast_tokenizer,
    load_squad_file,
    postprocess_qa_predictions,
    prepare_train_features,
    prepare_validation_features,
)

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """What data to train and evaluate on, how to window it and how to pick answers."""

    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset, e.g. squad or squad_v2."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "SQuAD-format json/jsonl training file."}
    )
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "SQuAD-format json/jsonl dev file."}
    )
    test_file: Optional[str] = field(
        default=None, metadata={"help": "SQuAD-format json/jsonl file to predict on."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the tokenized datasets."})
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes for tokenization."}
    )
    max_seq_length: int = field(
        default=384,
        metadata={"help": "Window length in tokens (question + context); longer contexts are split."},
    )
    pad_to_max_length: bool = field(
        default=True,
        metadata={"help": "Pad every window to max_seq_length; if false, pad each batch (faster on CPU)."},
    )
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the training examples."}
    )
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the evaluation examples."}
    )
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the prediction examples."}
    )
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "SQuAD v2.0: some questions have no answer."}
    )
    null_score_diff_threshold: float = field(
        default=0.0,
        metadata={
            "help": "v2: answer nothing when the null score exceeds the best span score by more than this."
        },
    )
    doc_stride: int = field(default=128, metadata={"help": "Overlap in tokens between consecutive windows."})
    n_best_size: int = field(default=20, metadata={"help": "Start and end candidates per window."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer in tokens."})

    def __post_init__(self):
        check_sample_limits(self)
        if (
            self.dataset_name is None
            and self.train_file is None
            and self.validation_file is None
            and self.test_file is None
        ):
            raise ValueError("Need either --dataset_name or --train_file/--validation_file/--test_file.")
        for name in ("train_file", "validation_file", "test_file"):
            path = getattr(self, name)
            if path is not None:
                if path.rsplit(".", 1)[-1] not in ("json", "jsonl"):
                    raise ValueError(f"{name}: {path!r} should be a SQuAD-format json or jsonl file.")
                if not os.path.isfile(path):
                    raise ValueError(f"{name}: {path!r} does not exist.")
                check_not_empty(path, name)
        for name in ("doc_stride", "n_best_size", "max_answer_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be at least 1, got {getattr(self, name)}.")
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(
                f"doc_stride ({self.doc_stride}) must be smaller than max_seq_length ({self.max_seq_length})."
            )


def parse_args(argv=None):
    """Flags, or a YAML/JSON config file (same names) optionally followed by flags that override it."""
    return parse_finetune_args(ModelArguments, DataTrainingArguments, argv)


def main(argv=None):
    model_args, data_args, sparse_args, gradual_args, training_args = parse_args(argv)

    setup_logging(training_args, logger)
    common = preflight_finetune(
        model_args, sparse_args, gradual_args, training_args, AutoModelForQuestionAnswering
    )
    teacher = load_distill_teacher(
        training_args,
        model_args.config_name or model_args.model_name_or_path,
        AutoModelForQuestionAnswering,
        **common,
    )
    set_seed(training_args.seed)

    # ---- data, checked before the model is loaded ----
    if data_args.dataset_name is not None:
        with from_the_hub(
            "dataset_name",
            data_args.dataset_name,
            "pass SQuAD-format json files with --train_file/--validation_file",
        ):
            raw_datasets = datasets.load_dataset(
                data_args.dataset_name,
                data_args.dataset_config_name,
                cache_dir=model_args.cache_dir,
                token=model_args.token,
            )
    else:
        raw_datasets = datasets.DatasetDict(
            {
                split: validated(load_squad_file, path)
                for split, path in (
                    ("train", data_args.train_file),
                    ("validation", data_args.validation_file),
                    ("test", data_args.test_file),
                )
                if path is not None
            }
        )
    for split, flag, file_flag in (
        ("train", "do_train", "--train_file"),
        ("validation", "do_eval", "--validation_file"),
        ("test", "do_predict", "--test_file"),
    ):
        if getattr(training_args, flag) and split not in raw_datasets:
            raise UsageError(f"--{flag} needs {split} data: pass {file_flag}.")
    for split, data in raw_datasets.items():
        missing = [c for c in ("id", QUESTION, CONTEXT, ANSWERS) if c not in data.column_names]
        if missing and not (split == "test" and missing == [ANSWERS]):
            raise UsageError(f"The {split} data lacks column(s) {missing} (columns: {data.column_names}).")

    tokenizer = AutoTokenizer.from_pretrained(
        model_args.tokenizer_name or model_args.model_name_or_path, **common
    )
    validated(check_fast_tokenizer, tokenizer)
    max_seq_length = window_length(data_args.max_seq_length, tokenizer, logger)
    if data_args.doc_stride >= max_seq_length:
        raise UsageError(
            f"doc_stride ({data_args.doc_stride}) must be smaller than the window ({max_seq_length})."
        )

    # ---- model ----
    source = model_args.config_name or model_args.model_name_or_path
    with from_the_hub("model_name_or_path", source, "pass a local model folder"):
        config = AutoConfig.from_pretrained(source, **common)
    model = AutoModelForQuestionAnswering.from_pretrained(
        model_args.model_name_or_path, config=config, **common
    )
    keep_sparsity = setup_keep_sparsity(
        model, model_args.model_name_or_path, sparse_args, targets=training_args.cram_targets
    )
    gradual = gradual_pruning_callback(gradual_args, training_args, model, sparse_args)

    windows = dict(
        tokenizer=tokenizer,
        max_seq_length=max_seq_length,
        doc_stride=data_args.doc_stride,
        pad_to_max_length=data_args.pad_to_max_length,
    )

    def featurize(examples, prepare, desc):
        with training_args.main_process_first(desc=desc):
            return examples.map(
                functools.partial(prepare, **windows),
                batched=True,
                remove_columns=examples.column_names,
                num_proc=data_args.preprocessing_num_workers,
                load_from_cache_file=not data_args.overwrite_cache,
                desc=desc,
            )

    train_dataset = eval_examples = eval_dataset = predict_examples = predict_dataset = None
    if training_args.do_train:
        train_examples = limit(raw_datasets["train"], data_args.max_train_samples)
        train_dataset = limit(
            featurize(train_examples, prepare_train_features, "Train windows"), data_args.max_train_samples
        )
    if training_args.do_eval:
        # Examples are truncated, not windows: every kept example keeps all its windows.
        eval_examples = limit(raw_datasets["validation"], data_args.max_eval_samples)
        eval_dataset = featurize(eval_examples, prepare_validation_features, "Validation windows")
    if training_args.do_predict:
        predict_examples = limit(raw_datasets["test"], data_args.max_predict_samples)
        predict_dataset = featurize(predict_examples, prepare_validation_features, "Prediction windows")

    post_process = functools.partial(
        postprocess_qa_predictions,
        version_2_with_negative=data_args.version_2_with_negative,
        n_best_size=data_args.n_best_size,
        max_answer_length=data_args.max_answer_length,
        null_score_diff_threshold=data_args.null_score_diff_threshold,
    )
    trainer = QuestionAnsweringTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        eval_examples=eval_examples,
        processing_class=tokenizer,
        data_collator=padding_collator(tokenizer, data_args.pad_to_max_length, training_args.fp16),
        post_process=post_process,
        version_2_with_negative=data_args.version_2_with_negative,
        callbacks=[c for c in (keep_sparsity, gradual) if c is not None] or None,
        teacher_model=teacher,
    )

    def save_predictions(prefix, predictions, nbest, diffs):
        if not trainer.is_world_process_zero():
            return
        out = training_args.output_dir
        write_json(os.path.join(out, f"{prefix}_predictions.json"), predictions)
        write_json(os.path.join(out, f"{prefix}_nbest_predictions.json"), nbest)
        if data_args.version_2_with_negative:
            write_json(os.path.join(out, f"{prefix}_null_odds.json"), diffs)

    if training_args.do_train:
        train_and_save(trainer, train_dataset, keep_sparsity, model_args.model_name_or_path, gradual)

    if training_args.do_eval:
        logger.info("*** Evaluate ***")
        metrics = trainer.evaluate()
        metrics["eval_samples"] = len(eval_examples)
        save_predictions("eval", *trainer.last_predictions)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if sparse_args.eval_sparsities:
            logger.info("*** One-shot pruning: %s ***", " ".join(sparse_args.eval_sparsities))
            finetune_one_shot_table(
                trainer.evaluate, trainer, sparse_args, training_args, tokenizer, max_seq_length, metrics
            )

    if training_args.do_predict:
        logger.info("*** Predict ***")
        predictions, nbest, diffs, metrics = trainer.predict(predict_dataset, predict_examples)
        save_predictions("predict", predictions, nbest, diffs)
        if metrics:
            metrics["predict_samples"] = len(predict_examples)
            trainer.log_metrics("predict", metrics)
            trainer.save_metrics("predict", metrics)

    return trainer


if __name__ == "__main__":
    run_recipe(main)
