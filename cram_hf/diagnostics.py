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


class HostReadCounter:
    """Counts the operations that read a device tensor back to the host (each drains a GPU's queue) while
    the block runs, by the aten operator they dispatch to::

        with HostReadCounter() as reads:
            trainer.training_step(model, batch)
        reads.total, reads.by_op

    Counted: ``.item()``/``float()``/``int()``/``bool()`` of a tensor (``_local_scalar_dense``,
    ``is_nonzero``), ``torch.equal``, ``nonzero``, ``bincount`` (its CUDA kernel reads the maximum to size its
    output), ``masked_select``, ``unique``, and indexing or index assignment with a boolean mask (its output
    size depends on the data). Works on CPU too, where the same operators would be reads on a GPU.
    """

    _OPS = (
        "_local_scalar_dense",
        "is_nonzero",
        "equal",
        "nonzero",
        "bincount",
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
    )

    def __init__(self):
        self.by_op: dict = {}

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in HostReadCounter._OPS or (
                    name in ("index", "index_put", "index_put_") and _has_bool_index(args)
                ):
                    counter.by_op[name] = counter.by_op.get(name, 0) + 1
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def _has_bool_index(args) -> bool:
    import torch

    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(i) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())
