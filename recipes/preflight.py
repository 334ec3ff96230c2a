"""What a recipe checks before it reads any data or weights, so that a bad argument fails in a second rather
than after tokenizing, and what it loads first. :func:`preflight` runs the checks the three recipes share;
its parts, and the rest:

* :func:`preflight_finetune` — :func:`preflight` for the fine-tuning recipes;
* :func:`eval_levels` — the one-shot levels evaluated after training;
* :func:`check_model_path` — a compact sparse checkpoint is refused while parsing;
* :func:`check_model_fits` — the model can be had, ``--cram_targets`` match it and the N:M levels divide it;
* :func:`last_checkpoint` — the checkpoint a re-run resumes from, refused when written with other CrAM
  settings;
* :func:`load_distill_teacher` — the teacher of ``--distill_teacher_model_name_or_path``, checked against the
  student and loaded before any data is tokenized.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Optional, Sequence

import torch
from torch import nn

from cram_hf.compression import level_name, parse_level
from cram_hf.config import CrAMConfig
from cram_hf.distillation import check_teacher_fits, load_teacher
from cram_hf.errors import UsageError, validated
from gradual_pruning import check_gradual_pruning
from hub_access import from_the_hub, hub_kwargs

if TYPE_CHECKING:
    from gradual_pruning import GradualPruningArguments
    from recipe_arguments import RecipeConfig, SparseTransferArguments

logger = logging.getLogger(__name__)

# What a resumed run must share with the run that wrote the checkpoint: the update, its schedule (which steps
# take it) and what it distils from.
CRAM_SETTINGS = (
    "cram_rho",
    "cram_sparsities",
    "cram_plus",
    "cram_sparse_grad",
    "cram_scope",
    "cram_targets",
    "cram_grad_norm",
    "cram_interval",
    "cram_probability",
    "distill_teacher",
    "distill_temperature",
    "distill_hardness",
)
_CRAM_DEFAULTS = {f.name: f.default for f in fields(CrAMConfig) if f.default is not MISSING}


def preflight(
    training_args: CrAMConfig,
    gradual_args: GradualPruningArguments,
    model_class,
    config,
    eval_sparsities: Optional[Sequence],
    *,
    sparse_args: Optional[SparseTransferArguments] = None,
    model_path=None,
    **hub_kwargs,
) -> list[str]:
    """The checks the three recipes make before any data or weights are read, after parsing: one-shot levels
    need ``--do_eval``, the ``--gradual_*`` flags fit the run (:func:`check_gradual_pruning`), and the model
    fits the targets and levels (:func:`check_model_fits`; ``config`` as it takes it). With ``sparse_args``
    (a fine-tuning recipe), the levels must also be reachable from the zeros of ``model_path`` when they are
    kept. Returns the one-shot levels to evaluate after training (:func:`eval_levels`)."""
    levels = eval_levels(eval_sparsities, training_args)
    if levels and not training_args.do_eval:
        raise UsageError("eval_sparsities: one-shot results need an evaluation set; add --do_eval.")
    check_gradual_pruning(gradual_args, training_args, sparse_args)
    keeps_zeros = sparse_args is not None and sparse_args.keep_sparsity is not False
    check_model_fits(
        config,
        model_class,
        training_args,
        levels,
        kept_zeros_of=model_path if keeps_zeros else None,
        **hub_kwargs,
    )
    return levels


def preflight_finetune(
    model_args,
    sparse_args: SparseTransferArguments,
    gradual_args: GradualPruningArguments,
    training_args,
    model_class,
) -> dict:
    """:func:`preflight` as the fine-tuning recipes call it, for their ``model_args`` (a
    :class:`~recipe_arguments.ModelArguments`) and ``model_class`` (their ``AutoModelFor...``):
    ``sparse_args.eval_sparsities`` becomes the levels to evaluate. Returns the Hub keyword arguments of
    ``model_args`` (:func:`~hub_access.hub_kwargs`) every later load takes."""
    common = hub_kwargs(model_args)
    sparse_args.eval_sparsities = preflight(
        training_args,
        gradual_args,
        model_class,
        model_args.config_name or model_args.model_name_or_path,
        sparse_args.eval_sparsities,
        sparse_args=sparse_args,
        model_path=model_args.model_name_or_path,
        **common,
    )
    return common


def eval_levels(given: Optional[Sequence], args: CrAMConfig) -> list[str]:
    """The one-shot levels a recipe evaluates after training: ``--eval_sparsities`` when given (``none``: no
    table), else the run's CrAM levels — none when CrAM is off or there is no ``--do_eval``. The same rule in
    the three recipes."""
    if given is not None:
        return list(given)
    if not (args.cram_enabled and args.do_eval):
        return []
    return [level_name(level) for level in args.cram_levels]


def check_model_path(path) -> None:
    """Fail early on a *compact* sparse checkpoint: it has no ``model.safetensors``, so ``from_pretrained`` of a
    task class cannot read it."""
    from cram_hf.checkpoint import is_compact

    if path is not None and os.path.isdir(str(path)) and is_compact(path):
        raise ValueError(
            f"model_name_or_path: {path!r} is a compact sparse checkpoint, which only cram_hf.load_sparse reads. "
            "Re-save it in the dense storage first: save_sparse(load_sparse(path), new_path)."
        )


def check_model_fits(
    config,
    model_class,
    args: CrAMConfig,
    eval_levels: Sequence = (),
    *,
    kept_zeros_of: Optional[str] = None,
    **hub_kwargs,
) -> None:
    """Before data or weights are loaded: ``--cram_targets`` match parameters of ``model_class`` built from
    ``config`` (a meta-device skeleton, no weights read) and every N:M level of ``--cram_sparsities`` and
    ``--eval_sparsities`` divides the targets' input dimensions. ``config`` is a config, or the name or path
    ``AutoConfig`` loads it from (with ``hub_kwargs``): a model that cannot be had fails here, first.
    ``kept_zeros_of``: the sparse checkpoint a run starts from and whose zeros it keeps; an
    ``--eval_sparsities`` level below its recorded sparsity cannot be reached after training, and is refused
    now rather than then (:func:`~cram_hf.checkpoint.check_levels_reachable`)."""
    from cram_hf.checkpoint import check_levels_reachable, meta_model
    from cram_hf.pruning import check_levels_fit

    if kept_zeros_of is not None:
        validated(
            check_levels_reachable,
            kept_zeros_of,
            eval_levels,
            args.cram_targets,
            levels_name="eval_sparsities",
        )
    # Read even with nothing to check: a Hub id that cannot be had fails here, first.
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        with from_the_hub("model_name_or_path", config, "pass a local model folder"):
            config = AutoConfig.from_pretrained(config, **hub_kwargs)
    if args.cram_targets is None and not args.cram_sparsities and not eval_levels:
        return  # nothing is pruned and no regex given: the targets are not needed
    skeleton = meta_model(config, model_class, trust_remote_code=hub_kwargs.get("trust_remote_code", False))
    if skeleton is None:
        return
    for levels, name in ((args.cram_sparsities, "cram_sparsities"), (eval_levels, "eval_sparsities")):
        validated(
            check_levels_fit,
            skeleton,
            levels,
            args.cram_targets,
            levels_name=name,
            targets_name="cram_targets",
        )


def last_checkpoint(args: RecipeConfig) -> Optional[str]:
    """The checkpoint a re-run into ``args.output_dir`` resumes from: its last ``checkpoint-N``, or none (no
    ``--do_train``, ``--overwrite_output_dir``, or ``--resume_from_checkpoint`` given). One written with other
    CrAM settings (the update, its schedule or its teacher) is refused: the Trainer would carry on with the old
    run (a finished one: keep its model)."""
    if not args.do_train or args.overwrite_output_dir or args.resume_from_checkpoint is not None:
        return None
    if not os.path.isdir(args.output_dir):
        return None
    checkpoint = _last_complete_checkpoint(args.output_dir)
    changed = _changed_cram_settings(checkpoint, args) if checkpoint is not None else []
    if changed:
        raise UsageError(
            f"output_dir: {checkpoint!r} was trained with other CrAM settings ({'; '.join(changed)}) and "
            "would be resumed with them; pass --overwrite_output_dir to start over, or a new --output_dir."
        )
    return checkpoint


_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def is_complete_checkpoint(folder: str) -> bool:
    """The Trainer writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, so a
    save stopped before it (Ctrl-C, a full disk) leaves a folder without it, which resuming cannot use."""
    return os.path.isfile(os.path.join(folder, "trainer_state.json"))


def _last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The ``checkpoint-N`` of ``output_dir`` with the highest N that was written to the end
    (:func:`is_complete_checkpoint`); incomplete ones after it are passed over, and named on the console."""
    found = sorted(
        (int(m.group(1)), entry)
        for entry in os.listdir(output_dir)
        if (m := _CHECKPOINT_RE.match(entry)) and os.path.isdir(os.path.join(output_dir, entry))
    )
    folders = [os.path.join(output_dir, entry) for _, entry in reversed(found)]
    complete = next((f for f in folders if is_complete_checkpoint(f)), None)
    incomplete = folders[: folders.index(complete)] if complete is not None else folders
    if incomplete:
        logger.warning(
            "output_dir: %s incomplete (no trainer_state.json: its save was interrupted); %s.",
            ", ".join(incomplete),
            f"resuming from {complete}" if complete is not None else "starting from the beginning",
        )
    return complete


