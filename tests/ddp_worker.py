"""Run under `torchrun --nproc_per_node 2`: CrAMTrainer under DDP (gloo, CPU).

Checks, on every rank: identical weights on both ranks after each step; the weights after step 1 equal
θ - lr * mean_over_ranks(d_rank) from the independent reference; and the number of gradient all-reduce
calls per step. Writes a JSON summary to argv[1] (rank 0)."""

import copy
import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import BertForMaskedLM, Trainer, TrainingArguments

sys.path.insert(0, os.path.dirname(__file__))
from conftest import exit_worker, tiny_bert_config  # noqa: E402
from reference_cram import reference_direction  # noqa: E402

from cram_hf import CrAMConfig, CrAMTrainer  # noqa: E402
from cram_hf.diagnostics import AllReduceCounter  # noqa: E402

LR = 0.5


class CountAllReduce(AllReduceCounter):
    """Also records, after every step, whether all ranks hold identical weights."""

    def __init__(self, trainer):
        super().__init__(trainer)
        self.weights_equal = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        flat = torch.cat([p.detach().flatten() for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        self.weights_equal.append(all(torch.equal(gathered[0], g) for g in gathered))


def recording(cls):
    class Recording(cls):
        seen = []

        def training_step(self, model, inputs, num_items_in_batch=None):
            self.seen.append({k: v.detach().clone() for k, v in inputs.items()})
            return super().training_step(model, inputs, num_items_in_batch)

        def _record(self, point, compressed_loss, k):
            # This rank's own compressed loss per micro-batch, to check the cross-rank mean that log() reports.
            self.local_compressed.append((self.state.global_step, float(compressed_loss) * k))
            super()._record(point, compressed_loss, k)

    Recording.seen, Recording.local_compressed = [], []
    return Recording


def run(cls, args_cls, steps, **extra):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    initial = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(1)
    data = [
        {
            "input_ids": torch.randint(5, 64, (10,), generator=gen),
            "labels": torch.randint(5, 64, (10,), generator=gen),
        }
        for _ in range(32)
    ]
    args = args_cls(
        output_dir=os.path.join(
            os.path.dirname(os.path.abspath(sys.argv[1])), "trainer"
        ),  # the test's tmp_path
        max_steps=steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        seed=5,
        use_cpu=True,
        ddp_backend="gloo",
        dataloader_drop_last=True,
        logging_steps=1,
        **extra,
    )
    trainer = recording(cls)(model=model, args=args, train_dataset=data)
    trainer.model_accepts_loss_kwargs = False
    counter = CountAllReduce(trainer)
    trainer.add_callback(counter)
    trainer.train()
    return trainer, initial, counter


def main():
    out = sys.argv[1]
    trainer, initial, counter = run(CrAMTrainer, CrAMConfig, 1, cram_rho=0.2, cram_sparsities=["0.7", "2:4"])
    level = trainer.cram.level_at(0)
    level = f"{level[0]}:{level[1]}" if isinstance(level, tuple) else level
    # Every rank computes the reference direction of its own micro-batches; the mean over ranks and
    # micro-batches is what DDP + accumulation must apply.
    local = [reference_direction(initial, batch, rho=0.2, level=level)[0] for batch in trainer.seen]
    names = list(local[0])
    mean_local = torch.cat([(sum(d[n] for d in local) / len(local)).flatten() for n in names])
    dist.all_reduce(mean_local)
    mean_local /= dist.get_world_size()
    expected = torch.cat([p.detach().flatten() for _, p in initial.named_parameters()]) - LR * mean_local
    got = torch.cat([dict(trainer.model.named_parameters())[n].detach().flatten() for n in names])
    max_err = float((got - expected).abs().max())
    mine = trainer.seen[0]["input_ids"]
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    different_batches = not torch.equal(gathered[0], gathered[1])

    cram3, _, cram_counter = run(CrAMTrainer, CrAMConfig, 3, cram_rho=0.2, cram_sparsities=["0.5", "0.8"])
    stock3, _, stock_counter = run(Trainer, TrainingArguments, 3)
    # log() must report the mean over ranks of each rank's own compressed loss (one reduction per log).
    steps = sorted({s for s, _ in cram3.local_compressed})
    local = torch.tensor([[v for s, v in cram3.local_compressed if s == step] for step in steps]).mean(1)
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    expected_logged = torch.stack(gathered).mean(0)
    logged = torch.tensor([h["cram_compressed_loss"] for h in cram3.state.log_history if "loss" in h])
    log_err = float((logged - expected_logged).abs().max())
    ranks_differ = float((gathered[0] - gathered[1]).abs().max())
    # A probabilistic schedule: every rank must take the CrAM update on the same steps, unasked.
    steps = 6
    sched, _, sched_counter = run(
        CrAMTrainer, CrAMConfig, steps, cram_rho=0.2, cram_sparsities=["0.5"], cram_probability=0.5
    )
    mine = torch.zeros(steps)
    for step, _ in sched.local_compressed:
        mine[step] = 1.0
    gathered = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, mine)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(
                {
                    "max_err": max_err,
                    "weights_equal": counter.weights_equal + cram_counter.weights_equal,
                    "ranks_saw_different_batches": different_batches,
                    "allreduce_calls_cram": cram_counter.calls,
                    "allreduce_calls_stock": stock_counter.calls,
                    "world_size": dist.get_world_size(),
                    "logged_compressed_loss_err": log_err,
                    "ranks_compressed_loss_differ_by": ranks_differ,
                    "schedule_cram_steps": [g.tolist() for g in gathered],
                    "schedule_weights_equal": sched_counter.weights_equal,
                },
                f,
            )


if __name__ == "__main__":
    main()
    exit_worker()
