"""What the recipes (``recipes/run_glue.py``, ``run_qa.py``, ``run_mlm_cram.py``) share: their argument
dataclasses, the checks they make before any work, the training block and the one-shot table.

* :class:`SparseTransferArguments` — ``--keep_sparsity`` and ``--eval_sparsities``;
* :class:`RecipeConfig` — ``CrAMConfig`` with ``--overwrite_output_dir`` and an ``--output_dir`` checked
  while parsing; :func:`last_checkpoint` and :func:`check_model_fits`, the checks before any work (also used
  by ``recipes/run_mlm_cram.py``);
* :class:`FinetuneConfig` — ``RecipeConfig`` whose CrAM is *off* unless ``--cram_rho`` or
  ``--cram_sparsities`` is given (``CrAMConfig`` itself defaults to CrAM on, which suits pre-training, not a
  plain fine-tune);
* :func:`setup_keep_sparsity` — the mask-keeping callback when the model is sparse;
* :func:`load_distill_teacher` (before any data is tokenized) — the teacher of
  ``--distill_teacher_model_name_or_path`` (the ``distill_*`` fields of ``CrAMConfig``);
* :class:`GradualPruningArguments` — ``--gradual_sparsity`` & co., gradual magnitude pruning while training:
  :func:`check_gradual_pruning` (before any work) and :func:`gradual_pruning_callback` (once the model is
  loaded);
* :func:`evaluate_sparsities` — the one-shot loop of :mod:`cram_hf.pruning` on the fine-tuned model, as a
  printed table and ``eval_sparsities.json``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from dataclasses import MISSING, dataclass, field, fields
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .arguments import UsageError, validated
from .calibration import check_calibration_file
from .checkpoint import check_writable_dir, save_finetuned_sparsity_config
from .choices import METHODS, SCOPES, check_choice
from .compression import level_name, parse_level, parse_levels
from .config import DEFAULT_SPARSITIES, CrAMConfig
from .distillation import check_teacher_fits, load_teacher
from .files import write_json
from .gradual import GradualPruningCallback, _sparsity
from .pruning import format_one_shot_table, one_shot, reachable, target_zeros
from .sparse_finetune import KeepSparsityCallback, keep_sparsity_callback, target_sparsity
from .targets import Patterns, target_names

logger = logging.getLogger(__name__)

EVAL_SPARSITIES_FILE = "eval_sparsities.json"
# Trainer bookkeeping that is not a quality metric; left out of the one-shot table.
_CRAM_DEFAULT_RHO = {f.name: f.default for f in fields(CrAMConfig)}["cram_rho"]
_NOT_METRICS = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "_samples",
)
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


@dataclass
class EvalPruningArguments:
    """How the recipes' one-shot table (``--eval_sparsities``) prunes: magnitude, or a calibrated pruner."""

    eval_pruning_method: str = field(
        default="magnitude",
        metadata={
            "help": "Pruner of the one-shot table: magnitude (no data), wanda or sparsegpt (need "
            "--eval_calibration_file).",
            "choices": list(METHODS),
        },
    )
    eval_calibration_file: Optional[str] = field(
        default=None,
        metadata={"help": "Calibration text for wanda/sparsegpt: .txt (one sample per line) or csv/json."},
    )
    eval_num_calibration_samples: int = field(
        default=128, metadata={"help": "Calibration samples drawn from --eval_calibration_file."}
    )

    def __post_init__(self):
        if self.eval_pruning_method not in METHODS:
            raise ValueError(
                f"eval_pruning_method: must be magnitude, wanda or sparsegpt, got {self.eval_pruning_method!r}."
            )
        if self.eval_pruning_method != "magnitude":
            if self.eval_calibration_file is None:
                raise ValueError(
                    f"eval_calibration_file: --eval_pruning_method {self.eval_pruning_method} needs calibration text."
                )
            check_calibration_file(self.eval_calibration_file, "eval_calibration_file")
        if self.eval_num_calibration_samples < 1:
            raise ValueError("eval_num_calibration_samples: must be a positive integer.")

    def pruning_method(self, tokenizer, max_seq_length: int) -> dict:
        """``method`` (and ``calibration`` batches, for a calibrated pruner) for :func:`evaluate_sparsities`."""
        if self.eval_pruning_method == "magnitude":
            return {"method": "magnitude"}
        from .calibration import calibration_batches

        batches = calibration_batches(
            self.eval_calibration_file,
            tokenizer,
            num_samples=self.eval_num_calibration_samples,
            max_seq_length=max_seq_length,
        )
        return {"method": self.eval_pruning_method, "calibration": batches}


