"""Gradual magnitude pruning while training, as the recipes offer it: the ``--gradual_*`` flags
(:class:`GradualPruningArguments`), the check of them before any work (:func:`check_gradual_pruning`), the
callback built once the model is loaded (:func:`gradual_pruning_callback`) and its record for the saved
model's ``sparsity_config.json`` (:func:`gradual_record`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Optional

from torch import nn

from cram_hf.compression import level_name
from cram_hf.errors import UsageError, validated
from cram_hf.gradual import GradualPruningCallback, _sparsity
from cram_hf.pruning_spec import PruningSpec
from cram_hf.sparse_finetune import target_sparsity
from cram_hf.targets import target_names

if TYPE_CHECKING:
    from recipe_arguments import SparseTransferArguments

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
        # The callback's own spec and check, made here too so that a bad scope fails before any work.
        PruningSpec("magnitude", self.gradual_scope).validate(names={"scope": "gradual_scope"})


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
