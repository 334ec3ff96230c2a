"""Target selection: the hint given for a model without a layer list must be a regex the package accepts."""

import ast
import re

import pytest
from torch import nn

from cram_hf.targets import target_names


class TwoLinears(nn.Module):
    """No nn.ModuleList, so the default rule finds nothing; LayerNorm weights are 1-D."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 16)
        self.norm = nn.LayerNorm(16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(self.norm(self.fc1(self.embed(x))))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.dense = nn.Linear(8, 8)
        self.LayerNorm = nn.LayerNorm(8)


class SequentialEncoder(nn.Module):
    """BERT-like names (``encoder.layer.0.dense.weight``) but the layers in an nn.Sequential: a regex like
    ``encoder\\.layer\\.\\d+\\..*weight$`` would also match the 1-D LayerNorm weights."""

    def __init__(self):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.Sequential(Block(), Block())


def suggested(err):
    found = re.search(r"cram_targets=\[(r'[^']*')\]", str(err.value))
    assert found, str(err.value)
    return ast.literal_eval(found.group(1))


def test_hint_for_a_model_without_a_layer_list_is_an_accepted_regex():
    model = TwoLinears()
    with pytest.raises(ValueError, match="no nn.Linear inside an nn.ModuleList") as err:
        target_names(model)
    regex = suggested(err)
    assert target_names(model, regex) == ["fc1.weight", "fc2.weight"]
    assert target_names(model, [regex]) == ["fc1.weight", "fc2.weight"]

    model = SequentialEncoder()
    with pytest.raises(ValueError, match="no nn.Linear inside an nn.ModuleList") as err:
        target_names(model)
    expected = ["encoder.layer.0.dense.weight", "encoder.layer.1.dense.weight"]
    assert target_names(model, suggested(err)) == expected


def test_hint_names_at_most_three_weights_and_falls_back_to_any_2d_weight():
    many = nn.Sequential(*[nn.Linear(4, 4) for _ in range(5)])  # Sequential, not ModuleList
    with pytest.raises(ValueError) as err:
        target_names(many)
    assert target_names(many, suggested(err)) == ["0.weight", "1.weight", "2.weight"]
    assert "5 in all" in str(err.value)

    class OnlyEmbedding(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(5, 3)
            self.norm = nn.LayerNorm(3)

    with pytest.raises(ValueError) as err:
        target_names(OnlyEmbedding())
    assert target_names(OnlyEmbedding(), suggested(err)) == ["emb.weight"]

    class NoMatrix(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(3)

    with pytest.raises(ValueError, match="no 2-D weight"):
        target_names(NoMatrix())
