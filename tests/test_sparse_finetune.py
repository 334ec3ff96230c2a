"""Sparse fine-tuning keeps every pruned weight exactly zero (AdamW + weight decay + accumulation, CrAM too)."""

import json

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForSequenceClassification, BertModel

from cram_hf import CrAMConfig, CrAMTrainer
from cram_hf.compression import compression_masks
from cram_hf.sparse_finetune import (
    KeepSparsityCallback,
    keep_sparsity_callback,
    masks_from_zeros,
)
from cram_hf.targets import resolve_parameter_names, target_names


def make_model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3))


def prune_(model, level=0.7):
    names = target_names(model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n, keep in zip(names, compression_masks([params[n] for n in names], level)):
            params[n].masked_fill_(~keep, 0)
    return {n: params[n].detach() == 0 for n in names}


def dataset(n=24, seq=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (n, seq), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long), "labels": labels[i]}
        for i in range(n)
    ]


def train(model, tmp_path, callbacks, **cram):
    args = CrAMConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=6,
        learning_rate=5e-2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=100,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
        **({"cram_rho": 0.0, "cram_sparsities": []} | cram),
    )
    trainer = CrAMTrainer(model=model, args=args, train_dataset=dataset(), callbacks=callbacks)
    trainer.train()
    return trainer


def pruned_state_entries(trainer, model, zeros):
    """Largest |value| of AdamW's exp_avg / exp_avg_sq at pruned positions."""
    params = dict(model.named_parameters())
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    worst = 0.0
    for n, z in zeros.items():
        state = opt.state[params[n]]
        assert "exp_avg" in state and "exp_avg_sq" in state
        for key in ("exp_avg", "exp_avg_sq"):
            worst = max(worst, float(state[key][z].abs().max()))
    return worst


@pytest.mark.parametrize(
    "cram", [{}, {"cram_rho": 0.05, "cram_sparsities": ["0.5", "2:4"]}], ids=["adamw", "cram"]
)
def test_exact_sparsity_after_sparse_finetuning(tmp_path, cram):
    model = make_model()
    zeros = prune_(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    callback = KeepSparsityCallback.from_model(model)
    trainer = train(model, tmp_path, [callback], **cram)
    params = dict(model.named_parameters())
    for n, z in zeros.items():
        now = params[n].detach() == 0
        assert torch.equal(now, z), f"{n}: zero pattern changed"  # same positions, same count, per matrix
        moved = (params[n].detach() != before[n])[~z].float().mean()
        assert moved > 0.9, f"{n}: kept weights did not train"
    assert callback.violations() == 0
    assert pruned_state_entries(trainer, model, zeros) == 0.0
    # The model, not the callback's bookkeeping: no mask hook may stay on any parameter after training.
    assert all(not p._backward_hooks for p in model.parameters()), "gradient hooks left on the model"


class GradientsAtStep(CrAMTrainer):
    """Records, at every optimizer.step(), the largest |grad| at pruned positions — what the optimizer sees."""

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        params = dict(self.model.named_parameters())

        def record(opt, *a, **kw):
            self.seen.append(max(float(params[n].grad[z].abs().max()) for n, z in self.zeros.items()))

        optimizer.register_step_pre_hook(record)
        return optimizer


def test_pruned_gradients_are_zero_when_the_optimizer_steps_even_without_backward_hooks(tmp_path):
    """on_pre_optimizer_step is the guarantee that does not depend on hooks: with mask_gradients=False the
    backward leaves gradients at pruned entries, and they must be zero by the time optimizer.step() runs
    (a non-element-wise optimizer — Adafactor's factored moments, LAMB's trust ratio — would otherwise let
    them leak into the kept weights' updates)."""
    model = make_model()
    zeros = prune_(model)
    args = CrAMConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=3,
        learning_rate=1e-2,
        max_grad_norm=0.0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        cram_rho=0.0,
        cram_sparsities=[],
    )
    trainer = GradientsAtStep(
        model=model,
        args=args,
        train_dataset=dataset(),
        callbacks=[KeepSparsityCallback.from_model(model, mask_gradients=False)],
    )
    trainer.seen, trainer.zeros = [], zeros
    trainer.train()
    assert len(trainer.seen) == 3 and max(trainer.seen) == 0.0


def test_without_the_callback_zeros_drift(tmp_path):
    # The control for the test above: the same run with no callback loses the pattern.
    model = make_model()
    zeros = prune_(model)
    train(model, tmp_path, None)
    params = dict(model.named_parameters())
    assert all(not torch.equal(params[n].detach() == 0, z) for n, z in zeros.items())


def test_gradient_hooks_mask_backward_and_unbind(tmp_path):
    model = make_model()
    zeros = prune_(model)
    callback = KeepSparsityCallback.from_model(model)
    callback.bind(model)
    batch = dataset(n=4)
    inputs = {k: torch.stack([b[k] for b in batch]) for k in batch[0]}
    model(**inputs).loss.backward()
    params = dict(model.named_parameters())
    for n, z in zeros.items():
        assert params[n].grad[z].abs().max() == 0  # before any pre-step zeroing: the hook did it
        assert params[n].grad[~z].abs().max() > 0
    callback.unbind()
    model.zero_grad()
    model(**inputs).loss.backward()
    assert any(params[n].grad[z].abs().max() > 0 for n, z in zeros.items())


