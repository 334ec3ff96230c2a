"""An interrupted and resumed CrAM run ends where the uninterrupted one does (dropout on, MLM masking)."""

import datasets
import pytest
import torch
from conftest import WORDS
from transformers import BertForMaskedLM, TrainerCallback

from cram_hf import CrAMConfig
from cram_hf.mlm import CrAMTrainerForMaskedLM
from cram_hf.mlm_data import ReproducibleMLMCollator, tokenize_for_mlm


class Interrupt(TrainerCallback):
    """Stops the run right after the checkpoint of step 3 is written, as a pre-emption would."""

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == 3:
            control.should_training_stop = True


def run(tmp_path, tokenizer, config, name, resume=None, interrupt=False, **schedule):
    torch.manual_seed(123)
    model = BertForMaskedLM(config)
    raw = datasets.Dataset.from_dict(
        {"text": [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(30)) for i in range(40)]}
    )
    data = tokenize_for_mlm(raw, tokenizer, max_seq_length=16)
    args = CrAMConfig(
        output_dir=str(tmp_path / name),
        max_steps=6,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        save_steps=3,
        save_strategy="steps",
        report_to=[],
        seed=11,
        cram_sparsities=["0.5", "0.7", "2:4"],
        logging_steps=1,
        **schedule,
    )
    trainer = CrAMTrainerForMaskedLM(
        model=model,
        args=args,
        train_dataset=data,
        data_collator=ReproducibleMLMCollator(tokenizer, seed=11),
        callbacks=[Interrupt()] if interrupt else None,
    )
    trainer.train(resume_from_checkpoint=resume)
    return model, trainer


@pytest.mark.parametrize("schedule", [{}, {"cram_probability": 0.5}], ids=["every-step", "probability"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, tiny_tokenizer, tiny_config, schedule):
    tiny_config.vocab_size = len(tiny_tokenizer)
    tiny_config.hidden_dropout_prob = 0.1
    tiny_config.attention_probs_dropout_prob = 0.1
    full, full_trainer = run(tmp_path, tiny_tokenizer, tiny_config, "full", **schedule)
    # "Interrupted" run: stops after step 3, leaving checkpoint-3, then a new process resumes it.
    cut, _ = run(tmp_path, tiny_tokenizer, tiny_config, "cut", interrupt=True, **schedule)
    assert not torch.equal(
        cut.bert.encoder.layer[0].output.dense.weight, full.bert.encoder.layer[0].output.dense.weight
    )
    resumed, resumed_trainer = run(
        tmp_path,
        tiny_tokenizer,
        tiny_config,
        "cut",
        resume=str(tmp_path / "cut" / "checkpoint-3"),
        **schedule,
    )
    for (name, a), b in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
    key = "cram_step_fraction" if schedule else "cram_sparsity"
    levels = [h.get(key) for h in full_trainer.state.log_history if "loss" in h]
    resumed_levels = [h.get(key) for h in resumed_trainer.state.log_history if "loss" in h]
    assert levels == resumed_levels and len(levels) == 6
    if schedule:  # the resumed half mixes both kinds of step, so the schedule was really exercised there
        assert 0 < sum(levels[3:]) < 3
    # A control: a different seed gives different weights, so the equality above is not vacuous.
    assert not torch.allclose(
        full.bert.encoder.layer[0].output.dense.weight,
        BertForMaskedLM(tiny_config).bert.encoder.layer[0].output.dense.weight,
    )
