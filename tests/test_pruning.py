"""One-shot pruning: exact counts, what is pruned, what is left alone, and refusals that touch nothing."""

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf.pruning import prune, satisfies_nm, sparsity_report
from cram_hf.targets import default_target_names


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    return BertForMaskedLM(tiny_bert_config(**overrides))


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        assert torch.equal(after[k], v), k


def test_global_magnitude_zeroes_exactly_round_s_n_smallest():
    model = _model()
    before = _snapshot(model)
    names = default_target_names(model)
    n = sum(before[k].numel() for k in names)

    report = prune(model, 0.7, scope="global")

    k = round(0.7 * n)
    assert report.num_pruned == k
    assert report.target_zeros == k and report.target_numel == n
    assert report.targets == names and len(names) == 12  # 6 Linear weights x 2 layers
    assert report.method == "magnitude" and report.level == "0.7" and report.scope == "global"
    params = dict(model.named_parameters())
    pruned_abs = torch.cat([before[k_][params[k_] == 0].abs() for k_ in names])
    kept_abs = torch.cat([before[k_][params[k_] != 0].abs() for k_ in names])
    assert pruned_abs.max() <= kept_abs.min()  # ranked over all targets together
    assert sum(v["zeros"] for v in report.per_matrix.values()) == k


def test_layer_scope_prunes_each_matrix_on_its_own():
    model = _model()
    params = dict(model.named_parameters())
    with torch.no_grad():  # a matrix 10x larger than the rest: global ranking would spare it
        params["bert.encoder.layer.0.attention.self.query.weight"].mul_(10)
    layer = prune(_copy(model), 0.6, scope="layer")
    glob = prune(_copy(model), 0.6, scope="global")
    for name, stats in layer.per_matrix.items():
        assert stats["zeros"] == round(0.6 * params[name].numel()), name
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert glob.per_matrix[q]["zeros"] < layer.per_matrix[q]["zeros"]
    assert glob.target_zeros == round(0.6 * glob.target_numel)


def _copy(model):
    import copy

    return copy.deepcopy(model)


def test_non_targets_and_kept_weights_are_bit_identical():
    model = _model()
    before = _snapshot(model)
    report = prune(model, 0.9)
    names = set(report.targets)
    after = model.state_dict()
    for k, v in before.items():
        if k in names:
            kept = after[k] != 0
            assert torch.equal(after[k][kept], v[kept]), k  # kept values not rescaled or rounded
        else:
            assert torch.equal(after[k], v), k  # embeddings, LayerNorms, biases, pooler, head
    # Model-wide zeros = the pruned ones + those already there (zero-initialised biases, padding row).
    preexisting = sum(int((p == 0).sum()) for n, p in model.named_parameters() if n not in names)
    assert preexisting > 0 and report.model_zeros == report.target_zeros + preexisting


@pytest.mark.parametrize("pattern,n,m", [("2:4", 2, 4), ("4:8", 4, 8)])
def test_nm_keeps_the_n_largest_of_every_m_inputs(pattern, n, m):
    model = _model()
    before = _snapshot(model)
    report = prune(model, pattern)
    assert report.method == "n:m" and report.level == pattern and report.scope is None
    params = dict(model.named_parameters())
    for name in report.targets:
        w = params[name]
        assert satisfies_nm(w, n, m)
        groups = w.reshape(-1, m)
        assert ((groups != 0).sum(1) == n).all()  # random weights: exactly n survivors per group
        orig = before[name].reshape(-1, m).abs()
        top = orig.topk(n, dim=1).indices
        assert torch.equal(
            (groups != 0).sort(1).values,
            torch.zeros_like(groups, dtype=torch.bool).scatter(1, top, True).sort(1).values,
        )
        assert torch.equal(groups.gather(1, top), before[name].reshape(-1, m).gather(1, top))
    assert report.target_zeros == report.target_numel * (m - n) // m


def test_satisfies_nm_detects_a_violation():
    w = torch.tensor([[1.0, 0.0, 2.0, 0.0, 1.0, 1.0, 0.0, 0.0]])
    assert satisfies_nm(w, 2, 4)
    w[0, 1] = 3.0
    assert not satisfies_nm(w, 2, 4)
    assert not satisfies_nm(torch.ones(2, 6), 2, 4)  # 6 inputs: not divisible


