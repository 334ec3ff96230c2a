"""Wanda and SparseGPT against independent computations, and the layer-by-layer driver end to end."""

import copy

import pytest
import torch
from conftest import WORDS, make_tiny_tokenizer, tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf import prune
from cram_hf.calibrated import sparsegpt_prune_, wanda_mask
from cram_hf.calibration import calibration_batches
from cram_hf.diagnostics import HostReadCounter
from cram_hf.pruning import satisfies_nm
from cram_hf.targets import default_target_names


def correlated_inputs(cols=16, tokens=200, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen)
    scale = torch.linspace(0.2, 3.0, cols)
    return (torch.randn(tokens, cols, generator=gen) @ mix) * scale  # [tokens, in]


# --- Wanda ---------------------------------------------------------------------------------------------


def test_wanda_prunes_the_lowest_weight_times_input_norm_of_each_row():
    gen = torch.Generator().manual_seed(1)
    w, x = torch.randn(6, 16, generator=gen), correlated_inputs()
    mask = wanda_mask(w, (x * x).sum(0), 0.5, k=48)
    for r in range(6):  # independent: score by hand, sort each row
        scores = [abs(float(w[r, j])) * float(x[:, j].norm()) for j in range(16)]
        lowest = sorted(range(16), key=lambda j: scores[j])[:8]
        assert sorted(torch.nonzero(mask[r]).flatten().tolist()) == sorted(lowest)


def test_wanda_spreads_an_uneven_count_over_rows_exactly_and_does_nm():
    gen = torch.Generator().manual_seed(2)
    w, x = torch.randn(5, 16, generator=gen), correlated_inputs()
    mask = wanda_mask(w, (x * x).sum(0), 0.7, k=56)  # 56 = 11.2 per row: rows get 12, 11, 11, 11, 11
    assert int(mask.sum()) == 56 and mask.sum(1).tolist() == [12, 11, 11, 11, 11]
    nm = wanda_mask(w, (x * x).sum(0), (2, 4), k=0)
    w2 = w.masked_fill(nm, 0)
    assert satisfies_nm(w2, 2, 4) and int(nm.sum()) == 40


# --- SparseGPT -----------------------------------------------------------------------------------------


