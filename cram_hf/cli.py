"""``cram-hf``: one-shot pruning, sparsity sweeps and Hub publishing from the command line.

    cram-hf prune MODEL --sparsity 0.7 --output_dir DIR [--scope layer] [--targets RE ...] [--compact]
    cram-hf sweep MODEL [MODEL ...] --validation_file F --task mlm --output_dir DIR
    cram-hf push DIR --repo_id ORG/NAME [--private]

Every argument is checked before a model is loaded or a file written. Heavy imports (torch,
transformers) happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .choices import EVAL_MASK_SEED, SCOPES
from .errors import UsageError, validated
from .pruning_spec import PRUNERS, PruningSpec, calibrated_methods

# ---------------------------------------------------------------------------------------------- parser


def _add_hub_args(p: argparse.ArgumentParser, private_help: str) -> None:
    """``--private`` and ``--token``, shared by ``prune --push_to_hub`` and ``push``."""
    p.add_argument("--private", "--hub_private_repo", dest="private", action="store_true", help=private_help)
    p.add_argument(
        "--token",
        "--hub_token",
        dest="token",
        default=None,
        help="Hub token (default: HF_TOKEN / saved login).",
    )


def _pruners_help() -> str:
    """The registry's pruners, one clause each, read when the parser is built (a pruner registered since is
    offered too)."""
    clauses = [f"{name}: {pruner.help}" for name, pruner in PRUNERS.items()]
    return "; ".join(clauses) + f". {', '.join(calibrated_methods())} need --calibration_file."


def _add_prune_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_name_or_path", metavar="MODEL", help="Local model folder or Hub id.")
    p.add_argument(
        "--sparsity",
        required=True,
        help="Fraction of target weights to zero, in [0, 1) (e.g. 0.7), or an N:M pattern ('2:4', '4:8').",
    )
    p.add_argument(
        "--scope",
        choices=SCOPES,
        default="global",
        help="Magnitude ranking over all targets together (global) or per matrix (layer). Ignored for N:M.",
    )
    p.add_argument(
        "--targets",
        nargs="+",
        default=None,
        metavar="REGEX",
        help="Regexes on parameter names selecting the matrices to prune (default: the Linear weights of "
        "the transformer layers).",
    )
    p.add_argument(
        "--method",
        choices=tuple(PRUNERS),
        default="magnitude",
        help=f"The pruner (default: magnitude). {_pruners_help()}",
    )
    p.add_argument(
        "--calibration_file",
        default=None,
        help="Calibration text for wanda/sparsegpt: a .txt file with one sample per line, or a csv/json/jsonl "
        "file with a text column.",
    )
    p.add_argument("--num_calibration_samples", type=int, default=128, help="Samples drawn from the file.")
    p.add_argument("--max_seq_length", type=int, default=128, help="Calibration samples are cut to this.")
    p.add_argument(
        "--damping", type=float, default=0.01, help="sparsegpt: Hessian damping (x mean diagonal)."
    )
    p.add_argument("--block_size", type=int, default=128, help="sparsegpt: columns per lazy-update block.")
    p.add_argument("--output_dir", required=True, help="Where to write the sparse checkpoint.")
    p.add_argument("--overwrite_output_dir", action="store_true", help="Replace a non-empty --output_dir.")
    p.add_argument(
        "--compact",
        action="store_true",
        help="Store pruned matrices as values + bit mask (smaller; load with cram_hf.load_sparse, "
        "not with plain from_pretrained).",
    )
    p.add_argument(
        "--push_to_hub",
        metavar="REPO",
        default=None,
        help="Also upload the result to this Hub repo (ORG/NAME).",
    )
    _add_hub_args(p, "With --push_to_hub: create the repo private.")


def _add_sweep_args(p: argparse.ArgumentParser) -> None:
    from .sweep_options import DEFAULT_LEVELS, TASKS  # not .sweep: that imports torch

    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="One or more local model folders or Hub ids, compared on one plot.",
    )
    p.add_argument(
        "--validation_file",
        required=True,
        help="Text file (mlm) or csv/json with text and label columns (classification).",
    )
    p.add_argument("--task", choices=TASKS, default="mlm", help="What to evaluate (default: mlm).")
    p.add_argument(
        "--sparsities",
        nargs="+",
        default=list(DEFAULT_LEVELS),
        metavar="LEVEL",
        help=f"Levels to prune at: floats in [0, 1) and/or N:M patterns (default: {' '.join(DEFAULT_LEVELS)}).",
    )
    p.add_argument("--output_dir", required=True, help="Where to write sweep.json, sweep.csv and sweep.png.")
    p.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="Replace a non-empty --output_dir (written whole).",
    )
    p.add_argument(
        "--scope",
        nargs="+",
        choices=SCOPES,
        default=["global"],
        help="Ranking scope: one for every method, or one per --methods entry (e.g. global layer).",
    )
    p.add_argument(
        "--targets", nargs="+", default=None, metavar="REGEX", help="Regexes selecting the matrices to prune."
    )
    p.add_argument(
        "--metric",
        default=None,
        help="Metric to plot: accuracy (default), loss, perplexity (mlm) or f1 (classification).",
    )
    p.add_argument(
        "--model_names", nargs="+", default=None, help="Labels for the models in the table and plot."
    )
    p.add_argument(
        "--max_eval_samples", type=int, default=None, help="Evaluate on at most this many examples."
    )
    p.add_argument("--max_seq_length", type=int, default=128, help="Tokens per example (default: 128).")
    p.add_argument(
        "--batch_size",
        "--per_device_eval_batch_size",
        dest="batch_size",
        type=int,
        default=32,
        help="Evaluation batch size (default: 32).",
    )
    p.add_argument(
        "--line_by_line", action="store_true", help="mlm: one example per line instead of packed blocks."
    )
    p.add_argument(
        "--mlm_probability", type=float, default=0.15, help="mlm: fraction of tokens masked (default: 0.15)."
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["magnitude"],
        choices=tuple(PRUNERS),
        help=f"Pruners to compare, one curve per model and method (default: magnitude). {_pruners_help()}",
    )
    p.add_argument(
        "--calibration_file",
        default=None,
        help="Calibration text for wanda/sparsegpt: .txt (one sample per line) or csv/json with a text column.",
    )
    p.add_argument("--num_calibration_samples", type=int, default=128, help="Calibration samples drawn.")
    p.add_argument("--text_column", default=None, help="Column with the text (default: text / sentence).")
    p.add_argument(
        "--text_pair_column", default=None, help="classification: second text column of a pair task."
    )
    p.add_argument("--label_column", default="label", help="classification: label column (default: label).")
    p.add_argument(
        "--seed",
        type=int,
        default=EVAL_MASK_SEED,
        help="Seed of the MLM masks (the same for every model and level, and as in the recipes' one-shot table).",
    )
    p.add_argument("--disable_tqdm", action="store_true", help="No progress bar.")


def _add_push_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", metavar="DIR", help="A sparse checkpoint folder written by `cram-hf prune`.")
    p.add_argument("--repo_id", required=True, help="Target repository, ORG/NAME.")
    _add_hub_args(p, "Create the repo private.")
    p.add_argument("--commit_message", default=None, help="Commit message of the upload.")
    p.add_argument(
        "--sweep_file",
        default=None,
        help="A sweep.json from `cram-hf sweep`: its table goes into the model card.",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cram-hf",
        description="One-shot pruning, sparsity sweeps and Hub publishing for Transformers models (CrAM).",
    )
    sub = parser.add_subparsers(dest="command", metavar="{prune,sweep,push}", required=True)
    _add_prune_args(
        sub.add_parser(
            "prune",
            help="Prune a model one shot and save a sparse checkpoint.",
            description="Prune MODEL's target weights one shot (magnitude Top-K or N:M) and write an ordinary Hugging Face "
            "checkpoint with exact zeros plus sparsity_config.json.",
        )
    )
    _add_sweep_args(
        sub.add_parser(
            "sweep",
            help="Prune at many levels, evaluate, tabulate and plot.",
            description="Prune a fresh copy of each MODEL at each level, evaluate it on --validation_file, print a table "
            "and write sweep.json, sweep.csv and sweep.png.",
        )
    )
    _add_push_args(
        sub.add_parser(
            "push",
            help="Upload a sparse checkpoint to the Hub with a generated model card.",
            description="Create --repo_id on the Hub (if needed) and upload DIR with a README.md model card generated from "
            "its sparsity_config.json. DIR itself is not modified.",
        )
    )
    return parser


# -------------------------------------------------------------------------------------------- commands


def cmd_prune(args) -> int:
    from .calibration import check_calibration_file
    from .checkpoint import check_model_source, check_output_dir
    from .compression import parse_level
    from .files import check_not_replacing
    from .sweep_options import flag_names

    # Everything checkable without the model, before loading it; the level is parsed once, here.
    level = validated(parse_level, args.sparsity, "--sparsity")
    spec = PruningSpec(
        args.method,
        args.scope,
        args.targets,
        damping=args.damping,
        block_size=args.block_size,
        num_calibration_samples=args.num_calibration_samples,
    )
    validated(
        spec.validate,
        [level],
        calibration=args.calibration_file is not None,
        names=flag_names(levels="--sparsity"),
    )
    calibrated = spec.pruner.calibrated
    if args.max_seq_length < 1:
        raise UsageError(f"--max_seq_length: must be a positive integer, got {args.max_seq_length}.")
    if args.calibration_file is not None:
        if not calibrated:
            raise UsageError(
                f"--calibration_file: only {' and '.join(calibrated_methods())} use calibration data; "
                "add --method."
            )
        validated(check_calibration_file, args.calibration_file, "--calibration_file")
    validated(check_output_dir, args.output_dir, args.overwrite_output_dir, "--overwrite_output_dir")
    validated(check_model_source, args.model_name_or_path)
    validated(check_not_replacing, args.output_dir, [args.model_name_or_path])
    if args.push_to_hub:
        from .hub import HubError, check_push

        try:
            args.token = check_push(args.push_to_hub, args.token)
        except (ValueError, HubError) as err:
            raise UsageError(str(err)) from err

    from .checkpoint import load_pretrained, save_sparse
    from .pruning import prune, validate_pruning

    tokenizer = _load_tokenizer(args.model_name_or_path)
    if tokenizer is None and calibrated:
        raise UsageError(
            f"--calibration_file: --method {args.method} tokenizes it with the model's tokenizer, and "
            f"{args.model_name_or_path!r} has none; save one with the model (tokenizer.save_pretrained(folder))."
        )
    try:
        model = load_pretrained(args.model_name_or_path)
    except OSError as err:  # transformers' message spans lines
        message = " ".join(str(err).split())
        raise UsageError(f"model: could not load {args.model_name_or_path!r}: {message}") from err
    validated(validate_pruning, model, level, spec=spec)  # regexes vs. names, N:M shapes, zeros held
    calibration = None
    if calibrated:
        from .calibration import calibration_batches, fit_seq_length

        args.max_seq_length = fit_seq_length(args.max_seq_length, model.config, "--max_seq_length")
        calibration = validated(
            calibration_batches,
            args.calibration_file,
            tokenizer,
            num_samples=spec.num_calibration_samples,
            max_seq_length=args.max_seq_length,
        )
    report = validated(prune, model, level, spec, calibration=calibration, progress=True)
    if calibration is not None:
        report.method_params["calibration_file"] = os.path.abspath(args.calibration_file)
        report.method_params["num_calibration_samples"] = sum(len(b["input_ids"]) for b in calibration)
        report.method_params["max_seq_length"] = args.max_seq_length
    print(report.summary())
    save_sparse(
        model,
        args.output_dir,
        tokenizer,
        report,
        overwrite=args.overwrite_output_dir,
        compact=args.compact,
        **_base_model(args.model_name_or_path),
    )
    print(f"Saved {'compact ' if args.compact else ''}sparse checkpoint to {args.output_dir}")
    if args.push_to_hub:
        return _push(args.output_dir, args.push_to_hub, args.private, args.token, None)
    return 0


def _load_tokenizer(path: str):
    """The tokenizer saved with the model, or ``None``. A local folder without tokenizer files gets ``None``:
    transformers 5 would build an empty tokenizer (its special tokens only) that maps every word to [UNK]."""
    from transformers import AutoTokenizer

    from .checkpoint import lacks_tokenizer

    if lacks_tokenizer(path):
        logging.getLogger(__name__).warning("No tokenizer saved with the checkpoint %r.", path)
        return None
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        logging.getLogger(__name__).warning("No tokenizer saved with the checkpoint: %s", err)
        return None


def _base_model(path: str) -> dict:
    """``save_sparse``'s ``base_model`` (and whether it is local): the argument itself, or for a local sparse
    checkpoint the base it records, so that re-pruning keeps naming the original model."""
    from .checkpoint import SPARSITY_CONFIG, read_sparsity_config

    if os.path.isfile(os.path.join(path, SPARSITY_CONFIG)):
        record = read_sparsity_config(path)
        if record.get("base_model"):
            return {
                "base_model": record["base_model"],
                "base_model_is_local": bool(record.get("base_model_is_local")),
            }
    return {"base_model": path}


def cmd_sweep(args) -> int:
    from .checkpoint import check_model_source, check_output_dir
    from .files import check_not_replacing
    from .sweep import SweepOptions, check_metric, check_validation_file, run_sweep

    validated(check_validation_file, args.validation_file, args.task)
    validated(check_metric, args.metric, args.task)
    validated(check_output_dir, args.output_dir, args.overwrite_output_dir, "--overwrite_output_dir")
    validated(check_not_replacing, args.output_dir, args.models)
    for name, value in (
        ("--max_eval_samples", args.max_eval_samples),
        ("--max_seq_length", args.max_seq_length),
        ("--batch_size", args.batch_size),
    ):
        if value is not None and value < 1:
            raise UsageError(f"{name}: must be a positive integer, got {value}.")
    if args.model_names and len(args.model_names) != len(args.models):
        raise UsageError(f"--model_names: {len(args.model_names)} names for {len(args.models)} models.")
    for m in args.models:
        validated(check_model_source, m)

    # The levels are parsed once, here; run_sweep and the one-shot loop take them as they are.
    options = validated(
        SweepOptions,
        levels=args.sparsities,
        task=args.task,
        validation_file=args.validation_file,
        scope=args.scope,
        targets=args.targets,
        max_eval_samples=args.max_eval_samples,
        max_seq_length=args.max_seq_length,
        batch_size=args.batch_size,
        metric=args.metric,
        model_names=args.model_names,
        line_by_line=args.line_by_line,
        text_column=args.text_column,
        text_pair_column=args.text_pair_column,
        label_column=args.label_column,
        mlm_probability=args.mlm_probability,
        seed=args.seed,
        methods=args.methods,
        calibration_file=args.calibration_file,
        num_calibration_samples=args.num_calibration_samples,
    )
    record = validated(
        run_sweep, args.models, options, output_dir=args.output_dir, progress=not args.disable_tqdm
    )
    # The table was printed row by row while the sweep ran.
    for w in record["warnings"]:
        print(f"warning: {w}")
    print(f"Wrote sweep.json, sweep.csv and sweep.png to {args.output_dir}")
    return 0


def _push(folder, repo_id, private, token, commit_message, sweep_file=None) -> int:
    from .hub import HubError, push_to_hub

    try:
        url = push_to_hub(
            folder,
            repo_id,
            private=private or None,
            token=token,
            commit_message=commit_message,
            sweep_file=sweep_file,
        )
    except (HubError, ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    print(f"Pushed {folder} to {url}")
    return 0


def cmd_push(args) -> int:
    return _push(args.folder, args.repo_id, args.private, args.token, args.commit_message, args.sweep_file)


COMMANDS = {"prune": cmd_prune, "sweep": cmd_sweep, "push": cmd_push}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        print(f"cram-hf {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
