"""Ending a distributed run cleanly, for the recipes and for your own training scripts."""

from __future__ import annotations


def leave_process_group() -> None:
    """Take down the default process group, if there is one, once every rank is done.

    Call it after the function that built the trainer has returned, so the trainer is garbage; collecting it
    frees the DDP wrapper that holds the group before the group is destroyed. Left to interpreter shutdown
    instead, a gloo group can abort a rank whose work is complete (SIGABRT, "terminate called without an
    active exception") and fail the launch.
    """
    import gc

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()
