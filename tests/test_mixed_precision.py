"""fp16 (loss scaling) and bf16 paths of CrAMTrainer on CPU.

Accelerate creates no GradScaler on CPU, so the fp16 tests install torch's CPU GradScaler on the
trainer's accelerator before training: the optimizer wrapper, clipping (unscale_) and step skipping are
then the same code paths a GPU run takes. What only a GPU can show — fp16 autocast kernels and real
overflows in half precision — runs in test_gpu.py when CUDA is present (skipped otherwise)."""

import pytest
import torch
from transformers import BertForMaskedLM

from cram_hf import CrAMConfig, CrAMTrainer


def learnable_data(n=32, seq=12):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (4, seq), generator=gen)
    return [{"input_ids": ids[i % 4], "labels": ids[i % 4]} for i in range(n)]


def args(tmp_path, steps, fp16=False, **kw):
    kw = {"learning_rate": 3e-3, "cram_sparsities": ["0.5", "0.7"], **kw}
    config = CrAMConfig(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        logging_steps=1,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        seed=0,
        **kw,
    )
    # CrAMConfig refuses fp16 without a GPU (no loss scaling on CPU); these tests install a CPU GradScaler
    # themselves, so they switch fp16 on after that check.
    config.fp16 = fp16
    return config


def test_fp16_without_a_gpu_is_refused_up_front(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("has a GPU")
    with pytest.raises(ValueError, match="fp16: there is no GPU"):
        CrAMConfig(output_dir=str(tmp_path), fp16=True, use_cpu=True)


def install_cpu_scaler(trainer, **kwargs):
    """What Accelerate sets up for fp16 on a GPU: a GradScaler, and native AMP so that the Trainer's
    clipping unscales the gradients first."""
    trainer.accelerator.scaler = torch.amp.GradScaler("cpu", **kwargs)
    trainer.accelerator.native_amp = True
    return trainer.accelerator.scaler


class Overflow(CrAMTrainer):
    """Makes the clean pass of optimizer step `at` overflow."""

    at = 2

    def compute_loss(self, model, inputs, *a, **kw):
        loss = super().compute_loss(model, inputs, *a, **kw)
        if self.state.global_step == self.at and not getattr(self, "_second", False):
            loss = loss * float("inf")
        self._second = not getattr(self, "_second", False)
        return loss


def test_fp16_overflow_skips_the_step_like_the_stock_scaler(tmp_path, tiny_config):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    trainer = Overflow(model=model, args=args(tmp_path, 5, fp16=True), train_dataset=learnable_data())
    scaler = install_cpu_scaler(trainer, init_scale=2.0**12)
    snapshots, scales = {}, {}

    from transformers import TrainerCallback

    class Watch(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            snapshots[state.global_step] = torch.cat(
                [p.detach().flatten().clone() for p in model.parameters()]
            )
            scales[state.global_step] = scaler.get_scale()

    trainer.add_callback(Watch())
    trainer.train()
    # Step index 2 (the third step) overflowed: weights unchanged, scale halved, training went on.
    assert torch.equal(snapshots[2], snapshots[3])
    assert scales[3] == scales[2] / 2
    assert not torch.equal(snapshots[3], snapshots[4]) and torch.isfinite(snapshots[5]).all()
    skipped = [h.get("cram_skipped_steps", 0) for h in trainer.state.log_history if "loss" in h]
    assert skipped == [0, 0, 1, 0, 0]


def test_fp16_perturbation_uses_the_unscaled_gradient(tmp_path, tiny_config):
    norms = []
    for scale in (1.0, 2.0**14):
        torch.manual_seed(0)
        trainer = CrAMTrainer(
            model=BertForMaskedLM(tiny_config),
            args=args(tmp_path, 3, fp16=True),
            train_dataset=learnable_data(),
        )
        install_cpu_scaler(trainer, init_scale=scale, growth_interval=1000)
        trainer.train()
        norms.append([h["cram_perturbation_norm"] for h in trainer.state.log_history if "loss" in h])
    # Not using S would be off by a factor 16384; what remains is fp16 round-off (small gradients
    # underflow at S = 1, which is why fp16 scales at all).
    # Compared at the first step: later steps drift apart by that round-off through the updates.
    assert norms[0][0] == pytest.approx(norms[1][0], rel=1e-3)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_step_is_the_fp32_step_up_to_rounding(tmp_path, tiny_config, precision):
    """One SGD step with CrAM+ in bf16 autocast / fp16 with loss scaling against the same step in fp32: the
    update must point the same way with the same length. Skipping the compressed pass, perturbing with the
    scaled gradient or masking differently would each move it far off."""
    updates = []
    for mode in ("fp32", precision):
        torch.manual_seed(0)
        model = BertForMaskedLM(tiny_config)
        before = torch.cat([p.detach().flatten() for p in model.parameters()])
        config = args(
            tmp_path,
            1,
            fp16=mode == "fp16",
            bf16=mode == "bf16",
            optim="sgd",
            learning_rate=0.5,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,
            cram_rho=0.2,
            cram_sparsities=["0.7"],
        )
        trainer = CrAMTrainer(model=model, args=config, train_dataset=learnable_data(4))
        if mode == "fp16":
            install_cpu_scaler(trainer, init_scale=2.0**10)
        trainer.train()
        updates.append(torch.cat([p.detach().flatten() for p in model.parameters()]) - before)
    cosine = torch.nn.functional.cosine_similarity(updates[0], updates[1], dim=0)
    assert cosine > 0.99, float(cosine)
    assert abs(float(updates[1].norm() / updates[0].norm()) - 1) < 0.05