def naive_obs(w, x, k, damping=0.01, nm=None):
    """Column-by-column optimal brain surgeon with the inverse of the *remaining* columns' Hessian at every
    step (no Cholesky trick, no blocks). The mask is chosen up front from w²/[H⁻¹]_jj (or per N:M group when
    the group is reached), as SparseGPT does inside one block. Entries of ``w`` that are zero are pruned
    whatever their score, and count toward ``k`` (toward M - N in their group)."""
    zero = w == 0
    w = w.double().clone()
    h = (x.t() @ x).double()
    h += damping * torch.diagonal(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    cols = w.shape[1]
    diag = torch.tensor([float(torch.linalg.inv(h[j:, j:])[0, 0]) for j in range(cols)], dtype=h.dtype)
    pruned = torch.zeros_like(w, dtype=torch.bool)
    if nm is None:
        others = [i for i in torch.argsort((w**2 / diag).flatten()).tolist() if not zero.view(-1)[i]]
        pruned.view(-1)[others[: max(k - int(zero.sum()), 0)]] = True
    pruned |= zero
    for j in range(cols):
        if nm is not None and j % nm[1] == 0:
            for r in range(w.shape[0]):
                group = (w[r, j : j + nm[1]] ** 2 / diag[j : j + nm[1]]).tolist()
                slots = [c for c in range(nm[1]) if not zero[r, j + c]]
                for c in sorted(slots, key=group.__getitem__)[: nm[1] - nm[0] - (nm[1] - len(slots))]:
                    pruned[r, j + c] = True
        hinv = torch.linalg.inv(h[j:, j:])
        err = torch.where(pruned[:, j], w[:, j], torch.zeros_like(w[:, j])) / hinv[0, 0]
        w[:, j:] -= err.unsqueeze(1) * hinv[0].unsqueeze(0)
        w[:, j] = torch.where(pruned[:, j], torch.zeros_like(w[:, j]), w[:, j])
    return w.float(), pruned


@pytest.mark.parametrize("level,k", [(0.5, 48), (0.75, 72), ((2, 4), 0)])
def test_sparsegpt_equals_a_straightforward_column_by_column_obs(level, k):
    gen = torch.Generator().manual_seed(3)
    w, x = torch.randn(6, 16, generator=gen), correlated_inputs()
    expected, expected_mask = naive_obs(w, x, k, nm=level if isinstance(level, tuple) else None)
    got = w.clone()
    mask = sparsegpt_prune_(got, x.t() @ x, level, k, block_size=16)  # one block: same mask rule
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("level,k", [(0.5, 48), (0.75, 72), (0.2, 19), ((2, 4), 0)])
def test_sparsegpt_never_revives_a_zero_and_counts_it_toward_the_level(level, k):
    # 30 % already pruned (the OBS update of later columns would make them nonzero again); at 0.2 the 29 zeros
    # are more than k = 19: only they are pruned.
    gen = torch.Generator().manual_seed(6)
    w, x = torch.randn(6, 16, generator=gen), correlated_inputs()
    w.view(-1)[torch.randperm(96, generator=gen)[:29]] = 0.0
    expected, expected_mask = naive_obs(w, x, k, nm=level if isinstance(level, tuple) else None)
    got = w.clone()
    mask = sparsegpt_prune_(got, x.t() @ x, level, k, block_size=16)
    assert torch.equal(mask, expected_mask) and bool(mask[w == 0].all())
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    blocked = w.clone()  # in blocks too
    sparsegpt_prune_(blocked, x.t() @ x, level, k, block_size=4)
    for result in (got, blocked):
        assert bool((result[w == 0] == 0).all())
        if isinstance(level, tuple):
            assert satisfies_nm(result, *level)
        else:
            assert int((result == 0).sum()) == max(k, 29)  # exact, the zeros included


def test_sparsegpt_reconstructs_better_than_wanda_and_magnitude_and_counts_exactly():
    gen = torch.Generator().manual_seed(4)
    w, x = torch.randn(32, 64, generator=gen), correlated_inputs(cols=64, tokens=500)
    k = round(0.6 * w.numel())

    def error(pruned_w):
        return float(((w - pruned_w) @ x.t()).norm())

    magnitude = w.masked_fill(w.abs() <= w.abs().flatten().kthvalue(k).values, 0)
    wanda = w.masked_fill(wanda_mask(w, (x * x).sum(0), 0.6, k), 0)
    sparsegpt = w.clone()
    mask = sparsegpt_prune_(sparsegpt, x.t() @ x, 0.6, k)  # default blocks of 128: one block here
    assert int(mask.sum()) == k and int((sparsegpt == 0).sum()) == k
    # Wanda is a heuristic (it can lose to magnitude on inputs this correlated); OBS minimises this error.
    assert error(sparsegpt) < min(error(wanda), error(magnitude))


def test_lazy_block_updates_equal_the_single_block_result():
    """With N:M the mask of each group is chosen when its first column is reached, from weights the earlier
    columns have updated; deferring those updates block by block (the lazy batch update) must not change a
    thing. (Unstructured masks are chosen per block by design, so block size changes them.)"""
    gen = torch.Generator().manual_seed(5)
    w, x = torch.randn(8, 64, generator=gen), correlated_inputs(cols=64, tokens=300)
    results = []
    for block_size in (64, 16, 8):
        got = w.clone()
        results.append((sparsegpt_prune_(got, x.t() @ x, (2, 4), 0, block_size=block_size), got))
    expected, expected_mask = naive_obs(w, x, 0, nm=(2, 4))
    for mask, got in results:
        assert torch.equal(mask, expected_mask)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)