def test_custom_targets_only_touch_matching_matrices():
    model = _model()
    before = _snapshot(model)
    report = prune(model, 0.5, targets=[r"attention\.self\.query\.weight$"])
    assert report.targets == [f"bert.encoder.layer.{i}.attention.self.query.weight" for i in range(2)]
    assert report.target_patterns == [r"attention\.self\.query\.weight$"]
    after = model.state_dict()
    for k, v in before.items():
        if k not in report.targets:
            assert torch.equal(after[k], v), k


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sparsity=1.0), r"\[0, 1\)"),
        (dict(sparsity="3:2"), "0 < N < M"),
        (dict(sparsity="2:x"), "N:M"),
        (dict(sparsity=0.5, targets=["no_such_parameter"]), "matches no parameter"),
        (dict(sparsity=0.5, targets=[r"LayerNorm\.bias"]), "2-D"),
        (dict(sparsity=0.5, scope="row"), "scope"),
    ],
)
def test_bad_arguments_are_refused_before_anything_changes(kwargs, match):
    model = _model()
    before = _snapshot(model)
    sparsity = kwargs.pop("sparsity")
    with pytest.raises(ValueError, match=match):
        prune(model, sparsity, **kwargs)
    _assert_unchanged(model, before)


def test_nm_divisibility_is_checked_on_every_target_first():
    # hidden 12 and intermediate 20: 2:4 fits every input dimension, 4:8 fits none.
    model = _model(hidden_size=12, intermediate_size=20, num_attention_heads=2)
    before = _snapshot(model)
    with pytest.raises(ValueError, match="not divisible by M=8"):
        prune(model, "4:8")
    _assert_unchanged(model, before)
    prune(model, "2:4")


def test_sparsity_report_reads_the_same_figures_off_any_model():
    model = _model()
    dense = sparsity_report(model)
    assert dense.target_zeros == 0 and dense.method == "measured" and dense.level is None
    # Parameters counted once: the MLM decoder is tied to the word embeddings.
    unique = {id(p): p.numel() for p in model.parameters()}
    assert dense.model_numel == sum(unique.values())
    report = prune(model, "2:4")
    measured = sparsity_report(model)
    assert measured.per_matrix == report.per_matrix
    assert (measured.target_zeros, measured.model_zeros) == (report.target_zeros, report.model_zeros)
    assert measured.target_sparsity == 0.5
    assert 0 < measured.model_sparsity < measured.target_sparsity
    d = measured.to_dict()
    assert d["target_sparsity"] == 0.5 and d["model_numel"] == dense.model_numel


def test_pruning_twice_to_a_higher_level_is_still_exact():
    model = _model()
    prune(model, 0.5)
    report = prune(model, 0.8)
    assert report.target_zeros == round(0.8 * report.target_numel)


def test_one_shot_evaluates_each_pruned_level_and_restores_the_model_bit_exactly():
    from cram_hf.pruning import format_one_shot_table, one_shot

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    names = default_target_names(model)
    seen = []

    def evaluate(m):
        params = dict(m.named_parameters())
        zeros = sum(int((params[n] == 0).sum()) for n in names)
        seen.append(zeros / sum(params[n].numel() for n in names))
        return {"accuracy": seen[-1]}

    rows = one_shot(model, ["0.5", "2:4", 0.9], evaluate, label="tiny")
    assert [r["level"] for r in rows] == ["0.5", "2:4", "0.9"] and rows[1]["pattern"] == "2:4"
    assert seen == pytest.approx([0.5, 0.5, 0.9], abs=1e-3)  # evaluate saw the pruned model
    assert [r["accuracy"] for r in rows] == seen and all(r["model"] == "tiny" for r in rows)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n  # restored bit for bit
    table = format_one_shot_table(rows, ["accuracy"], dense={"accuracy": 0.0})
    assert table.splitlines()[2] == "| dense | — | 0.0000 |"
    assert table.splitlines()[4].startswith("| 2:4 | 0.5000 |")


def test_one_shot_checks_every_level_before_evaluating_any():
    from cram_hf.pruning import one_shot

    model = BertForMaskedLM(tiny_bert_config(hidden_size=12, num_attention_heads=2, intermediate_size=36))
    calls = []
    with pytest.raises(ValueError, match="not divisible by M=8"):
        one_shot(model, ["0.5", "4:8"], lambda m: calls.append(1) or {})
    assert not calls
