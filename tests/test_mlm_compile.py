"""CrAMTrainerForMaskedLM under torch_compile=True: the masked-position hook must go on the real model's
output embedding, and the compiled wrapper must not be truth-tested (``bool()`` calls ``len()``)."""

import datasets
import pytest
import torch
from conftest import WORDS
from transformers import BertForMaskedLM

from cram_hf import CrAMConfig
from cram_hf.mlm import CrAMTrainerForMaskedLM, masked_lm_loss
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm

TEXT = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(25)) + "." for i in range(20)]


def train(tmp_path, tokenizer, steps=2, compile=True, **cram):
    raw = datasets.Dataset.from_dict({"text": TEXT})
    data = tokenize_for_mlm(raw, tokenizer, max_seq_length=16)
    torch.manual_seed(0)
    from conftest import tiny_bert_config

    model = BertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer)))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = CrAMConfig(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        seed=0,
        logging_steps=1,
        torch_compile=compile,
        torch_compile_backend="eager" if compile else None,
        **cram,
    )
    trainer = CrAMTrainerForMaskedLM(
        model=model, args=args, train_dataset=data, data_collator=ReproducibleMLMCollator(tokenizer, seed=0)
    )
    calls = []
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, a, out: calls.append(tuple(out.shape)))
    trainer.train()
    hook.remove()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    moved = any(not torch.equal(before[n], p) for n, p in model.named_parameters())
    return losses, moved, calls, model


@pytest.mark.parametrize(
    "cram",
    [dict(cram_rho=0.0, cram_sparsities=[]), dict(cram_rho=0.1, cram_sparsities=["0.5", "2:4"])],
    ids=["plain", "cram"],
)
def test_compiled_masked_lm_trainer_trains(tmp_path, tiny_tokenizer, cram):
    losses, moved, calls, model = train(tmp_path / "compiled", tiny_tokenizer, **cram)
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert moved
    # The masked-position hook ran on the real head: its logits are [n_masked, vocab], not
    # [batch, seq, vocab].
    assert calls and all(len(shape) == 2 for shape in calls)
    # Same training as without torch.compile.
    ref_losses, _, ref_calls, ref = train(tmp_path / "eager", tiny_tokenizer, compile=False, **cram)
    assert calls == ref_calls
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_masked_lm_loss_accepts_a_compiled_model(tiny_tokenizer):
    from conftest import tiny_bert_config

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(vocab_size=len(tiny_tokenizer))).eval()
    compiled = torch.compile(model, backend="eager")
    raw = datasets.Dataset.from_dict({"text": TEXT})
    data = tokenize_for_mlm(raw, tiny_tokenizer, max_seq_length=16)
    batch = ReproducibleMLMCollator(tiny_tokenizer, seed=0)([data[i] for i in range(4)])
    torch.testing.assert_close(masked_lm_loss(compiled, batch), model(**batch).loss)
    torch.testing.assert_close(masked_lm_loss(compiled, batch, compiled), model(**batch).loss)