# --- the driver on a model --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer), max_position_embeddings=64))
    texts = [" ".join(WORDS[i : i + 4 + i % 9]) for i in range(48)]
    return (
        model,
        tokenizer,
        calibration_batches(texts, tokenizer, num_samples=32, max_seq_length=16, batch_size=8),
    )


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
@pytest.mark.parametrize(
    "level,scope", [(0.5, "layer"), (0.7, "global"), ("2:4", "global"), ("4:8", "layer")]
)
def test_exact_counts_patterns_and_determinism(setup, method, level, scope):
    model, _, batches = setup
    runs = []
    for _ in range(2):
        m = copy.deepcopy(model)
        report = prune(m, level, method=method, calibration=batches, scope=scope)
        runs.append(m)
    params = dict(runs[0].named_parameters())
    names = default_target_names(runs[0])
    if isinstance(level, str):
        n, mm = map(int, level.split(":"))
        assert all(satisfies_nm(params[nm_], n, mm) for nm_ in names)
        assert report.target_sparsity == 1 - n / mm
    elif scope == "layer":
        assert all(int((params[n] == 0).sum()) == round(level * params[n].numel()) for n in names)
    else:
        total = sum(params[n].numel() for n in names)
        assert report.target_zeros == round(level * total)
    assert report.method == method and all(
        torch.equal(a, b) for a, b in zip(runs[0].parameters(), runs[1].parameters())
    )
    untouched = [n for n, _ in model.named_parameters() if n not in names]
    assert all(torch.equal(params[n], dict(model.named_parameters())[n]) for n in untouched)


def test_each_layer_is_calibrated_on_the_outputs_of_the_pruned_layers_before_it(setup, monkeypatch):
    import cram_hf.calibrated as calibrated

    model, _, batches = setup
    seen = {}
    real = calibrated.sparsegpt_prune_

    def recording(weight, hessian, *args, **kwargs):
        seen[id(weight)] = hessian.clone()
        return real(weight, hessian, *args, **kwargs)

    monkeypatch.setattr(calibrated, "sparsegpt_prune_", recording)
    pruned_model = copy.deepcopy(model)
    prune(pruned_model, 0.5, method="sparsegpt", calibration=batches, scope="layer")
    # Independently: the query of layer 1 reads layer 1's input, which in the final model comes from the
    # pruned layer 0 (pruning layer 1 does not change its own input). Padding rows excluded by hand.
    query = pruned_model.bert.encoder.layer[1].attention.self.query
    expected = layer1_query_hessian(pruned_model, batches)
    torch.testing.assert_close(seen[id(query.weight)], expected, rtol=1e-4, atol=1e-4)
    # ... and not from the dense layer 0 (the propagation is what this test guards).
    assert not torch.allclose(layer1_query_hessian(model, batches), expected, rtol=1e-3)


def layer1_query_hessian(model, batches):
    """Σ xᵀx over the non-padding inputs of layer 1's query projection, from plain forwards of ``model``."""
    total, mask = torch.zeros(16, 16), None

    def hook(module, args, output):
        nonlocal total
        x = args[0][mask.bool()]
        total += x.t() @ x

    handle = model.bert.encoder.layer[1].attention.self.query.register_forward_hook(hook)
    with torch.no_grad():
        for batch in batches:
            mask = batch["attention_mask"]
            model(**batch)
    handle.remove()
    return total


def test_padding_does_not_change_the_result(setup):
    model, tokenizer, _ = setup
    texts = [" ".join(WORDS[i : i + 3 + i % 5]) for i in range(16)]
    tight = [dict(tokenizer([t], return_tensors="pt")) for t in texts]  # no padding at all
    padded = [dict(tokenizer(texts, padding="max_length", max_length=24, return_tensors="pt"))]
    results = []
    for batches in (tight, padded):
        m = copy.deepcopy(model)
        prune(m, 0.6, method="sparsegpt", calibration=batches, scope="layer")
        results.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
    torch.testing.assert_close(results[0], results[1], rtol=1e-4, atol=1e-5)


