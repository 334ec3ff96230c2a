"""What only a GPU can show: real fp16 autocast with Accelerate's own GradScaler, bf16 on CUDA, and 2:4
masks in a CUDA model. Skipped cleanly without CUDA (CI has none); run on a GPU with
`pytest tests/test_gpu.py`."""

import pytest
import torch
from transformers import BertForMaskedLM, TrainerCallback

from cram_hf import CrAMConfig, CrAMTrainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def data(n=64, seq=16):
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 64, (4, seq), generator=gen)
    return [{"input_ids": ids[i % 4], "labels": ids[i % 4]} for i in range(n)]


class OverflowAt(CrAMTrainer):
    at = 3

    def compute_loss(self, model, inputs, *a, **kw):
        loss = super().compute_loss(model, inputs, *a, **kw)
        self._calls = getattr(self, "_calls", 0) + 1
        if self.state.global_step == self.at and self._calls % 2 == 1:
            loss = loss * float("inf")
        return loss


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cuda_trains_and_survives_overflow(tmp_path, tiny_config, precision):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    args = CrAMConfig(
        output_dir=str(tmp_path),
        max_steps=40,
        per_device_train_batch_size=8,
        learning_rate=3e-3,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        cram_sparsities=["0.5", "2:4"],
        **{precision: True},
    )
    trainer = (OverflowAt if precision == "fp16" else CrAMTrainer)(
        model=model, args=args, train_dataset=data()
    )
    weights = {}

    class Watch(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            weights[state.global_step] = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    trainer.add_callback(Watch())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1
    if precision == "fp16":
        assert trainer.accelerator.scaler is not None
        assert torch.equal(weights[3], weights[4])  # the overflowing step was skipped
        assert torch.isfinite(weights[40]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_2_4_checkpoint_on_2_4_kernels_gives_the_dense_outputs(tmp_path, dtype):
    from cram_hf import load_sparse, prune, save_sparse

    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 kernels need compute capability 8.0")
    from conftest import tiny_bert_config

    torch.manual_seed(0)
    # Tile-sized matrices (multiples of 64 / 128), as the kernels need.
    model = BertForMaskedLM(tiny_bert_config(hidden_size=256, intermediate_size=512, num_attention_heads=4))
    save_sparse(model, tmp_path / "m", report=prune(model, "2:4"))
    dense = load_sparse(tmp_path / "m", device_map="cuda", dtype=dtype)
    swapped = load_sparse(tmp_path / "m", semi_structured=True, device_map="cuda", dtype=dtype)
    from torch.sparse import SparseSemiStructuredTensor

    assert sum(isinstance(p, SparseSemiStructuredTensor) for p in swapped.parameters()) == 12
    ids = torch.randint(5, 64, (16, 32), device="cuda")  # batch 16: rows of the kernel's tile
    with torch.no_grad():
        expected = dense(input_ids=ids).logits.float()
        got = swapped(input_ids=ids).logits.float()
    torch.testing.assert_close(got, expected, rtol=2e-2, atol=2e-2)
