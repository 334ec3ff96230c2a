"""Sparse checkpoints: plain from_pretrained round trip, compact round trip, verification, atomic writes."""

import json
import os

import pytest
import torch
from conftest import make_tiny_tokenizer, tiny_bert_config
from transformers import AutoModelForMaskedLM, AutoTokenizer, BertForMaskedLM

import cram_hf
from cram_hf.checkpoint import (
    COMPACT_WEIGHTS,
    SPARSITY_CONFIG,
    check_model_source,
    load_sparse,
    save_sparse,
)
from cram_hf.pruning import prune


def _pruned(level, seed=0, **overrides):
    torch.manual_seed(seed)
    model = BertForMaskedLM(tiny_bert_config(**overrides))
    return model, prune(model, level)


def _bits(t):
    ints = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    return t.contiguous().view(ints[t.element_size()]) if t.is_floating_point() else t


def assert_bitwise_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert sa[k].dtype == sb[k].dtype, k
        assert torch.equal(_bits(sa[k]), _bits(sb[k])), k  # bit patterns: -0.0 != +0.0


def test_dense_checkpoint_loads_with_plain_from_pretrained(tmp_path):
    model, report = _pruned(0.7)
    tokenizer = make_tiny_tokenizer(tmp_path / "tok")
    out = tmp_path / "ckpt"
    config = save_sparse(model, out, tokenizer, report, base_model="google-bert/bert-base-uncased")

    loaded = AutoModelForMaskedLM.from_pretrained(out)
    assert type(loaded) is BertForMaskedLM
    assert_bitwise_equal(model, loaded)
    assert AutoTokenizer.from_pretrained(out).vocab == tokenizer.vocab
    with open(out / "config.json") as f:
        assert "quantization_config" not in json.load(f)
    with open(out / SPARSITY_CONFIG) as f:
        on_disk = json.load(f)
    assert on_disk == config
    assert on_disk["method"] == "magnitude" and on_disk["level"] == "0.7" and on_disk["scope"] == "global"
    assert on_disk["sparsity"] == 0.7 and on_disk["pattern"] is None
    assert on_disk["targets"] == report.targets and on_disk["target_rule"] == "default"
    assert on_disk["achieved"]["target_zeros"] == round(0.7 * report.target_numel)
    assert on_disk["achieved"]["target_sparsity"] == report.target_sparsity
    assert on_disk["library_version"] == cram_hf.__version__
    assert on_disk["base_model"] == "google-bert/bert-base-uncased" and not on_disk["base_model_is_local"]
    assert on_disk["storage"] == "dense" and os.path.isfile(out / "model.safetensors")
    # load_sparse: same model, mask verified
    assert_bitwise_equal(model, load_sparse(out))


@pytest.mark.parametrize("level", [0.7, "2:4", "4:8"])
def test_compact_round_trip_is_bit_exact(tmp_path, level):
    model, report = _pruned(level)
    params = dict(model.named_parameters())
    with torch.no_grad():  # a kept -0.0 must come back as -0.0, not +0.0
        w = params[report.targets[0]]
        w.view(-1)[(w.view(-1) != 0).nonzero()[0]] = -0.0
    save_sparse(model, tmp_path / "c", report=report, compact=True)

    assert sorted(os.listdir(tmp_path / "c")) == ["config.json", COMPACT_WEIGHTS, SPARSITY_CONFIG]
    loaded = load_sparse(tmp_path / "c")
    assert type(loaded) is BertForMaskedLM
    assert_bitwise_equal(model, loaded)
    # the tie of the MLM decoder to the word embeddings survives
    assert (
        loaded.cls.predictions.decoder.weight.data_ptr()
        == loaded.bert.embeddings.word_embeddings.weight.data_ptr()
    )
    # no model.safetensors: plain from_pretrained fails loudly instead of initialising random targets
    with pytest.raises(OSError):
        AutoModelForMaskedLM.from_pretrained(tmp_path / "c")


def test_compact_is_measurably_smaller(tmp_path):
    sizes = {}
    for level in (0.5, 0.9, "2:4"):
        model, report = _pruned(level, hidden_size=64, intermediate_size=256, num_attention_heads=4)
        save_sparse(model, tmp_path / f"d{level}", report=report)
        save_sparse(model, tmp_path / f"c{level}", report=report, compact=True)
        dense = os.path.getsize(tmp_path / f"d{level}" / "model.safetensors")
        sizes[level] = os.path.getsize(tmp_path / f"c{level}" / COMPACT_WEIGHTS) / dense
    # targets are ~90 % of this model: (1 - s) + 1/32 of their bytes, the rest dense
    assert sizes[0.5] < 0.62 and sizes["2:4"] < 0.62
    assert sizes[0.9] < 0.25
    assert sizes[0.9] < sizes[0.5]


