"""Run under torchrun (any layout of 2 processes, gloo on CPU): a few CrAM steps, then every rank writes
its final weights and where it ran to ``argv[1]/rank{RANK}.safetensors`` / ``.json``.

tests/test_multinode.py launches it as 1 node x 2 processes and as 2 nodes x 1 process and compares."""

import json
import os
import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import BertForMaskedLM

sys.path.insert(0, os.path.dirname(__file__))
from conftest import exit_worker, tiny_bert_config  # noqa: E402

from cram_hf import CrAMConfig, CrAMTrainer  # noqa: E402


class Recording(CrAMTrainer):
    first_batch = None

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.first_batch is None:
            self.first_batch = inputs["input_ids"].detach().clone()
        return super().training_step(model, inputs, num_items_in_batch)


def main():
    out = sys.argv[1]
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    data = [
        {
            "input_ids": torch.randint(5, 64, (10,), generator=gen),
            "labels": torch.randint(5, 64, (10,), generator=gen),
        }
        for _ in range(32)
    ]
    args = CrAMConfig(
        output_dir=os.path.join(out, "trainer"),
        max_steps=3,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        seed=5,
        use_cpu=True,
        ddp_backend="gloo",
        dataloader_drop_last=True,
        cram_rho=0.2,
        cram_sparsities=["0.5", "2:4"],
    )
    trainer = Recording(model=model, args=args, train_dataset=data)
    trainer.train()
    rank = dist.get_rank()
    save_file(
        {n: p.detach().contiguous() for n, p in trainer.model.named_parameters()},
        os.path.join(out, f"rank{rank}.safetensors"),
    )
    batches = [torch.empty_like(trainer.first_batch) for _ in range(dist.get_world_size())]
    dist.all_gather(batches, trainer.first_batch)
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(
            {
                "rank": rank,
                "world_size": dist.get_world_size(),
                "node_rank": int(os.environ["GROUP_RANK"]),
                "local_rank": int(os.environ["LOCAL_RANK"]),
                "local_world_size": int(os.environ["LOCAL_WORLD_SIZE"]),
                "ranks_saw_different_batches": not torch.equal(batches[0], batches[1]),
                "weights_moved": all(
                    not torch.equal(initial[n], p)
                    for n, p in trainer.model.named_parameters()
                    if n.endswith("dense.weight")
                ),
            },
            f,
        )


if __name__ == "__main__":
    main()
    exit_worker()