def test_optimizer_state_and_weights_are_masked_for_momentum_optimizers():
    model = make_model()
    zeros = prune_(model)
    callback = KeepSparsityCallback.from_model(model, mask_gradients=False)
    callback.bind(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    params = dict(model.named_parameters())
    for p in model.parameters():
        p.grad = torch.ones_like(p)  # gradient on pruned entries too
    opt.step()  # without on_pre_optimizer_step: pruned weights move, momentum builds up
    assert any(params[n].detach()[z].abs().max() > 0 for n, z in zeros.items())
    callback.on_optimizer_step(None, None, None, optimizer=opt)
    for n, z in zeros.items():
        assert params[n].detach()[z].abs().max() == 0
        assert opt.state[params[n]]["momentum_buffer"][z].abs().max() == 0


def test_auto_detection_and_forcing():
    dense = make_model()
    assert keep_sparsity_callback(dense) is None
    forced = keep_sparsity_callback(dense, keep=True)
    assert forced is not None and forced.num_pruned == 0
    sparse = make_model()
    prune_(sparse, 0.5)
    callback = keep_sparsity_callback(sparse)
    assert callback is not None and set(callback.masks) == set(target_names(sparse))
    total = sum(m.numel() for m in callback.masks.values())
    assert callback.num_pruned == round(0.5 * total)
    assert keep_sparsity_callback(sparse, keep=False) is None
    for m in callback.masks.values():
        assert m.dtype == torch.bool
    with pytest.raises(ValueError, match="bool tensor"):
        KeepSparsityCallback({"x": torch.ones(2)})


def test_from_checkpoint_resolves_names_of_another_model_class(tmp_path):
    model = make_model()
    prune_(model, 0.6)
    # Pruned as a bare BertModel: names lack the "bert." prefix of the classification model.
    base_names = [
        n
        for n, _ in BertModel(tiny_bert_config()).named_parameters()
        if ".layer.0." in n and n.endswith("query.weight")
    ]
    (tmp_path / "sparsity_config.json").write_text(json.dumps({"method": "magnitude", "targets": base_names}))
    callback = KeepSparsityCallback.from_checkpoint(model, tmp_path)
    assert list(callback.masks) == ["bert.encoder.layer.0.attention.self.query.weight"]
    assert torch.equal(
        callback.masks[list(callback.masks)[0]],
        masks_from_zeros(model, names=list(callback.masks))[list(callback.masks)[0]],
    )
    # The auto helper prefers the checkpoint's list over the default targets.
    assert list(keep_sparsity_callback(model, tmp_path).masks) == list(callback.masks)
    with pytest.raises(ValueError, match="matches no parameter"):
        resolve_parameter_names(model, ["encoder.layer.9.attention.self.query.weight"])


DDP_WORKER = r"""
import json, os, sys
import torch
import torch.distributed as dist
sys.path.insert(0, os.environ["TESTS_DIR"])
from conftest import exit_worker
from test_sparse_finetune import dataset, make_model, prune_
from cram_hf import CrAMConfig, CrAMTrainer
from cram_hf.sparse_finetune import KeepSparsityCallback


def check(out):
    model = make_model()
    zeros = prune_(model)
    callback = KeepSparsityCallback.from_model(model)
    args = CrAMConfig(output_dir=out + "/out", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                      max_steps=4, learning_rate=5e-2, weight_decay=0.1, report_to=[], save_strategy="no",
                      use_cpu=True, ddp_backend="gloo", disable_tqdm=True, seed=3, cram_rho=0.05,
                      cram_sparsities=["0.5", "2:4"])
    trainer = CrAMTrainer(model=model, args=args, train_dataset=dataset(), callbacks=[callback])
    trainer.train()
    params = dict(model.named_parameters())
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, flat)
    if dist.get_rank() == 0:
        initial = torch.cat([p.reshape(-1) for p in make_model().parameters()])
        with open(out + "/result.json", "w") as f:
            json.dump({"world_size": dist.get_world_size(),
                       "replicas_identical": all(torch.equal(gathered[0], g) for g in gathered[1:]),
                       "pattern_kept": all(torch.equal(params[n].detach() == 0, z) for n, z in zeros.items()),
                       "trained": bool((flat != initial).any())}, f)


torch.set_num_threads(1)
check(sys.argv[1])
exit_worker()
"""


@pytest.mark.slow
def test_ddp_two_ranks_keep_the_same_exact_mask(tmp_path):
    """torchrun, 2 gloo ranks, CrAM + accumulation: both replicas identical, the pattern exact."""
    import os
    import subprocess

    from conftest import free_port, torchrun

    (tmp_path / "worker.py").write_text(DDP_WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TESTS_DIR=os.path.dirname(__file__))
    cmd = torchrun("--nproc_per_node", 2, "--master_port", free_port(), tmp_path / "worker.py", tmp_path)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result == {"world_size": 2, "replicas_identical": True, "pattern_kept": True, "trained": True}


def test_gradient_hook_turns_overflow_at_pruned_entries_into_zero():
    model = make_model()
    zeros = prune_(model)
    callback = KeepSparsityCallback.from_model(model)
    callback.bind(model)
    name, z = next(iter(zeros.items()))
    p = dict(model.named_parameters())[name]
    torch.autograd.backward(p, torch.full_like(p, float("inf")))  # an overflowing gradient everywhere
    assert torch.isfinite(p.grad[z]).all() and (p.grad[z] == 0).all()
    assert torch.isinf(p.grad[~z]).all()
    callback.unbind()
