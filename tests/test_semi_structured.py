"""2:4 checkpoints on 2:4 kernels (load_sparse(semi_structured=True)): where the kernels cannot run (here: a
CPU) the model stays dense with one warning and its outputs are those of the plain load, bit for bit; a
checkpoint or model that is not 2:4 is refused. The kernels themselves are tested in tests/test_gpu.py."""

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf import load_sparse, prune, save_sparse
from cram_hf.semi_structured import to_semi_structured


def saved(tmp_path, level):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    report = prune(model, level)
    out = tmp_path / f"model-{str(level).replace(':', '_')}"
    save_sparse(model, out, report=report)
    return out


def test_without_the_kernels_a_2_4_checkpoint_stays_dense_with_one_warning(tmp_path, caplog):
    path = saved(tmp_path, "2:4")
    plain = load_sparse(path)
    with caplog.at_level("WARNING", logger="cram_hf.semi_structured"):
        swapped = load_sparse(path, semi_structured=True)
    warnings = [r for r in caplog.records if r.name == "cram_hf.semi_structured"]
    assert len(warnings) == 1 and "12 of 12 target weights stay dense" in warnings[0].getMessage()
    assert "2:4 kernels need a CUDA GPU (the weights are on cpu)" in warnings[0].getMessage()
    assert all(not p.is_sparse and p.layout == torch.strided for p in swapped.parameters())
    ids = torch.randint(5, 64, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain(input_ids=ids).logits, swapped(input_ids=ids).logits)


def test_what_is_not_2_4_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"^semi_structured: .* is not a 2:4 checkpoint .* pattern None"):
        load_sparse(saved(tmp_path, 0.5), semi_structured=True)
    model = load_sparse(saved(tmp_path, "2:4"))
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.endswith("query.weight")).fill_(1.0)
    with pytest.raises(ValueError, match=r"^semi_structured: .*query.weight' .* is not 2:4 sparse"):
        to_semi_structured(model)
