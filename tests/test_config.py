import dataclasses
import json
import re

import pytest
import torch
from transformers import BertForMaskedLM, TrainingArguments

from cram_hf import CrAMConfig, CrAMTrainer


@pytest.fixture
def config(tmp_path):
    """``CrAMConfig(**fields)`` writing (if anything) under the test's own temporary folder."""
    return lambda **kw: CrAMConfig(output_dir=str(tmp_path), report_to=[], **kw)


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("cram_rho", -0.1, "cram_rho"),
        ("cram_rho", float("nan"), "cram_rho"),
        ("cram_rho", "big", "cram_rho"),
        ("cram_sparsities", ["1.0"], "cram_sparsities"),
        ("cram_sparsities", ["3:2"], "cram_sparsities"),
        ("cram_sparsities", [124], "quote"),
        ("cram_scope", "row", "cram_scope"),
        ("cram_targets", ["(unclosed"], "cram_targets"),
        ("cram_plus", "yes", "cram_plus"),
        ("optim", "lomo", "optim"),
    ],
)
def test_bad_values_are_refused_with_the_field_name(config, field, value, msg):
    with pytest.raises(ValueError, match=msg):
        config(**{field: value})


def test_levels_are_normalised(config):
    args = config(cram_sparsities=["0.5", 0.7, " 2 : 4", 0.123456789])
    assert args.cram_sparsities == ["0.5", "0.7", "2:4", "0.123456789"]  # the type says list[str]
    assert args.cram_levels == [0.5, 0.7, (2, 4), 0.123456789]
    assert config(cram_rho=0.0, cram_sparsities=[]).cram_enabled is False


def test_trainer_checks_targets_against_the_model(config, tiny_config, tmp_path):
    model = BertForMaskedLM(tiny_config)
    with pytest.raises(ValueError, match="matches no parameter"):
        CrAMTrainer(model=model, args=config(cram_targets=[r"nothing_like_this"]))
    with pytest.raises(ValueError, match="matches no parameter"):  # checked even without levels
        CrAMTrainer(model=model, args=config(cram_targets=[r"nothing_like_this"], cram_sparsities=[]))
    with pytest.raises(ValueError, match="only 2-D"):
        CrAMTrainer(model=model, args=config(cram_targets=[r"LayerNorm"]))
    with pytest.raises(ValueError, match="not divisible by M=32"):
        CrAMTrainer(model=model, args=config(cram_sparsities=["16:32"]))  # hidden size 16
    with pytest.raises(TypeError, match="CrAMConfig"):
        CrAMTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to=[]))


def test_default_targets_are_the_linear_weights_of_the_layers(config, tiny_config):
    model = BertForMaskedLM(tiny_config)
    names = [n for n, _ in CrAMTrainer(model=model, args=config()).cram.targets]
    assert len(names) == 6 * tiny_config.num_hidden_layers
    assert all(n.startswith("bert.encoder.layer.") and n.endswith(".weight") for n in names)
    assert not any("LayerNorm" in n or "embeddings" in n or n.startswith("cls.") for n in names)


def test_bert_base_default_target_count():
    from transformers import BertConfig, BertForSequenceClassification

    from cram_hf.targets import default_target_names

    with torch.device("meta"):
        model = BertForSequenceClassification(BertConfig())
    names = default_target_names(model)
    params = dict(model.named_parameters())
    assert len(names) == 72
    assert sum(params[n].numel() for n in names) == 84_934_656


def own_fields():
    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    return [f for f in dataclasses.fields(CrAMConfig) if f.name not in inherited]


def documented_sections() -> dict:
    """``{field: (heading, first line of its entry)}`` from ``CrAMConfig``'s ``Parameters:`` (``> Heading`` lines)."""
    sections, heading = {}, None
    for line in CrAMConfig.__doc__.splitlines():
        entry = re.match(r"^\s*> (.*)$", line) or re.match(r"^\s*(\w+) \(`", line)
        if entry and line.lstrip().startswith(">"):
            heading = entry.group(1)
        elif entry:
            sections[entry.group(1)] = (heading, line)
    return sections


def test_every_field_has_help_and_is_documented_with_its_default():
    sections = documented_sections()
    for f in own_fields():
        assert f.metadata.get("help"), f"{f.name}: no help="
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        shown = json.dumps(default) if isinstance(default, (str, list)) else str(default)
        assert f"defaults to `{shown}`" in sections[f.name][1], f.name


def test_the_distillation_fields_are_one_group():
    distill = {name: heading for name, (heading, _) in documented_sections().items() if "distill" in name}
    assert set(distill) == {f.name for f in own_fields() if f.name.startswith("distill_")}
    assert {heading.split(" (")[0] for heading in distill.values()} == {"Distillation"}