@dataclass
class SparseTransferArguments(EvalPruningArguments):
    """Sparse-transfer flags shared by the fine-tuning recipes."""

    keep_sparsity: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Hold the zeros of a pruned model at exactly zero while fine-tuning. Default: on when the model "
            "is sparse (a sparsity_config.json next to it, or >= 1%% exact zeros in its target matrices); "
            "'--keep_sparsity false' turns it off, '--keep_sparsity' (or '--keep_sparsity true') forces it.",
            # A bare flag means true, as for the plain bool flags (HfArgumentParser does that only for those).
            "nargs": "?",
            "const": True,
        },
    )
    eval_sparsities: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "After fine-tuning, prune a copy of the model one-shot at each of these levels (sparsities in "
            "[0, 1) and/or N:M patterns such as 2:4) and evaluate it; writes eval_sparsities.json. Default: the "
            "run's CrAM levels (none without CrAM); 'none' for none.",
            "nargs": "*",
        },
    )
    eval_sparsity_scope: str = field(
        default="global", metadata={"help": "Magnitude ranking for --eval_sparsities: 'global' or 'layer'."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.eval_sparsities is not None:
            self.eval_sparsities = [
                level_name(v) for v in parse_levels(self.eval_sparsities, "eval_sparsities")
            ]
        check_choice(self.eval_sparsity_scope, SCOPES, "eval_sparsity_scope")


GRADUAL_METHOD = "gradual magnitude"  # the "method" of sparsity_config.json for a gradually pruned model
GRADUAL_END_FRACTION = 0.75  # default --gradual_end_step: this share of the run's optimizer steps


@dataclass
class GradualPruningArguments:
    """Gradual magnitude pruning while training, the paper's GMP baseline (what sparseml's GMP modifier does):
    :class:`~cram_hf.gradual.GradualPruningCallback` on the cubic schedule, off unless ``--gradual_sparsity``
    is given.

    The target weights are those of ``--cram_targets`` (default rule when not given). The mask is held from
    each pruning event to the end of training, so it cannot be combined with ``--keep_sparsity false``; a model
    that is already sparse keeps its zeros and must be less sparse than the target. CrAM (``--cram_rho``,
    ``--cram_sparsities``) may be combined with it: its compression levels apply to the gradually pruned
    model (a sparsity at or below the one held compresses nothing more). The saved model gets a
    ``sparsity_config.json`` recording the method and schedule, so loaders and ``--keep_sparsity`` downstream
    treat it as sparse.
    """

    gradual_sparsity: Optional[str] = field(
        default=None,
        metadata={
            "help": "Prune the target weights gradually to this sparsity in (0, 1) while training: cubic schedule "
            "from --gradual_start_step to --gradual_end_step, magnitude pruning every --gradual_update_every "
            "optimizer steps, the mask held to the end. Not given: off. N:M patterns are refused."
        },
    )
    gradual_start_step: int = field(
        default=0,
        metadata={"help": "Optimizer step of the first pruning event (0: before the first step)."},
    )
    gradual_end_step: Optional[int] = field(
        default=None,
        metadata={
            "help": "Optimizer step at which --gradual_sparsity is reached (the last event), at most the run's "
            "total. Default: 75%% of the run's total optimizer steps, rounded down (from --max_steps, or "
            "--num_train_epochs x the optimizer steps per epoch, known when training starts)."
        },
    )
    gradual_update_every: int = field(
        default=10, metadata={"help": "Optimizer steps between pruning events inside the window."}
    )
    gradual_scope: str = field(
        default="global",
        metadata={"help": "Magnitude ranking of each event: 'global' (all targets together) or 'layer'."},
    )

    def __post_init__(self):
        if self.gradual_sparsity is None:
            for f in fields(self):
                if f.name != "gradual_sparsity" and getattr(self, f.name) != f.default:
                    raise ValueError(
                        f"{f.name}: has no effect without --gradual_sparsity (gradual pruning is off)."
                    )
            return
        self.gradual_sparsity = _sparsity(self.gradual_sparsity, "gradual_sparsity")
        if self.gradual_sparsity <= 0:
            raise ValueError(
                "gradual_sparsity: must be > 0 (0 prunes nothing); leave the flag out for no gradual pruning."
            )
        for name, minimum in (("gradual_start_step", 0), ("gradual_update_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name}: must be an integer >= {minimum}, got {value!r}.")
        end = self.gradual_end_step
        if end is not None and (
            isinstance(end, bool) or not isinstance(end, int) or end <= self.gradual_start_step
        ):
            raise ValueError(
                f"gradual_end_step: must be an optimizer step after --gradual_start_step "
                f"({self.gradual_start_step}), got {end!r}."
            )
        check_choice(self.gradual_scope, SCOPES, "gradual_scope")


@dataclass
class RecipeConfig(CrAMConfig):
    """``CrAMConfig`` for the recipes: ``--output_dir`` is refused while parsing when it could not be written,
    and ``--overwrite_output_dir`` exists on every transformers version (5.x dropped it)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train from scratch in an --output_dir that holds checkpoints of an earlier run, "
            "instead of resuming the last one (run_mlm_cram.py resumes by default)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_writable_dir(self.output_dir)
        resume = self.resume_from_checkpoint
        if isinstance(resume, str) and os.path.isdir(resume) and not _is_complete_checkpoint(resume):
            raise ValueError(
                f"resume_from_checkpoint: {resume!r} is incomplete (no trainer_state.json: its save was "
                "interrupted); give an earlier checkpoint-N of that run."
            )


@dataclass
class FinetuneConfig(RecipeConfig):
    """``RecipeConfig`` for fine-tuning: CrAM is off unless asked for.

    Neither ``cram_rho`` nor ``cram_sparsities`` given: plain fine-tuning (ρ = 0, no levels). Only one given:
    the other takes ``CrAMConfig``'s default (ρ = 0.05, levels 0.5/0.6/0.7/0.8), so ``--cram_rho 0.05`` or
    ``--cram_sparsities 0.5 0.7 2:4`` alone switches CrAM+ on.
    """

    cram_rho: Optional[float] = field(
        default=None,
        metadata={
            "help": "CrAM perturbation radius ρ >= 0. Not given: CrAM off, unless --cram_sparsities is given "
            "(then ρ = 0.05)."
        },
    )
    cram_sparsities: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "CrAM compression levels (sparsities in [0, 1) and/or N:M such as 2:4). Not given: none, unless "
            "--cram_rho > 0 is given (then 0.5 0.6 0.7 0.8).",
            "nargs": "*",
        },
    )

    def __post_init__(self):
        if self.cram_sparsities is not None:  # "--cram_sparsities none": explicitly none
            self.cram_sparsities = [
                level_name(v) for v in parse_levels(self.cram_sparsities, "cram_sparsities")
            ]
        rho_given, levels_given = self.cram_rho is not None, self.cram_sparsities is not None
        if not rho_given:
            self.cram_rho = _CRAM_DEFAULT_RHO if levels_given and self.cram_sparsities else 0.0
        if not levels_given:
            rho = self.cram_rho
            try:
                on = float(rho) > 0
            except (TypeError, ValueError):
                on = False  # let CrAMConfig report the bad value
            self.cram_sparsities = list(DEFAULT_SPARSITIES) if rho_given and on else []
        super().__post_init__()


_CRAM_DEFAULTS = {f.name: f.default for f in fields(CrAMConfig) if f.default is not MISSING}


def hub_offline() -> bool:
    """Whether offline mode is on for the Hub or for datasets (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@contextlib.contextmanager
def from_the_hub(flag: str, name: Optional[str], instead: str):
    """A block that loads ``name`` (given as ``flag``) from the Hub or its cache: a failure to fetch it — offline
    mode on, no network, no such repository — becomes one line naming the flag and what to pass ``instead``
    (local files or a folder). Errors of local files (missing, unreadable) keep their own message."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise
    except OSError as err:  # ConnectionError included; transformers raises OSError for what it cannot fetch
        if hub_offline():
            why = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
        else:
            why = "it could not be fetched from the Hub (" + " ".join(str(err).split())[:200] + ")"
        raise UsageError(f"{flag}: {name!r}: {why}; {instead}.") from err


def eval_levels(given: Optional[Sequence], args: CrAMConfig) -> list[str]:
    """The one-shot levels a recipe evaluates after training: ``--eval_sparsities`` when given (``none``: no
    table), else the run's CrAM levels — none when CrAM is off or there is no ``--do_eval``. The same rule in
    the three recipes."""
    if given is not None:
        return list(given)
    if not (args.cram_enabled and args.do_eval):
        return []
    return [level_name(level) for level in args.cram_levels]


def check_sample_limits(args) -> None:
    """Every ``max_*_samples`` field of a recipe's data arguments is unset or a positive integer: 0 would
    train on no example (the sampler fails mid-run) or evaluate on none."""
    for f in fields(args):
        value = getattr(args, f.name)
        if f.name.startswith("max_") and f.name.endswith("_samples") and value is not None and value < 1:
            raise ValueError(
                f"{f.name}: must be a positive number of examples, got {value}; leave it out for all."
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


def _is_complete_checkpoint(folder: str) -> bool:
    """The Trainer writes ``trainer_state.json`` after the weights, optimizer, scheduler and RNG states, so a
    save stopped before it (Ctrl-C, a full disk) leaves a folder without it, which resuming cannot use."""
    return os.path.isfile(os.path.join(folder, "trainer_state.json"))


def _last_complete_checkpoint(output_dir: str) -> Optional[str]:
    """The ``checkpoint-N`` of ``output_dir`` with the highest N that was written to the end
    (:func:`_is_complete_checkpoint`); incomplete ones after it are passed over, and named on the console."""
    found = sorted(
        (int(m.group(1)), entry)
        for entry in os.listdir(output_dir)
        if (m := _CHECKPOINT_RE.match(entry)) and os.path.isdir(os.path.join(output_dir, entry))
    )
    folders = [os.path.join(output_dir, entry) for _, entry in reversed(found)]
    complete = next((f for f in folders if _is_complete_checkpoint(f)), None)
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
    from .checkpoint import check_levels_reachable, meta_model
    from .pruning import check_levels_fit

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


def setup_keep_sparsity(
    model: nn.Module, model_path, args: SparseTransferArguments, targets: Patterns = None
) -> Optional[KeepSparsityCallback]:
    """The mask-keeping callback for ``model`` (loaded from ``model_path``), per ``--keep_sparsity``."""
    return keep_sparsity_callback(model, model_path, targets=targets, keep=args.keep_sparsity)


def gradual_end_step(end_step: Optional[int], start_step: int, total_steps: int) -> int:
    """``--gradual_end_step``, or its default ``⌊0.75 · total_steps⌋``, checked against a run of ``total_steps``
    optimizer steps: after ``start_step``, and not after the last step (the model would miss its target)."""
    if end_step is None:
        end_step = int(total_steps * GRADUAL_END_FRACTION)
        if end_step <= start_step:
            raise UsageError(
                f"gradual_end_step: the default, 75 % of the run's {total_steps} optimizer steps, is {end_step}, "
                f"not after --gradual_start_step {start_step}; give --gradual_end_step (<= {total_steps})."
            )
    elif end_step > total_steps:
        raise UsageError(
            f"gradual_end_step: {end_step} is after the run's last optimizer step ({total_steps}), so the model "
            "would not reach --gradual_sparsity; lower it or train longer."
        )
    return end_step


class RecipeGradualPruningCallback(GradualPruningCallback):
    """:class:`GradualPruningCallback` as the recipes build it: ``end_step=None`` stands for the default,
    resolved by :func:`gradual_end_step` at ``on_train_begin`` from ``state.max_steps`` (the Trainer's own
    count of the run's optimizer steps, also for a run given in epochs), and an end step after the run's last
    step is an error there instead of a warning."""

    def __init__(self, target, start_step: int, end_step: Optional[int], update_every: int, **kwargs):
        self.default_end_step = end_step is None
        # A placeholder until the run's length is known; every other argument is checked now.
        super().__init__(
            target, start_step, start_step + 1 if end_step is None else end_step, update_every, **kwargs
        )

    def on_train_begin(self, args, state, control, **kwargs):
        total = getattr(state, "max_steps", 0) or 0
        if total > 0:
            end = None if self.default_end_step else self.end_step
            self.end_step = gradual_end_step(end, self.start_step, total)
        super().on_train_begin(args, state, control, **kwargs)


def check_gradual_pruning(
    gradual: GradualPruningArguments, args, sparse_args: Optional[SparseTransferArguments] = None
) -> None:
    """What ``--gradual_*`` needs of the other flags, before any data or model work: ``--do_train``, the mask
    held (not ``--keep_sparsity false``) and, when ``--max_steps`` fixes the run's length, a window inside it.
    Nothing when gradual pruning is off."""
    if gradual.gradual_sparsity is None:
        return
    if not args.do_train:
        raise UsageError("gradual_sparsity: gradual pruning happens while training; add --do_train.")
    if sparse_args is not None and sparse_args.keep_sparsity is False:
        raise UsageError(
            "gradual_sparsity: gradual pruning holds the weights it prunes at zero; it cannot be combined with "
            "--keep_sparsity false."
        )
    if args.max_steps > 0:
        gradual_end_step(gradual.gradual_end_step, gradual.gradual_start_step, args.max_steps)


def gradual_pruning_callback(
    gradual: GradualPruningArguments,
    args,
    model: nn.Module,
    sparse_args: Optional[SparseTransferArguments] = None,
) -> Optional[RecipeGradualPruningCallback]:
    """The recipes' gradual-pruning callback for ``model`` (loaded, before training), or ``None`` when
    ``--gradual_sparsity`` is not given. Re-checks :func:`check_gradual_pruning`, then refuses a model whose
    targets (``--cram_targets``) are already at least as sparse as the target (it would prune nothing)."""
    if gradual.gradual_sparsity is None:
        return None
    check_gradual_pruning(gradual, args, sparse_args)
    target = gradual.gradual_sparsity
    names = validated(target_names, model, args.cram_targets, name="cram_targets")
    current = target_sparsity(model, names)
    if current >= target:
        raise UsageError(
            f"gradual_sparsity: the model is already {100 * current:.1f} % sparse in its target matrices, not "
            f"below the target {level_name(target)}: gradual pruning would prune nothing. Give a higher "
            "--gradual_sparsity (the model's zeros are kept either way)."
        )
    end = gradual.gradual_end_step
    if end is None and args.max_steps > 0:
        end = gradual_end_step(None, gradual.gradual_start_step, args.max_steps)
    return validated(
        RecipeGradualPruningCallback,
        target,
        gradual.gradual_start_step,
        end,
        gradual.gradual_update_every,
        scope=gradual.gradual_scope,
        targets=args.cram_targets,
    )


def gradual_record(callback: GradualPruningCallback) -> dict:
    """How ``callback`` pruned, for ``sparsity_config.json`` (``method``, ``level``, ``scope`` and the schedule
    in ``method_params``, as the one-shot pruners record theirs)."""
    return {
        "method": GRADUAL_METHOD,
        "level": level_name(callback.target),
        "scope": callback.scope,
        "target_patterns": callback.targets,
        "method_params": {
            "schedule": "cubic",
            "initial_sparsity": callback.initial,
            "start_step": callback.start_step,
            "end_step": callback.end_step,
            "update_every": callback.update_every,
        },
    }


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


def check_model_path(path) -> None:
    """Fail early on a *compact* sparse checkpoint: it has no ``model.safetensors``, so ``from_pretrained`` of a
    task class cannot read it."""
    from .checkpoint import is_compact

    if path is not None and os.path.isdir(str(path)) and is_compact(path):
        raise ValueError(
            f"model_name_or_path: {path!r} is a compact sparse checkpoint, which only cram_hf.load_sparse reads. "
            "Re-save it in the dense storage first: save_sparse(load_sparse(path), new_path)."
        )


def quality_metrics(metrics: dict) -> dict:
    """Drop the Trainer's timing and bookkeeping entries."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and not k.removesuffix("_mm").endswith(_NOT_METRICS)  # _mm: MNLI mismatched
    }


def evaluate_sparsities(
    evaluate: Callable[[], dict],
    model: nn.Module,
    levels: Sequence,
    *,
    scope: str = "global",
    targets: Patterns = None,
    output_dir: Optional[str] = None,
    dense_metrics: Optional[dict] = None,
    write: bool = True,
    **method,
) -> dict:
    """One-shot results after fine-tuning (:func:`cram_hf.pruning.one_shot`: prune in place, ``evaluate()``,
    restore): prints the table and writes ``eval_sparsities.json`` in ``output_dir``. ``dense_metrics`` saves
    re-evaluating the unpruned model."""
    dense = quality_metrics(dense_metrics if dense_metrics is not None else evaluate())
    zeros, numel = target_zeros(model, target_names(model, targets, name="cram_targets"))
    kept, skipped = [], []
    for level in parse_levels(levels, "eval_sparsities"):
        (kept if reachable(level, zeros, numel) else skipped).append(level)
    if skipped:  # after training, a table without them beats no table
        logger.warning(
            "eval_sparsities: %s skipped, below the sparsity the fine-tuned model has (%.4f); pruning never "
            "revives a weight.",
            ", ".join(level_name(lv) for lv in skipped),
            zeros / numel,
        )
    rows = one_shot(
        model,
        kept,
        lambda _: quality_metrics(evaluate()),
        scope=scope,
        targets=targets,
        on_row=lambda row: logger.info("one-shot %s: %s", row["level"], {k: row.get(k) for k in dense}),
        **method,
    )
    result = {
        "scope": scope,
        "targets": targets,
        "method": method.get("method", "magnitude"),
        "dense": dense,
        "levels": rows,
    }
    metrics = [k for k in dense if not k.endswith("_loss")] or list(dense)
    print(format_one_shot_table(rows, metrics, dense=dense))
    if write and output_dir:
        write_json(os.path.join(output_dir, EVAL_SPARSITIES_FILE), result)
    return result


def save_sparsity_record(
    trainer,
    keep_sparsity: Optional[KeepSparsityCallback],
    gradual: Optional[GradualPruningCallback] = None,
    model_path=None,
) -> Optional[dict]:
    """After ``trainer.save_model()``: the saved model's ``sparsity_config.json`` when its mask was kept (a
    sparse input) and/or made (gradual pruning, recorded as such), on the main process; else nothing."""
    names = list(keep_sparsity.masks) if keep_sparsity is not None else []
    pruned = None
    if gradual is not None and gradual.report is not None:
        names += [n for n in gradual.report.targets if n not in names]
        pruned = gradual_record(gradual)
    if not names or not trainer.is_world_process_zero():
        return None
    return save_finetuned_sparsity_config(
        trainer.model, trainer.args.output_dir, names, model_path, pruned=pruned
    )


def pruning_metrics(
    keep_sparsity: Optional[KeepSparsityCallback], gradual: Optional[GradualPruningCallback] = None
) -> dict:
    """How many pruned weights ended non-zero (0 unless something broke the mask) and, with gradual pruning,
    the target sparsity reached."""
    held = [c for c in (keep_sparsity, gradual.keep if gradual is not None else None) if c is not None]
    metrics = {"train_pruned_weights_nonzero": sum(c.violations() for c in held)} if held else {}
    if gradual is not None:
        metrics["train_gradual_sparsity"] = gradual.sparsity
    return metrics


def train_and_save(
    trainer,
    train_dataset,
    keep_sparsity: Optional[KeepSparsityCallback],
    model_path=None,
    gradual: Optional[GradualPruningCallback] = None,
) -> dict:
    """The recipes' training block: train (resuming if asked), save the model — with its
    ``sparsity_config.json`` when the mask was kept or gradual pruning made one — and the train metrics and
    state. Returns the metrics, which include how many pruned weights ended non-zero (0 unless something broke
    the mask)."""
    args = trainer.args
    metrics = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint).metrics
    metrics["train_samples"] = len(train_dataset)
    metrics.update(pruning_metrics(keep_sparsity, gradual))
    trainer.save_model()
    save_sparsity_record(trainer, keep_sparsity, gradual, model_path)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics
