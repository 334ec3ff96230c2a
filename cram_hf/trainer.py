"""``CrAMTrainer``: the stock ``transformers.Trainer`` with the CrAM update in ``training_step``."""

from __future__ import annotations

import torch
from transformers import Trainer

from .compression import level_sparsity
from .config import CrAMConfig
from .cram_step import CrAM

_LOG_KEYS = ("cram_compressed_loss", "cram_sparsity", "cram_perturbation_norm", "cram_skipped_steps")


class CrAMTrainer(Trainer):
    """A drop-in ``Trainer`` that trains with CrAM / CrAM+.

    Only ``training_step`` (and ``log``, to add the CrAM figures) is overridden: optimizer, scheduler,
    clipping, callbacks, checkpointing, evaluation and ``push_to_hub`` are the stock ones. After
    ``training_step`` the weights are exactly what they were and ``.grad`` holds the CrAM direction, so
    any ``optim`` applies it.

    Per micro-batch (gradient accumulation ``K``, loss scale ``S``):

    1. clean pass, without DDP gradient sync: ``g`` = gradient of this micro-batch's own mean loss;
    2. weights -> ``θ̂``; ``.grad`` <- accumulated ``+ g/K`` (CrAM+) or accumulated (CrAM);
    3. compressed pass, synced: ``.grad += m ⊙ g'/K`` through per-target mask hooks, so the DDP
       all-reduce averages each rank's own direction — one all-reduce per optimizer step;
    4. weights restored bit-exactly.

    The logged ``loss`` is the clean (dense) loss, as with the stock Trainer; the loss at the compressed
    point, the mean level sparsity and the perturbation norm ``‖θ̃ - θ‖`` are logged beside it.
    """

    def __init__(self, model=None, args: CrAMConfig = None, *pos, **kwargs):
        if args is None:
            args = CrAMConfig(output_dir="tmp_trainer")
        if not isinstance(args, CrAMConfig):
            raise TypeError(
                f"args: CrAMTrainer needs a cram_hf.CrAMConfig (a TrainingArguments subclass), got "
                f"{type(args).__name__}; build it with CrAMConfig(**your_training_args.to_dict(), cram_rho=...)."
            )
        super().__init__(model, args, *pos, **kwargs)
        # BERT-family models take **kwargs but ignore num_items_in_batch: with the stock default the loss
        # would be inflated by the accumulation steps and world size. CrAM also needs each micro-batch's
        # own mean loss, so losses are always per-micro-batch means divided by K here.
        self.model_accepts_loss_kwargs = False
        self.cram = CrAM(
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
        self._cram_sums = torch.zeros(len(_LOG_KEYS), dtype=torch.float64)
        self._cram_count = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        if not self.cram.active:
            return super().training_step(model, inputs, num_items_in_batch)
        model.train()
        if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
            self.optimizer.train()
        inputs = self._prepare_inputs(inputs)
        # Set by the training loop (smaller for a short last accumulation window).
        k = getattr(self, "current_gradient_accumulation_steps", self.args.gradient_accumulation_steps)
        level = self.cram.level_at(self.state.global_step)

        stash = self.cram.stash_gradients()
        with self.accelerator.no_sync(model):
            clean_loss = self._micro_batch_loss(model, inputs)
            self.accelerator.backward(clean_loss)
        with self.cram.compressed_point(
            level, grad_scale=self._loss_scale(), stash=stash, accumulation=k
        ) as point:
            del stash
            if point.finite:
                compressed_loss = self._micro_batch_loss(model, inputs)
                self.accelerator.backward(compressed_loss / k)

        self._record(point, compressed_loss.detach() if point.finite else None)
        return clean_loss.detach() / k

    def _micro_batch_loss(self, model, inputs):
        with self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        if self.args.n_gpu > 1:
            loss = loss.mean()
        return loss

    def _loss_scale(self) -> float:
        scaler = getattr(self.accelerator, "scaler", None)
        if scaler is None or not scaler.is_enabled():
            return 1.0
        return float(scaler.get_scale())

    def _record(self, point, compressed_loss) -> None:
        skipped = not point.finite
        values = (
            float(compressed_loss) if compressed_loss is not None else 0.0,
            level_sparsity(point.level) if point.level is not None and not skipped else 0.0,
            point.perturbation_norm,
            float(skipped),
        )
        self._cram_sums += torch.tensor(values, dtype=torch.float64)
        self._cram_count += 1

    def log(self, logs, *args, **kwargs):
        if "loss" in logs and self._cram_count:
            sums = torch.cat([self._cram_sums, torch.tensor([float(self._cram_count)], dtype=torch.float64)])
            if self.args.world_size > 1:
                sums = self.accelerator.reduce(sums.to(self.args.device), reduction="sum").cpu()
            count = float(sums[-1])
            finite = max(count - float(sums[3]), 1.0)
            logs["cram_compressed_loss"] = round(float(sums[0]) / finite, 4)
            logs["cram_sparsity"] = round(float(sums[1]) / finite, 4)
            logs["cram_perturbation_norm"] = float(sums[2]) / finite
            if sums[3] > 0:
                logs["cram_skipped_steps"] = int(sums[3])
            self._cram_sums.zero_()
            self._cram_count = 0
        super().log(logs, *args, **kwargs)