def test_the_pruners_read_nothing_back_to_the_host(setup):
    model, _, batches = setup
    for method in ("wanda", "sparsegpt"):
        m = copy.deepcopy(model)
        with HostReadCounter() as reads:
            prune(m, "2:4", method=method, calibration=batches, scope="layer")
        # The model's own forward may read (transformers' padding and mask checks); the pruners add none.
        with HostReadCounter() as forward_reads:
            with torch.no_grad():
                for batch in batches:
                    m(**batch)
        measure = len(default_target_names(m)) + len(
            list(m.parameters())
        )  # the report counts zeros per tensor
        assert reads.total <= forward_reads.total * 3 + measure, reads.by_op


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_re_pruning_a_sparse_model_never_revives_a_weight(setup, method, caplog):
    model, _, batches = setup
    sparse = copy.deepcopy(model)
    prune(sparse, 0.8)  # global magnitude: matrices end more and less sparse than 80 %
    names = default_target_names(sparse)
    zero_before = {n: p.detach() == 0 for n, p in sparse.named_parameters() if n in names}
    calibration = {} if method == "magnitude" else {"calibration": batches}
    for level, scope in (("2:4", "global"), (0.85, "layer"), (0.85, "global")):
        pruned = copy.deepcopy(sparse)
        report = prune(pruned, level, scope=scope, method=method, **calibration)
        params = dict(pruned.named_parameters())
        assert all(bool((params[n][zero_before[n]] == 0).all()) for n in names), (level, scope)
        if level == 0.85:  # the zeros count toward the level: never below it, exact where it can be
            assert report.target_sparsity >= 0.85 - 1e-6
            if scope == "global" and method != "wanda":  # Wanda's quotas are per row: a row keeps its zeros
                assert report.target_zeros == round(0.85 * report.target_numel)
        else:
            assert all(satisfies_nm(params[n], 2, 4) for n in names)
    # A 2:4 model keeps at most 2 of 4 by the pattern, more zeros where the 80 % model had them: stated.
    assert "zeros are never revived" in caplog.text
    # A level below the sparsity it already has cannot be reached: refused before anything changes.
    with pytest.raises(ValueError, match=r"^sparsity: 0.7 is below the sparsity .* \(0.8000: .* >= 0.8000,"):
        prune(sparse, 0.7, method=method, **calibration)
    prune(sparse, 0.0, method=method, **calibration)  # 0: the model as it is
    assert all(
        bool((p.detach() == 0).eq(zero_before[n]).all()) for n, p in sparse.named_parameters() if n in names
    )


def test_refusals(setup):
    model, _, batches = setup
    with pytest.raises(ValueError, match="method: must be one of"):
        prune(copy.deepcopy(model), 0.5, method="obs")
    with pytest.raises(ValueError, match="calibration: method sparsegpt needs"):
        prune(copy.deepcopy(model), 0.5, method="sparsegpt")
    with pytest.raises(ValueError, match="targets: .* not inside a transformer layer"):
        prune(
            copy.deepcopy(model),
            0.5,
            method="wanda",
            calibration=batches,
            targets=[r"cls\.predictions\.transform\.dense\.weight"],
        )
    with pytest.raises(ValueError, match="num_calibration_samples"):
        calibration_batches(["a b"], setup[1], num_samples=0)


def test_fewer_calibration_samples_than_asked_for_are_stated(setup, caplog):
    batches = calibration_batches(["a b c", "d e", "f"], setup[1], num_samples=10, max_seq_length=8)
    assert sum(len(b["input_ids"]) for b in batches) == 3
    assert "num_calibration_samples: 10 asked for, the calibration data has 3; using all 3." in caplog.text


def test_a_calibrated_checkpoint_records_the_method_and_reloads(setup, tmp_path):
    from cram_hf import load_sparse, save_sparse
    from cram_hf.checkpoint import read_sparsity_config

    model, tokenizer, batches = setup
    m = copy.deepcopy(model)
    report = prune(m, "2:4", method="sparsegpt", calibration=batches, damping=0.05)
    save_sparse(m, tmp_path / "out", tokenizer=tokenizer, report=report)
    config = read_sparsity_config(tmp_path / "out")
    assert config["method"] == "sparsegpt" and config["pattern"] == "2:4"
    assert config["method_params"] == {
        "damping": 0.05,
        "block_size": 128,
        "calibration_batches": len(batches),
    }
    reloaded = load_sparse(tmp_path / "out")  # verifies the zeros and the 2:4 pattern
    from cram_hf.hub import model_card

    card = model_card(tmp_path / "out")
    assert "one-shot SparseGPT pruning to the 2:4 pattern" in card and "2:4" in card
    assert all(torch.equal(a, b) for a, b in zip(reloaded.parameters(), m.parameters()))