def test_load_sparse_refuses_weights_that_do_not_match_the_mask(tmp_path):
    model, report = _pruned(0.5)
    save_sparse(model, tmp_path / "ok", report=report)
    name = report.targets[3]
    with torch.no_grad():  # one pruned weight comes back to life
        w = dict(model.named_parameters())[name]
        w.view(-1)[(w.view(-1) == 0).nonzero()[0]] = 1.0
    model.save_pretrained(tmp_path / "ok")  # overwrite the weights, keep sparsity_config.json
    with pytest.raises(ValueError, match=f"{name} has .* zeros but"):
        load_sparse(tmp_path / "ok")


def test_load_sparse_verifies_the_nm_pattern(tmp_path):
    model, report = _pruned("2:4")
    name = report.targets[0]
    with torch.no_grad():  # move a nonzero into the neighbouring group: same count, pattern broken
        w = dict(model.named_parameters())[name]
        row = w[0]
        src = int((row[0:4] != 0).nonzero()[0])
        dst = int((row[4:8] == 0).nonzero()[0]) + 4
        row[dst], row[src] = row[src].clone(), 0.0
    for compact in (False, True):
        out = tmp_path / f"nm{compact}"
        save_sparse(model, out, report=report, compact=compact)
        with pytest.raises(ValueError, match="violates the 2:4 pattern"):
            load_sparse(out)


def test_load_sparse_checks_the_compact_mask_against_the_config(tmp_path):
    model, report = _pruned(0.7)
    out = tmp_path / "c"
    save_sparse(model, out, report=report, compact=True)
    with open(out / SPARSITY_CONFIG) as f:
        config = json.load(f)
    config["achieved"]["per_matrix"][report.targets[1]]["zeros"] -= 1
    with open(out / SPARSITY_CONFIG, "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match="do not match the mask"):
        load_sparse(out)


def test_non_empty_output_dir_is_refused_unless_overwrite(tmp_path):
    model, report = _pruned(0.5)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        save_sparse(model, out, report=report)
    assert os.listdir(out) == ["keep.txt"]
    save_sparse(model, out, report=report, overwrite=True)
    assert "keep.txt" not in os.listdir(out) and os.path.isfile(out / SPARSITY_CONFIG)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temporary folder left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    save_sparse(model, empty, report=report)  # an existing empty folder is fine
    assert os.path.isfile(empty / "model.safetensors")


def test_a_failed_save_leaves_the_old_checkpoint_and_no_temp_files(tmp_path):
    model, report = _pruned(0.5)
    out = tmp_path / "out"
    save_sparse(model, out, report=report)
    before = sorted(os.listdir(out))

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_sparse(model, out, BrokenTokenizer(), report=report, overwrite=True)
    assert sorted(os.listdir(out)) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_save_without_report_measures_the_default_targets(tmp_path):
    model, report = _pruned("2:4")
    config = save_sparse(model, tmp_path / "m")
    assert config["method"] == "measured" and config["level"] is None
    assert config["achieved"]["target_zeros"] == report.target_zeros
    assert config["base_model"] is None


def test_model_source_checks(tmp_path):
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    BertForMaskedLM(tiny_bert_config()).config.save_pretrained(no_weights)
    with pytest.raises(FileNotFoundError, match="no weights"):
        check_model_source(str(no_weights))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        check_model_source(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such directory"):
        check_model_source(str(tmp_path / "missing"))
    check_model_source("google-bert/bert-base-uncased")  # a Hub id is left to from_pretrained


@pytest.mark.parametrize("compact", [False, True])
def test_load_sparse_into_another_head_keeps_the_pruned_body(tmp_path, compact):
    from transformers import BertForSequenceClassification, BertModel

    model, report = _pruned("2:4")
    save_sparse(model, tmp_path / "c", report=report, compact=compact)
    body = model.bert.state_dict()
    for cls, prefix in ((BertForSequenceClassification, "bert."), (BertModel, "")):
        other = load_sparse(tmp_path / "c", cls)  # names map bert.encoder... <-> encoder...; pattern verified
        assert type(other) is cls
        state = other.state_dict()
        for k, v in body.items():
            if not k.startswith("pooler"):  # BertForMaskedLM has no pooler
                assert torch.equal(state[prefix + k], v), k
