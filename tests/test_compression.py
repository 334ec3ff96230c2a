import numpy as np
import pytest
import torch

from cram_hf.compression import (
    compression_mask_stream,
    compression_masks,
    kth_smallest_abs,
    level_sparsity,
    magnitude_masks,
    nm_mask,
    pack_mask,
    parse_level,
    unpack_mask,
)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.7, 0.9, 0.999])
def test_global_topk_prunes_exactly_round_s_n_smallest(s):
    ts = [rand(8, 12, seed=1), rand(20, 4, seed=2), rand(3, 16, seed=3)]
    masks = magnitude_masks(ts, s, "global")
    n = sum(t.numel() for t in ts)
    assert sum(int((~m).sum()) for m in masks) == round(s * n)
    kept = torch.cat([t[m].abs() for t, m in zip(ts, masks)])
    pruned = torch.cat([t[~m].abs() for t, m in zip(ts, masks)])
    if pruned.numel() and kept.numel():
        assert pruned.max() <= kept.min()  # the smallest magnitudes, over all tensors together


def test_layer_scope_ranks_each_tensor_alone():
    ts = [rand(10, 10, seed=1) * 100, rand(10, 10, seed=2)]  # global ranking would prune only ts[1]
    masks = magnitude_masks(ts, 0.5, "layer")
    assert [int((~m).sum()) for m in masks] == [50, 50]
    glob = magnitude_masks(ts, 0.5, "global")
    assert int((~glob[0]).sum()) < 10


def test_ties_still_give_the_exact_count():
    t = torch.zeros(10, 10)
    t[0, :5] = 1.0
    masks = magnitude_masks([t, torch.zeros(4, 5)], 0.5, "global")
    assert sum(int((~m).sum()) for m in masks) == 60
    assert masks[0][0, :5].all()  # the non-zeros are kept
    assert not masks[0].view(-1)[5:65].any()  # ties at zero are pruned in position order


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_radix_select_matches_kthvalue(dtype):
    ts = [rand(100, 37, seed=4).to(dtype), rand(7, 300, seed=5).to(dtype)]
    flat = torch.cat([t.float().abs().flatten() for t in ts])
    for k in (1, 17, flat.numel() // 2, flat.numel()):
        value, below = kth_smallest_abs(ts, k)
        assert value == flat.kthvalue(k).values
        assert below == int((flat < value).sum())


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_keeps_n_largest_per_group_along_input_dim(n, m):
    w = rand(6, 16)
    mask = nm_mask(w, n, m)
    groups = mask.view(6, 16 // m, m)
    assert (groups.sum(-1) == n).all()
    a = w.abs().view(6, 16 // m, m)
    kept_min = a.masked_fill(~groups, float("inf")).min(-1).values
    pruned_max = a.masked_fill(groups, -1).max(-1).values
    assert (kept_min >= pruned_max).all()


def test_nm_groups_run_along_the_input_dimension():
    w = torch.arange(1.0, 9.0).repeat(4, 1)  # every row 1..8: largest entries at the end of each group
    assert nm_mask(w, 2, 4)[0].tolist() == [False, False, True, True] * 2


def test_nm_ties_keep_lower_index():
    w = torch.ones(1, 8)
    assert nm_mask(w, 2, 4).tolist() == [[True, True, False, False] * 2]


def test_compression_masks_dispatch():
    ts = [rand(4, 8)]
    assert int((~compression_masks(ts, (2, 4))[0]).sum()) == 16
    assert int((~compression_masks(ts, 0.25)[0]).sum()) == 8
    assert level_sparsity((2, 4)) == 0.5 and level_sparsity((4, 8)) == 0.5 and level_sparsity(0.7) == 0.7


@pytest.mark.parametrize(
    "bad,msg",
    [
        (1.0, r"\[0, 1\)"),
        (-0.1, r"\[0, 1\)"),
        ("3:2", "0 < N < M"),
        ("4:4", "0 < N < M"),
        ("0:4", "0 < N < M"),
        ("2:x", "malformed"),
        ("abc", "neither"),
        (124, "quote N:M"),
        (True, "expected a float"),
        (None, "expected"),
    ],
)
def test_parse_level_rejects_bad_values_naming_the_parameter(bad, msg):
    with pytest.raises(ValueError, match=msg) as err:
        parse_level(bad, "cram_sparsities")
    assert "cram_sparsities" in str(err.value)


def test_nm_rejects_indivisible_input_dim():
    with pytest.raises(ValueError, match="not divisible by M=4"):
        nm_mask(rand(4, 10), 2, 4)
    with pytest.raises(ValueError, match="2-D"):
        nm_mask(rand(8), 2, 4)


def test_parse_level_accepts_valid_forms():
    assert parse_level("0.7") == 0.7 and parse_level(0) == 0.0 and parse_level(" 2 : 4 ") == (2, 4)
    assert parse_level((4, 8)) == (4, 8)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (3, 5), (16, 24), (2, 3, 11)])
def test_packed_masks_hold_numpys_packbits_and_unpack_to_the_mask(shape):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape))) < 0.4
    packed = pack_mask(mask)
    # numpy's packbits, little bit order, is the independent reference for the layout.
    assert packed.tolist() == np.packbits(mask.numpy().reshape(-1), bitorder="little").tolist()
    assert torch.equal(unpack_mask(packed, mask.shape), mask)


@pytest.mark.parametrize(
    "level,scope", [(0.7, "global"), (0.7, "layer"), ((2, 4), "global"), (0.0, "global")]
)
def test_a_mask_stream_ranks_up_front_so_masking_as_it_goes_changes_no_later_mask(level, scope):
    """The CrAM step masks each matrix in place before it takes the next mask: the masks must be those of
    the weights as they were when the stream was made."""
    tensors = [rand(8, 16, seed=i) for i in range(4)]
    expected = compression_masks([t.clone() for t in tensors], level, scope)
    got = []
    for t, m in zip(tensors, compression_mask_stream(tensors, level, scope)):
        got.append(m)
        t.mul_(m)
        t.add_(1000.0)  # whatever happens to a matrix once its mask is out cannot move the ranking
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
