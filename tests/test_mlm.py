import datasets
import pytest
import torch
from conftest import WORDS
from transformers import BertForMaskedLM

from cram_hf.mlm import (
    CrAMTrainerForMaskedLM,
    ReproducibleMLMCollator,
    evaluate_mlm,
    masked_lm_loss,
    tokenize_for_mlm,
)

TEXT = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(25)) + "." for i in range(60)]


@pytest.fixture
def tokenized(tiny_tokenizer):
    raw = datasets.Dataset.from_dict({"text": TEXT})
    return tokenize_for_mlm(raw, tiny_tokenizer, max_seq_length=16)


def test_blocks_have_the_requested_length_and_special_tokens(tokenized, tiny_tokenizer):
    assert len(tokenized) > 10
    for row in tokenized:
        ids = row["input_ids"]
        assert (
            len(ids) == 16
            and ids[0] == tiny_tokenizer.cls_token_id
            and ids[-1] == tiny_tokenizer.sep_token_id
        )


def test_masking_depends_only_on_seed_and_batch(tokenized, tiny_tokenizer):
    rows = [tokenized[i] for i in range(8)]
    a = ReproducibleMLMCollator(tiny_tokenizer, seed=3)(rows)
    torch.manual_seed(123)  # the global RNG must not matter
    b = ReproducibleMLMCollator(tiny_tokenizer, seed=3)(rows)
    c = ReproducibleMLMCollator(tiny_tokenizer, seed=4)(rows)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["labels"], b["labels"])
    assert not torch.equal(a["labels"], c["labels"])
    masked = a["labels"] != -100
    assert 0.05 < masked.float().mean() < 0.3
    assert not masked[:, 0].any() and not masked[:, -1].any()  # special tokens never masked
    original = torch.tensor([r["input_ids"] for r in rows])
    assert torch.equal(a["labels"][masked], original[masked])
    assert (a["input_ids"][masked] == tiny_tokenizer.mask_token_id).float().mean() > 0.5


def test_masked_position_loss_and_eval_equal_the_full_vocabulary_path(tokenized, tiny_tokenizer, tiny_config):
    torch.manual_seed(0)
    tiny_config.vocab_size = len(tiny_tokenizer)
    model = BertForMaskedLM(tiny_config).eval()
    collator = ReproducibleMLMCollator(tiny_tokenizer, seed=0)
    batch = collator([tokenized[i] for i in range(8)])
    full = model(**batch)
    torch.testing.assert_close(masked_lm_loss(model, batch), full.loss)
    result = evaluate_mlm(model, tokenized, collator, batch_size=8)
    losses, correct, count = 0.0, 0, 0
    for start in range(0, len(tokenized), 8):
        b = collator([tokenized[i] for i in range(start, min(start + 8, len(tokenized)))])
        logits, labels = model(**b).logits, b["labels"]
        m = labels != -100
        losses += float(torch.nn.functional.cross_entropy(logits[m], labels[m], reduction="sum"))
        correct += int((logits[m].argmax(-1) == labels[m]).sum())
        count += int(m.sum())
    assert result["masked_tokens"] == count
    assert result["loss"] == pytest.approx(losses / count, rel=1e-5)
    assert result["accuracy"] == pytest.approx(correct / count)


def test_masked_lm_trainer_step_equals_the_stock_loss_step(tmp_path, tokenized, tiny_tokenizer, tiny_config):
    """CrAMTrainerForMaskedLM computes the vocabulary projection at masked positions only; its CrAM update
    must be the one CrAMTrainer makes with the model's own (full-vocabulary) loss."""
    from cram_hf import CrAMConfig, CrAMTrainer

    tiny_config.vocab_size = len(tiny_tokenizer)
    collator = ReproducibleMLMCollator(tiny_tokenizer, seed=0)
    weights = []
    for cls in (CrAMTrainerForMaskedLM, CrAMTrainer):
        torch.manual_seed(0)
        model = BertForMaskedLM(tiny_config)
        args = CrAMConfig(
            output_dir=str(tmp_path),
            max_steps=3,
            per_device_train_batch_size=8,
            learning_rate=5e-3,
            report_to=[],
            save_strategy="no",
            use_cpu=True,
            cram_sparsities=["0.5", "2:4"],
        )
        cls(model=model, args=args, train_dataset=tokenized, data_collator=collator).train()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-4, atol=1e-6)
