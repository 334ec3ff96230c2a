"""One CrAM step of the trainer against the independent re-computation in reference_cram.py."""

import copy

import pytest
import torch
from reference_cram import reference_direction
from torch.utils.data import SequentialSampler
from transformers import BertForMaskedLM, Trainer, TrainingArguments

from cram_hf import CrAMConfig, CrAMTrainer

LR = 0.5


class InOrder(CrAMTrainer):
    """Batches in dataset order, so the reference sees the same micro-batches."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def make_data(n=8, seq=10, vocab=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [
        {
            "input_ids": torch.randint(5, vocab, (seq,), generator=gen),
            "labels": torch.randint(5, vocab, (seq,), generator=gen),
        }
        for _ in range(n)
    ]


def stack(rows):
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def sgd_args(tmp_path, **cram):
    return CrAMConfig(
        output_dir=str(tmp_path / "out"),
        max_steps=1,
        per_device_train_batch_size=4,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        weight_decay=0.0,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        seed=7,
        dataloader_drop_last=True,
        **cram,
    )


def run_one_step(model, args, data):
    trainer = InOrder(model=model, args=args, train_dataset=data)
    level = trainer.cram.level_at(0)
    trainer.train()
    if isinstance(level, tuple):
        level = f"{level[0]}:{level[1]}"
    return trainer, level


VARIANTS = [
    dict(cram_plus=True, cram_sparse_grad=True, cram_scope="global", cram_sparsities=["0.7"]),
    dict(cram_plus=False, cram_sparse_grad=True, cram_scope="global", cram_sparsities=["0.5"]),
    dict(cram_plus=True, cram_sparse_grad=False, cram_scope="global", cram_sparsities=["0.9"]),
    dict(cram_plus=False, cram_sparse_grad=False, cram_scope="layer", cram_sparsities=["0.6"]),
    dict(cram_plus=True, cram_sparse_grad=True, cram_scope="layer", cram_sparsities=["0.8"]),
    dict(cram_plus=True, cram_sparse_grad=True, cram_sparsities=["2:4"]),
    dict(cram_plus=False, cram_sparse_grad=True, cram_sparsities=["4:8"]),
    dict(cram_plus=True, cram_sparse_grad=True, cram_sparsities=["0.7"], cram_grad_norm=True, cram_rho=0.3),
    dict(
        cram_plus=True,
        cram_sparse_grad=True,
        cram_sparsities=["0.5"],
        cram_targets=[r"attention\.self\.(query|value)\.weight$"],
    ),
    dict(cram_plus=True, cram_sparse_grad=True, cram_sparsities=[]),  # SAM-like: no compression
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k[5:]}={v[k]}" for k in v))
def test_one_step_matches_reference(tmp_path, tiny_config, variant):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    before = copy.deepcopy(model)
    data = make_data(4)
    variant = dict(variant)
    rho = variant.pop("cram_rho", 0.1)
    args = sgd_args(tmp_path, cram_rho=rho, **variant)
    trainer, level = run_one_step(model, args, data)
    d, masks = reference_direction(
        before,
        stack(data),
        rho=rho,
        level=level,
        plus=variant["cram_plus"],
        sparse_grad=variant["cram_sparse_grad"],
        scope=variant.get("cram_scope", "global"),
        grad_norm=variant.get("cram_grad_norm", False),
        targets=variant.get("cram_targets"),
    )
    assert [n for n, _ in trainer.cram.targets] == (
        list(masks) if masks else [n for n, _ in trainer.cram.targets]
    )
    after = dict(model.named_parameters())
    for name, p in before.named_parameters():
        expected = p.detach() - LR * d[name]
        torch.testing.assert_close(after[name].detach(), expected, rtol=1e-5, atol=1e-6, msg=name)
    if masks and isinstance(level, float):
        pruned = sum(int((m == 0).sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        if variant.get("cram_scope") != "layer":
            assert pruned == round(level * total)


def test_update_differs_from_plain_sgd(tmp_path, tiny_config):
    """Guards the test above against a reference that degenerates to plain SGD."""
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    before = copy.deepcopy(model)
    data = make_data(4)
    run_one_step(model, sgd_args(tmp_path, cram_rho=0.1, cram_sparsities=["0.7"], cram_plus=False), data)
    plain = copy.deepcopy(before)
    run_one_step(plain, sgd_args(tmp_path, cram_rho=0.0, cram_sparsities=[]), data)
    w = "bert.encoder.layer.1.output.dense.weight"
    start = dict(before.named_parameters())[w]
    cram_update = dict(model.named_parameters())[w] - start
    plain_update = dict(plain.named_parameters())[w] - start
    # With a 70 % sparse gradient most entries of the CrAM update are zero: far from the plain update.
    assert (cram_update - plain_update).norm() > 0.3 * plain_update.norm()


def test_gradient_accumulation_is_mean_of_per_micro_batch_directions(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    before = copy.deepcopy(model)
    data = make_data(8)
    args = sgd_args(tmp_path, cram_rho=0.2, cram_sparsities=["0.7"])
    args.per_device_train_batch_size = 2
    args.gradient_accumulation_steps = 4
    _, level = run_one_step(model, args, data)
    ds = [
        reference_direction(before, stack(data[i : i + 2]), rho=0.2, level=level)[0] for i in range(0, 8, 2)
    ]
    after = dict(model.named_parameters())
    for name, p in before.named_parameters():
        mean_d = sum(d[name] for d in ds) / len(ds)
        torch.testing.assert_close(after[name].detach(), p.detach() - LR * mean_d, rtol=1e-5, atol=1e-6)
    # Perturbing with the accumulated (or K-scaled) gradient instead would differ measurably.
    wrong = reference_direction(before, stack(data[0:2]), rho=0.2 / 4, level=level)[0]
    w = "bert.encoder.layer.1.output.dense.weight"
    assert not torch.allclose(wrong[w], ds[0][w], atol=1e-6)


def test_weights_restored_bit_exactly_and_grad_holds_direction(tiny_config, tmp_path):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    trainer = CrAMTrainer(
        model=model,
        args=CrAMConfig(
            output_dir=str(tmp_path), report_to=[], use_cpu=True, cram_rho=0.5, cram_sparsities=["0.9"]
        ),
    )
    trainer.create_optimizer_and_scheduler(num_training_steps=1)
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop; the stock step reads it too
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.training_step(model, stack(make_data(4)))
    for n, p in model.named_parameters():
        assert torch.equal(p, snapshot[n]), n
        assert p.grad is not None and torch.isfinite(p.grad).all()
    # No hook is left behind: a later plain backward is unmasked.
    assert all(not p._backward_hooks for _, p in trainer.cram.targets)


def test_rho_zero_and_no_levels_is_the_stock_trainer(tmp_path, tiny_config):
    data = make_data(16)
    results = []
    for cls, args_cls, extra in (
        (Trainer, TrainingArguments, {}),
        (CrAMTrainer, CrAMConfig, dict(cram_rho=0.0, cram_sparsities=[])),
    ):
        torch.manual_seed(0)
        model = BertForMaskedLM(tiny_bert(tiny_config))
        # Accumulation: a trainer that changed the stock loss weighting (model_accepts_loss_kwargs) would differ.
        args = args_cls(
            output_dir=str(tmp_path / cls.__name__),
            max_steps=4,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            report_to=[],
            save_strategy="no",
            seed=3,
            learning_rate=1e-3,
            **extra,
        )
        trainer = cls(model=model, args=args, train_dataset=data)
        trainer.train()
        results.append(
            (
                torch.cat([p.detach().flatten() for p in model.parameters()]),
                [h.get("loss") for h in trainer.state.log_history],
            )
        )
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1] == results[1][1]


def tiny_bert(config):
    config = copy.deepcopy(config)
    config.hidden_dropout_prob = 0.1  # dropout on: the RNG streams must match too
    return config


def test_level_sequence_is_a_function_of_seed_and_step(tiny_config, tmp_path):
    model = BertForMaskedLM(tiny_config)
    args = CrAMConfig(output_dir=str(tmp_path), report_to=[], cram_sparsities=["0.5", "0.7", "0.9", "2:4"])
    a = CrAMTrainer(model=model, args=args).cram
    b = CrAMTrainer(model=copy.deepcopy(model), args=args).cram
    seq = [a.level_at(t) for t in range(200)]
    assert seq == [b.level_at(t) for t in range(200)]
    assert seq[150:] == [a.level_at(t) for t in range(150, 200)]  # no hidden state: resumable
    assert set(seq) == {0.5, 0.7, 0.9, (2, 4)}


def test_trainer_logs_cram_metrics(tmp_path, tiny_config):
    torch.manual_seed(0)
    trainer = CrAMTrainer(
        model=BertForMaskedLM(tiny_config),
        train_dataset=make_data(16),
        args=CrAMConfig(
            output_dir=str(tmp_path),
            max_steps=4,
            logging_steps=2,
            report_to=[],
            per_device_train_batch_size=4,
            save_strategy="no",
            cram_sparsities=["0.6", "0.8"],
        ),
    )
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for entry in logs:
        assert entry["cram_sparsity"] in (0.6, 0.7, 0.8)
        assert entry["cram_compressed_loss"] > 0 and entry["cram_perturbation_norm"] > 0
