#!/usr/bin/env python
"""Masked-LM training (pre-training or continued pre-training) with CrAM.

The flags of transformers' ``examples/pytorch/language-modeling/run_mlm.py`` plus every ``CrAMConfig`` field
(``--cram_rho``, ``--cram_sparsities``, ...), ``--gradual_sparsity`` & co. (gradual magnitude pruning while
training: cubic schedule, mask then held; the saved model gets a ``sparsity_config.json``) and
``--eval_sparsities``. After training, the model is evaluated
dense and one-shot pruned at each level of ``--eval_sparsities`` (default: the training levels): MLM loss,
perplexity and masked-token accuracy, computed at the masked positions only, printed as a table and written
to ``eval_sparsities.json``. ``--distill_teacher_model_name_or_path`` (``--distill_temperature``,
``--distill_hardness``) adds knowledge distillation from a dense masked-LM teacher (typically the model you
start from), at the masked positions only.

    python recipes/run_mlm_cram.py --model_name_or_path bert-base-uncased \\
        --dataset_name wikitext --dataset_config_name wikitext-103-raw-v1 \\
        --do_train --do_eval --output_dir out/bert-cram --cram_rho 0.05 --cram_sparsities 0.5 0.6 0.7 0.8
    python recipes/run_mlm_cram.py recipes/configs/demo_minilm_austen.yaml [--flag value ...]
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import datasets
from transformers import (
    CONFIG_MAPPING,
    MODEL_FOR_MASKED_LM_MAPPING,
    AutoConfig,
    AutoModelForMaskedLM,
    AutoTokenizer,
    HfArgumentParser,
    set_seed,
)

from command_line import parse_args, run_recipe, setup_logging
from cram_hf.checkpoint import check_model_source
from cram_hf.choices import EVAL_MASK_SEED, TABLE_EXTENSIONS, TEXT_EXTENSIONS, builder_for, extension
from cram_hf.compression import parse_levels
from cram_hf.errors import UsageError
from cram_hf.files import check_not_empty
from cram_hf.mlm import CrAMTrainerForMaskedLM, evaluate_mlm
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm
from gradual_pruning import GradualPruningArguments, gradual_pruning_callback
from hub_access import from_the_hub, hub_kwargs
from one_shot_table import evaluate_sparsities
from preflight import last_checkpoint, load_distill_teacher, preflight
from recipe_arguments import EvalPruningArguments, RecipeConfig, check_sample_limits
from recipe_data import limit
from train_and_save import train_and_save

logger = logging.getLogger(__name__)
MODEL_TYPES = tuple(conf.model_type for conf in MODEL_FOR_MASKED_LM_MAPPING.keys())


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None,
        metadata={
            "help": "Checkpoint to start from (Hub id or local path). Leave out to train from scratch."
        },
    )
    model_type: Optional[str] = field(
        default=None, metadata={"help": "When training from scratch, one of: " + ", ".join(MODEL_TYPES)}
    )
    config_overrides: Optional[str] = field(
        default=None,
        metadata={"help": "From scratch only: 'n_embd=10,resid_pdrop=0.2' style config overrides."},
    )
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Config name or path, if not the model's."}
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the model's."}
    )
    cache_dir: Optional[str] = field(
        default=None, metadata={"help": "Where to store downloads from the Hub."}
    )
    model_revision: str = field(default="main", metadata={"help": "Branch, tag or commit of the model."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow custom modelling code from the Hub."}
    )

    def __post_init__(self):
        if self.config_overrides is not None and (self.config_name or self.model_name_or_path):
            raise ValueError(
                "config_overrides: can't be combined with --config_name or --model_name_or_path."
            )
        if self.model_name_or_path is None and self.config_name is None and self.model_type is None:
            raise ValueError(
                "model_name_or_path: give a model (or --config_name/--model_type to train from scratch)."
            )
        if self.model_type is not None and self.model_type not in MODEL_TYPES:
            raise ValueError(
                f"model_type: {self.model_type!r} is not a masked-LM type ({', '.join(MODEL_TYPES)})."
            )
        if self.model_name_or_path:
            check_model_source(self.model_name_or_path, "model_name_or_path")


@dataclass
class DataTrainingArguments(EvalPruningArguments):
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Dataset on the Hub (datasets library)."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Its configuration name."})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "Training text: txt, csv, json or jsonl."}
    )
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "Evaluation text: txt, csv, json or jsonl."}
    )
    text_column_name: Optional[str] = field(
        default=None, metadata={"help": "Column with the text (default: 'text')."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Recompute the preprocessing."})
    validation_split_percentage: int = field(
        default=5,
        metadata={"help": "Share of the train split used for evaluation when there is no validation split."},
    )
    max_seq_length: Optional[int] = field(
        default=None,
        metadata={"help": "Tokens per example after tokenization (default: the tokenizer's max, <= 1024)."},
    )
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes for preprocessing."}
    )
    mlm_probability: float = field(default=0.15, metadata={"help": "Share of tokens masked."})
    line_by_line: bool = field(
        default=False, metadata={"help": "One example per line instead of packed blocks."}
    )
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every batch to max_seq_length."})
    max_train_samples: Optional[int] = field(
        default=None, metadata={"help": "Truncate the training set (debugging)."}
    )
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Truncate the evaluation set."})
    streaming: bool = field(
        default=False, metadata={"help": "Not supported with CrAM evaluation tables; refused."}
    )
    eval_sparsities: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "One-shot levels evaluated after training. Default: the run's CrAM levels (none without CrAM); "
            "'none' for none."
        },
    )

    def __post_init__(self):
        # Not super().__post_init__(): the one check of the pruning spec wants the levels too.
        self.eval_sparsities = (
            None if self.eval_sparsities is None else parse_levels(self.eval_sparsities, "eval_sparsities")
        )
        self.check_pruning(self.eval_sparsities or ())
        check_sample_limits(self)
        if self.streaming:
            raise ValueError(
                "streaming: not supported by this recipe (the one-shot evaluation needs a sized set)."
            )
        if self.dataset_name is None and self.train_file is None and self.validation_file is None:
            raise ValueError("dataset_name: give --dataset_name or --train_file/--validation_file.")
        for name in ("train_file", "validation_file"):
            path = getattr(self, name)
            if path is None:
                continue
            if extension(path) not in TEXT_EXTENSIONS + TABLE_EXTENSIONS:
                raise ValueError(
                    f"{name}: {path!r} must be a {'/'.join(TEXT_EXTENSIONS + TABLE_EXTENSIONS)} file."
                )
            if not os.path.isfile(path):
                raise ValueError(f"{name}: {path!r} does not exist.")
            check_not_empty(path, name)
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability: must be in (0, 1), got {self.mlm_probability}.")
        if not 0 <= self.validation_split_percentage < 100:
            raise ValueError("validation_split_percentage: must be in [0, 100).")
        if self.max_seq_length is not None and self.max_seq_length < 8:
            raise ValueError(f"max_seq_length: must be >= 8, got {self.max_seq_length}.")


def load_raw_datasets(data_args, model_args):
    hub = dict(cache_dir=model_args.cache_dir, token=model_args.token)
    if data_args.dataset_name is not None:
        with from_the_hub(
            "dataset_name",
            data_args.dataset_name,
            "pass text/json/csv files with --train_file/--validation_file",
        ):
            raw = datasets.load_dataset(data_args.dataset_name, data_args.dataset_config_name, **hub)
        if "validation" not in raw and data_args.validation_split_percentage:
            pct = data_args.validation_split_percentage
            raw["validation"] = datasets.load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, split=f"train[:{pct}%]", **hub
            )
            raw["train"] = datasets.load_dataset(
                data_args.dataset_name, data_args.dataset_config_name, split=f"train[{pct}%:]", **hub
            )
        return raw
    files = {}
    if data_args.train_file:
        files["train"] = data_args.train_file
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    builder = builder_for(next(iter(files.values())))
    kwargs = {"keep_linebreaks": True} if builder == "text" else {}
    raw = datasets.load_dataset(builder, data_files=files, **kwargs, **hub)
    if "validation" not in raw and "train" in raw and data_args.validation_split_percentage:
        split = raw["train"].train_test_split(
            test_size=data_args.validation_split_percentage / 100, shuffle=False
        )
        raw["train"], raw["validation"] = split["train"], split["test"]
    return raw


def load_config(model_args):
    common = hub_kwargs(model_args)
    source = model_args.config_name or model_args.model_name_or_path
    if source:
        with from_the_hub("model_name_or_path", source, "pass a local model folder"):
            return AutoConfig.from_pretrained(source, **common)
    config = CONFIG_MAPPING[model_args.model_type]()
    if model_args.config_overrides:
        config.update_from_string(model_args.config_overrides)
    return config


def load_model_and_tokenizer(model_args, config):
    common = hub_kwargs(model_args)
    tokenizer_source = model_args.tokenizer_name or model_args.model_name_or_path
    if tokenizer_source is None:
        raise UsageError("tokenizer_name: training from scratch needs --tokenizer_name.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_source, **common)
    if model_args.model_name_or_path:
        model = AutoModelForMaskedLM.from_pretrained(model_args.model_name_or_path, config=config, **common)
    else:
        logger.info("Training a new model from scratch")
        model = AutoModelForMaskedLM.from_config(config, trust_remote_code=model_args.trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))
    return model, tokenizer


def build_parser() -> HfArgumentParser:
    return HfArgumentParser((ModelArguments, DataTrainingArguments, GradualPruningArguments, RecipeConfig))


def main(argv=None):
    model_args, data_args, gradual_args, training_args = parse_args(build_parser(), argv)

    setup_logging(training_args, logger)

    # Checked before any data or weights are read.
    resume = last_checkpoint(training_args)
    if resume is not None:
        logger.info(f"Checkpoint found at {resume}: resuming from it.")
    config = load_config(model_args)
    data_args.eval_sparsities = preflight(
        training_args,
        gradual_args,
        AutoModelForMaskedLM,
        config,
        data_args.eval_sparsities,
        trust_remote_code=model_args.trust_remote_code,
    )
    teacher = load_distill_teacher(training_args, config, AutoModelForMaskedLM, **hub_kwargs(model_args))

    set_seed(training_args.seed)
    raw = load_raw_datasets(data_args, model_args)
    if training_args.do_train and "train" not in raw:
        raise UsageError("do_train: needs a train split (--train_file or --dataset_name).")
    if training_args.do_eval and "validation" not in raw:
        raise UsageError(
            "do_eval: needs a validation split (--validation_file or --validation_split_percentage)."
        )
    model, tokenizer = load_model_and_tokenizer(model_args, config)
    gradual = gradual_pruning_callback(gradual_args, training_args, model)

    max_seq_length = min(
        data_args.max_seq_length or tokenizer.model_max_length, 1024, tokenizer.model_max_length
    )
    with training_args.main_process_first(desc="dataset map tokenization"):
        tokenized = tokenize_for_mlm(
            raw,
            tokenizer,
            max_seq_length=max_seq_length,
            line_by_line=data_args.line_by_line,
            text_column=data_args.text_column_name,
            num_proc=data_args.preprocessing_num_workers,
            overwrite_cache=data_args.overwrite_cache,
        )
    train_dataset = eval_dataset = None
    if training_args.do_train:
        train_dataset = limit(tokenized["train"], data_args.max_train_samples)
    if training_args.do_eval:
        eval_dataset = limit(tokenized["validation"], data_args.max_eval_samples)

    pad_multiple = (
        8 if (training_args.fp16 or training_args.bf16) and not data_args.pad_to_max_length else None
    )
    collator = ReproducibleMLMCollator(
        tokenizer,
        mlm_probability=data_args.mlm_probability,
        seed=training_args.seed,
        pad_to_multiple_of=pad_multiple,
    )
    trainer = CrAMTrainerForMaskedLM(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=collator,
        callbacks=[gradual] if gradual is not None else None,
        teacher_model=teacher,
    )

    if training_args.do_train:
        train_and_save(trainer, train_dataset, None, model_args.model_name_or_path, gradual, resume=resume)

    if training_args.do_eval:
        # A fixed masking seed: every level is scored on the same masked tokens, those cram-hf sweep scores on.
        eval_collator = ReproducibleMLMCollator(
            tokenizer, mlm_probability=data_args.mlm_probability, seed=EVAL_MASK_SEED
        )

        def evaluate():
            result = evaluate_mlm(
                model,
                eval_dataset,
                eval_collator,
                batch_size=training_args.per_device_eval_batch_size,
                device=training_args.device,
            )
            result.pop("masked_tokens")
            return result

        dense = evaluate()
        metrics = {f"eval_{k}": v for k, v in dense.items()}
        metrics["eval_samples"] = len(eval_dataset)
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        levels = data_args.eval_sparsities
        if levels and trainer.is_world_process_zero():
            evaluate_sparsities(
                evaluate,
                model,
                levels,
                output_dir=training_args.output_dir,
                dense_metrics=dense,
                **data_args.one_shot_pruning(
                    tokenizer, max_seq_length, training_args.cram_targets, training_args.cram_scope
                ),
            )

    if training_args.push_to_hub:
        trainer.push_to_hub(
            finetuned_from=model_args.model_name_or_path, tasks="fill-mask", tags=["cram", "fill-mask"]
        )


if __name__ == "__main__":
    run_recipe(main)
