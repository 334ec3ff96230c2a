"""CrAM targets on a PEFT (LoRA) model: the default rule picks the base weights, never the adapters, and
a target set that is entirely frozen is refused with advice."""

import pytest
import torch

peft = pytest.importorskip("peft")

from conftest import tiny_bert_config  # noqa: E402

from cram_hf.targets import (  # noqa: E402
    check_trainable_targets,
    default_target_names,
    named_targets,
    target_names,
)


def lora_bert():
    from transformers import BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config())
    return peft.get_peft_model(model, peft.LoraConfig(target_modules=["query", "value"], r=4))


def test_default_targets_of_a_lora_model_are_the_base_weights_not_the_adapters():
    model = lora_bert()
    names = default_target_names(model)
    assert names and not [n for n in names if "lora_" in n]
    # The wrapped query/value keep their deployable weight (base_layer.weight); key, attention output,
    # intermediate and output are plain Linears: 6 per layer, 2 layers, as for the bare model.
    base = [n for n in names if n.endswith("base_layer.weight")]
    assert len(base) == 4 and all((".query." in n) or (".value." in n) for n in base)
    assert len(names) == 12
    params = dict(model.named_parameters())
    assert all(params[n].dim() == 2 for n in names)
    assert target_names(model) == names


def test_frozen_only_targets_are_refused_with_advice():
    model = lora_bert()
    targets = named_targets(model)
    assert targets and not any(p.requires_grad for _, p in targets)  # peft froze the base weights
    with pytest.raises(ValueError, match=r"merge_and_unload\(\); model\.requires_grad_\(True\)") as err:
        check_trainable_targets(targets)
    assert "cram_targets" in str(err.value) and "frozen" in str(err.value)


def test_trainable_targets_pass_the_check():
    model = lora_bert()
    merged = lora_bert().merge_and_unload()  # the advice in the error: merge, then unfreeze
    with pytest.raises(ValueError, match="frozen"):
        check_trainable_targets(named_targets(merged))  # peft leaves the merged weights frozen
    merged.requires_grad_(True)
    assert not [n for n in target_names(merged) if "lora_" in n or "base_layer" in n]
    check_trainable_targets(named_targets(merged))
    # One trainable target among frozen ones is enough (e.g. a partly frozen model).
    targets = named_targets(model)
    targets[0][1].requires_grad_(True)
    check_trainable_targets(targets)
    check_trainable_targets([])  # nothing chosen: nothing to check (target_names refuses that itself)


def test_cram_trainer_refuses_a_lora_model_whose_targets_are_frozen(tmp_path):
    from cram_hf import CrAMConfig, CrAMTrainer

    args = CrAMConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="merge_and_unload"):
        CrAMTrainer(model=lora_bert(), args=args)
    # Without compression levels (perturbation only), a LoRA model trains its adapters as usual.
    CrAMTrainer(
        model=lora_bert(),
        args=CrAMConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, cram_sparsities=[]),
    )
