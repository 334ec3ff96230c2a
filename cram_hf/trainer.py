"""``CrAMTrainer``: the stock ``transformers.Trainer`` with the CrAM update in ``training_step``."""

from __future__ import annotations

import copy
import inspect
import logging

import torch
from transformers import Trainer

from .compression import level_sparsity
from .config import CrAMConfig
from .cram_step import CrAM
from .targets import default_target_names

logger = logging.getLogger(__name__)


class CrAMTrainer(Trainer):
    """A drop-in ``Trainer`` that trains with CrAM / CrAM+.

    Only ``training_step`` (and ``log``, to add the CrAM figures) is overridden, and each of its two passes
    *is* the stock ``Trainer.training_step`` — input preparation, context parallelism, the loss and its
    accumulation weighting (``num_items_in_batch``, ``compute_loss_func``, ``loss_is_scaled_for_ga``),
    ``torch_empty_cache_steps`` and the backward all stay the stock ones. Optimizer, scheduler, clipping,
    callbacks, checkpointing, evaluation and ``push_to_hub`` are untouched. After ``training_step`` the
    weights are exactly what they were and ``.grad`` holds the CrAM direction, so any ``optim`` applies it.

    Per micro-batch, with ``w`` the weight the stock Trainer gives it (``1/K`` for ``K`` accumulation steps,
    or its share of the label tokens for a model that honours ``num_items_in_batch``):

    1. clean pass (stock step, without DDP gradient sync): ``.grad`` gets ``w·g``;
    2. weights -> ``θ̂`` with ``θ̃ = θ + ρ·K·w·g`` — for ``w = 1/K`` exactly ``ρ`` times the gradient of
       the micro-batch's own mean loss, independent of ``K`` and of the fp16 loss scale; ``.grad`` <- the
       gradient accumulated before this micro-batch ``+ w·g`` (CrAM+) or without ``w·g`` (CrAM);
    3. compressed pass (stock step, synced): ``.grad += w·(m ⊙ g')`` through per-target mask hooks, so the
       DDP all-reduce averages each rank's own direction — one all-reduce per optimizer step;
    4. weights restored bit-exactly (also when anything in between raises).

    The logged ``loss`` is the clean (dense) loss, as with the stock Trainer; the loss at the compressed
    point, the mean level sparsity and the perturbation norm ``‖θ̃ - θ‖`` are logged beside it.

    Example::

        from cram_hf import CrAMConfig, CrAMTrainer

        args = CrAMConfig(output_dir="out", cram_rho=0.05, cram_sparsities=["0.5", "0.7", "2:4"])
        trainer = CrAMTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator)
        trainer.train()
    """

    def __init__(self, model=None, args: CrAMConfig = None, *pos, **kwargs):
        if args is None:
            args = CrAMConfig(output_dir="tmp_trainer")
            if model is not None and not default_target_names(model):
                # The stock default works with any model; so must ours: perturbation only (SAM-like).
                logger.warning(
                    "%s has no nn.Linear inside an nn.ModuleList, so the default CrAM targets are empty: "
                    "training with the perturbation only. Pass CrAMConfig(cram_targets=[...]) to compress.",
                    type(model).__name__,
                )
                args.cram_sparsities = []
        if not isinstance(args, CrAMConfig):
            raise TypeError(
                f"args: CrAMTrainer needs a cram_hf.CrAMConfig (a TrainingArguments subclass), got "
                f"{type(args).__name__}; build it with CrAMConfig(**your_training_args.to_dict(), cram_rho=...)."
            )
        super().__init__(model, args, *pos, **kwargs)
        if (
            args.cram_enabled
            and self.model_accepts_loss_kwargs
            and not _honours_num_items_in_batch(self.model)
        ):
            # BERT-family heads take **kwargs but ignore num_items_in_batch; the stock Trainer would then skip
            # its division by the accumulation steps and inflate the gradient K-fold. Off, the Trainer stays
            # exactly the stock one.
            self.model_accepts_loss_kwargs = False
        self.cram = self._build_cram()
        self._cram_unbound = False
        self._reset_cram_logs()

    def _build_cram(self) -> CrAM:
        """A ``CrAM`` bound to the parameters of ``self.model`` as they are now (trainable ones only)."""
        args = self.args
        return CrAM(
            self.model,
            rho=args.cram_rho,
            levels=args.cram_sparsities,
            plus=args.cram_plus,
            sparse_grad=args.cram_sparse_grad,
            scope=args.cram_scope,
            targets=args.cram_targets,
            grad_norm=args.cram_grad_norm,
            seed=args.seed,
        )

    def train(self, *args, **kwargs):
        # Bind at the first step of every train(): model_init / hyperparameter_search build a fresh model
        # inside train(), and parameters may have been frozen or unfrozen since __init__.
        self._cram_unbound = True
        try:
            return super().train(*args, **kwargs)
        finally:
            # An interrupted train() never reaches on_train_end: take the mask hooks off the model here too
            # (KeepSparsityCallback, GradualPruningCallback: every callback that binds hooks can unbind them).
            for callback in self.callback_handler.callbacks:
                if callable(getattr(callback, "unbind", None)):
                    callback.unbind()

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self._cram_unbound:
            previous, self.cram = self.cram, self._build_cram()
            # The timing diagnostic (cram.timing / cram.seconds) belongs to the trainer, not to one binding.
            self.cram.timing, self.cram.seconds = previous.timing, previous.seconds
            self._cram_unbound = False
        if not self.cram.active:
            return super().training_step(model, inputs, num_items_in_batch)
        k = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        level = self.cram.level_at(self.state.global_step)

        stash = self.cram.stash_gradients()
        # Each pass gets its own shallow copy: compute_loss may pop keys (labels) from the dict it is given.
        with self.accelerator.no_sync(model):
            clean_loss = super().training_step(model, copy.copy(inputs), num_items_in_batch)
        scaler = getattr(self.accelerator, "scaler", None)
        scaling = scaler is not None and scaler.is_enabled()
        with self.cram.compressed_point(
            level,
            grad_scale=self._loss_scale(scaler) / k if scaling else 1.0 / k,
            stash=stash,
            check_finite=scaling,
        ) as point:
            del stash
            compressed_loss = None
            if point.finite:
                compressed_loss = super().training_step(model, copy.copy(inputs), num_items_in_batch)
        self._record(point, compressed_loss, k)
        return clean_loss

    @staticmethod
    def _loss_scale(scaler):
        """The GradScaler's current scale as a device tensor (``get_scale()`` would read it to the host)."""
        scale = getattr(scaler, "_scale", None)
        return scale.squeeze() if torch.is_tensor(scale) else scaler.get_scale()

    # --- logging: sums stay on the device until the Trainer logs -------------------------------------------

    def _reset_cram_logs(self) -> None:
        self._cram_device_sums = None  # [compressed loss, perturbation norm], tensors
        self._cram_sparsity_sum = 0.0
        self._cram_finite = 0
        self._cram_skipped = 0

    def _record(self, point, compressed_loss, k: int) -> None:
        if not point.finite:
            self._cram_skipped += 1
            return
        # ×k undoes the stock 1/K weighting: the mean over micro-batches of their own compressed loss.
        loss = compressed_loss.detach().float()
        norm = point.perturbation_norm
        # new_full is a fill on the device; building a tensor from a host number would be a copy that waits.
        norm = norm.float().to(loss.device) if torch.is_tensor(norm) else loss.new_full((), float(norm))
        values = torch.stack([loss * k, norm])
        self._cram_device_sums = values if self._cram_device_sums is None else self._cram_device_sums + values
        self._cram_sparsity_sum += level_sparsity(point.level) if point.level is not None else 0.0
        self._cram_finite += 1

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and (self._cram_finite or self._cram_skipped):
            device = self.args.device
            sums = self._cram_device_sums
            sums = sums.to(device) if sums is not None else torch.zeros(2, device=device)
            host = torch.tensor(
                [self._cram_sparsity_sum, self._cram_finite, self._cram_skipped], device=device
            )
            sums = torch.cat([sums.float(), host.float()])
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums, reduction="sum")
            loss_sum, norm_sum, sparsity_sum, finite, skipped = sums.tolist()
            finite = max(finite, 1.0)
            logs["cram_compressed_loss"] = round(loss_sum / finite, 4)
            logs["cram_sparsity"] = round(sparsity_sum / finite, 4)
            logs["cram_perturbation_norm"] = norm_sum / finite
            if skipped > 0:
                logs["cram_skipped_steps"] = int(skipped)
            self._reset_cram_logs()
        super().log(logs, *args, **kwargs)


def _honours_num_items_in_batch(model) -> bool:
    """Whether the model's forward uses ``num_items_in_batch`` (through transformers' ``loss_function``)
    rather than only accepting it in ``**kwargs``. Unknown source counts as honouring it (the stock view)."""
    model = getattr(model, "base_model", model) if type(model).__module__.startswith("peft.") else model
    model = getattr(model, "model", model) if type(model).__module__.startswith("peft.") else model
    try:
        source = inspect.getsource(type(model).forward)
    except (OSError, TypeError):
        return True
    return "loss_function" in source or "num_items_in_batch" in source