def _changed_cram_settings(checkpoint: str, args) -> list[str]:
    """``"name: old -> new"`` for each CrAM setting of the checkpoint's ``training_args.bin`` that ``args``
    changes; nothing when that file cannot be read (the Trainer resumes without it)."""
    from transformers.trainer import TRAINING_ARGS_NAME

    path = os.path.join(checkpoint, TRAINING_ARGS_NAME)
    try:
        # The Trainer pickles its arguments there; the folder is this run's own output.
        old = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - missing, or pickled by another version: nothing to compare
        logger.warning(
            "%s: not readable (%s); its CrAM settings are not compared with this run's.", path, err
        )
        return []
    return [
        f"{name}: {_setting(old, name)!r} -> {_setting(args, name)!r}"
        for name in CRAM_SETTINGS
        if _setting(old, name) != _setting(args, name)
    ]


def _setting(args, name: str):
    # A checkpoint written before a field existed ran with that field's default.
    value = getattr(args, name, _CRAM_DEFAULTS.get(name))
    if name == "cram_sparsities" and value is not None:
        # Canonical names: older versions stored 0.5 where the current one stores "0.5".
        return [level_name(parse_level(v, name)) for v in value]
    return value


def _teacher_hub_kwargs(hub_kwargs: dict) -> dict:
    # --model_revision names a version of the student, not of the teacher.
    return {k: v for k, v in hub_kwargs.items() if k != "revision"}


