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
from .distillation import Distiller, distillation_logits
from .schedule import cram_step_due
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

    Knowledge distillation: with ``teacher_model=`` (a loaded model) or ``args.distill_teacher`` (loaded with
    the student's model class), ``self.distiller`` is a :class:`~cram_hf.distillation.Distiller` (the class
    ``distiller_class``), which owns the teacher — frozen, outside the model, never trained or saved — and the
    loss ``h·KD + (1-h)·task loss`` that ``compute_loss`` returns. ``training_step`` has it run the teacher
    once per micro-batch, before both CrAM passes, which reuse its logits; ``distill_loss`` and ``task_loss``
    are logged beside ``loss``.

    Example::

        from cram_hf import CrAMConfig, CrAMTrainer

        args = CrAMConfig(output_dir="out", cram_rho=0.05, cram_sparsities=["0.5", "0.7", "2:4"])
        trainer = CrAMTrainer(model=model, args=args, train_dataset=train_dataset, data_collator=collator)
        trainer.train()
    """

    distiller_class = Distiller

    def __init__(self, model=None, args: CrAMConfig = None, *pos, teacher_model=None, **kwargs):
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
        self.distiller = None
        if teacher_model is not None or args.distill_teacher is not None:
            self.distiller = self.distiller_class.for_student(
                self.model,
                args,
                teacher_model,
                label_names=self.label_names,
                autocast=lambda: self.accelerator.autocast(),  # the accelerator of the moment (HP search)
            )
        if (
            (args.cram_enabled or self.distiller is not None)
            and self.model_accepts_loss_kwargs
            and not _honours_num_items_in_batch(self.model)
        ):
            # BERT-family heads take **kwargs but ignore num_items_in_batch; the stock Trainer would then skip
            # its division by the accumulation steps and inflate the gradient K-fold. Without CrAM and teacher,
            # the Trainer stays exactly the stock one.
            self.model_accepts_loss_kwargs = False
        self.cram = self._build_cram()
        self._cram_unbound = False
        self._reset_cram_logs()

    @property
    def teacher_model(self):
        """The frozen teacher, ``None`` without distillation."""
        return self.distiller.teacher if self.distiller is not None else None

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
        if self.distiller is None:
            return self._cram_training_step(model, inputs, num_items_in_batch)
        # Once per micro-batch: the clean and the compressed pass see the same inputs, hence the same teacher.
        with self.distiller.sharing_teacher(self._prepare_inputs(inputs), self.model):
            return self._cram_training_step(model, inputs, num_items_in_batch)

    def _cram_training_step(self, model, inputs, num_items_in_batch=None):
        if self._cram_unbound:
            previous, self.cram = self.cram, self._build_cram()
            # The timing diagnostic (cram.timing / cram.seconds) belongs to the trainer, not to one binding.
            self.cram.timing, self.cram.seconds = previous.timing, previous.seconds
            self._cram_unbound = False
        if not self.cram.active:
            return super().training_step(model, inputs, num_items_in_batch)
        if not self._cram_due():
            # The schedule's plain step: the stock step, no ranking, no copy (the loss weighting is the CrAM
            # steps' own, so both kinds of step give gradients of the same scale).
            self._cram_plain += 1
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

    # --- distillation (cram_hf.distillation.Distiller) ----------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.distiller is None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        teacher = self.distiller.teacher_rows(inputs, self.model)
        # Taken before the stock compute_loss, which pops the labels when it smooths them.
        selectors = {k: inputs[k] for k in ("labels", "attention_mask") if k in inputs}
        task_loss, outputs = super().compute_loss(model, inputs, True, num_items_in_batch)
        steps, scaled = self._accumulation(model, num_items_in_batch)
        loss = self.distiller.loss(
            task_loss,
            distillation_logits(outputs, selectors),
            teacher,
            accumulation_steps=steps,
            task_scaled=scaled,
        )
        return (loss, outputs) if return_outputs else loss

    def _accumulation(self, model, num_items_in_batch) -> tuple:
        """How the stock ``training_step`` weights this micro-batch's loss: ``(K, scaled)``, ``K`` the
        accumulation steps and ``scaled`` true when the loss is already a share of the accumulated batch, so
        the step does *not* divide it by ``K`` (the stock step's own test). Outside training nothing is scaled."""
        k = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        if not model.training:
            return k, False
        explicit = getattr(self, "loss_is_scaled_for_ga", None)  # transformers 5.x
        if explicit is not None:
            return k, explicit
        return k, (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
            self.compute_loss_func is not None
        )

    # --- logging: sums stay on the device until the Trainer logs -------------------------------------------

    def _cram_due(self) -> bool:
        """Whether this optimizer step takes the CrAM update (``cram_interval`` / ``cram_probability``)."""
        args = self.args
        return cram_step_due(
            self.state.global_step,
            seed=args.seed,
            interval=args.cram_interval,
            probability=args.cram_probability,
        )

    def _reset_cram_logs(self) -> None:
        self._cram_device_sums = None  # [compressed loss, perturbation norm], tensors
        self._cram_sparsity_sum = 0.0
        self._cram_finite = 0
        self._cram_skipped = 0
        self._cram_plain = 0  # micro-batches the schedule gave the plain step

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
        if "loss" in logs and (self._cram_finite or self._cram_skipped or self._cram_plain):
            device = self.args.device
            sums = self._cram_device_sums
            sums = sums.to(device) if sums is not None else torch.zeros(2, device=device)
            host = torch.tensor(
                [self._cram_sparsity_sum, self._cram_finite, self._cram_skipped, self._cram_plain],
                device=device,
            )
            sums = self._sum_over_ranks(torch.cat([sums.float(), host.float()]))
            loss_sum, norm_sum, sparsity_sum, finite, skipped, plain = sums.tolist()
            if finite:
                logs["cram_compressed_loss"] = round(loss_sum / finite, 4)
                logs["cram_sparsity"] = round(sparsity_sum / finite, 4)
                logs["cram_perturbation_norm"] = norm_sum / finite
            if skipped > 0:
                logs["cram_skipped_steps"] = int(skipped)
            if self.args.cram_interval > 1 or self.args.cram_probability < 1:
                logs["cram_step_fraction"] = round((finite + skipped) / (finite + skipped + plain), 4)
            self._reset_cram_logs()
        if "loss" in logs and self.distiller is not None:
            logs.update(self.distiller.pop_logs(self._sum_over_ranks))
        super().log(logs, *args, **kwargs)

    def _sum_over_ranks(self, sums):
        """``sums`` on this process's device, summed over the DDP ranks."""
        sums = sums.to(self.args.device)
        return self.accelerator.reduce(sums, reduction="sum") if self.args.world_size > 1 else sums


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
