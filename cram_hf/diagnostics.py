"""Diagnostics for distributed runs."""

from __future__ import annotations

from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from transformers import TrainerCallback


class AllReduceCounter(TrainerCallback):
    """Counts DDP gradient all-reduce calls (one per bucket per synced backward) of a Trainer's run.

    It installs a DDP communication hook that counts, then does the default all-reduce, so training is
    unchanged. Use it to check that a CrAM step costs the same communication as a plain step::

        counter = AllReduceCounter(trainer)
        trainer.add_callback(counter)
        trainer.train()
        counter.calls / trainer.state.global_step
    """

    def __init__(self, trainer):
        self.trainer, self.calls = trainer, 0

    def on_train_begin(self, args, state, control, **kwargs):
        wrapped = self.trainer.model_wrapped
        if hasattr(wrapped, "register_comm_hook"):
            wrapped.register_comm_hook(self, AllReduceCounter._hook)

    @staticmethod
    def _hook(state, bucket):
        state.calls += 1
        return default_hooks.allreduce_hook(None, bucket)