def load_distill_teacher(args: CrAMConfig, student_config, model_class, **hub_kwargs) -> Optional[nn.Module]:
    """The teacher of ``args.distill_teacher`` for ``CrAMTrainer(teacher_model=...)``, checked and loaded before
    any data is tokenized or the student loaded; ``None`` without one.

    First its config: it must line up with ``student_config`` (a config, or the name or path ``AutoConfig``
    loads it from with ``hub_kwargs``) — vocabulary size, number and order of labels
    (:func:`~cram_hf.distillation.check_teacher_fits`). Then its weights, with ``model_class`` (the recipe's
    ``AutoModelFor...``, so the teacher gets the student's head): a checkpoint without that head's weights is
    refused (:func:`~cram_hf.distillation.load_teacher`)."""
    if args.distill_teacher is None:
        return None
    from transformers import AutoConfig

    name = "distill_teacher (--distill_teacher_model_name_or_path)"
    if isinstance(student_config, (str, os.PathLike)):
        student_config = AutoConfig.from_pretrained(student_config, **hub_kwargs)
    teacher_kwargs = _teacher_hub_kwargs(hub_kwargs)
    with from_the_hub(
        name, args.distill_teacher, "pass the folder of the dense model fine-tuned on this task"
    ):
        teacher_config = AutoConfig.from_pretrained(args.distill_teacher, **teacher_kwargs)
    validated(check_teacher_fits, student_config, teacher_config, name=name)
    return validated(load_teacher, model_class, args.distill_teacher, name=name, **teacher_kwargs)
