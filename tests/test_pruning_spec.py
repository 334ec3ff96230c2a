"""Pruning declared once: the registry of pruners, the spec and its one validation, levels parsed once,
and a pruner added in one place is offered by ``prune``, the validation and the CLI."""

import ast
import json
import os

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf import choices, pruning
from cram_hf.compression import parse_level
from cram_hf.pruning import PruningSpec, one_shot, prune, validate_pruning
from cram_hf.pruning_spec import PRUNERS, Pruner


def _model(seed=0):
    torch.manual_seed(seed)
    return BertForMaskedLM(tiny_bert_config())


def first_half(model, names, level, spec, calibration, progress) -> int:
    """A toy pruner: zero the first ``round(s·n)`` entries of each target matrix, in memory order."""
    params = dict(model.named_parameters())
    removed = 0
    for n in names:
        flat = params[n].data.view(-1)
        k = round(level * flat.numel())
        flat[:k] = 0
        removed += k
    return removed


@pytest.fixture
def toy(monkeypatch):
    """``first_half`` registered for the duration of one test (monkeypatch takes it out after)."""
    monkeypatch.setitem(
        PRUNERS,
        "first_half",
        Pruner(
            first_half, "zero the first half of each matrix", scopes=("layer",), level_kinds=("sparsity",)
        ),
    )
    return "first_half"


def test_a_pruner_registered_in_one_place_is_pruned_with_validated_and_offered(toy, tmp_path, capsys):
    from conftest import make_tiny_tokenizer

    from cram_hf.checkpoint import SPARSITY_CONFIG
    from cram_hf.cli import build_parser, main

    model = _model()
    report = prune(model, 0.5, method=toy, scope="layer")
    params = dict(model.named_parameters())
    for n in report.targets:
        flat = params[n].detach().view(-1)
        half = flat.numel() // 2
        assert bool((flat[:half] == 0).all()) and bool((flat[half:] != 0).all()), n
    assert report.method == toy and report.num_pruned == report.target_zeros == report.target_numel // 2
    # The validation knows it: its scopes and level kinds, its name among the methods.
    assert validate_pruning(_model(), 0.5, spec=PruningSpec(toy, "layer"))[0] == 0.5
    with pytest.raises(ValueError, match=r"^scope: must be one of \('layer',\) for method first_half"):
        prune(_model(), 0.5, method=toy)
    with pytest.raises(ValueError, match=r"^sparsity: method first_half prunes sparsity levels, not 2:4\.$"):
        prune(_model(), "2:4", method=toy, scope="layer")
    assert toy in choices.METHODS and toy not in choices.CALIBRATED
    # The CLI offers it, and prunes a checkpoint with it.
    args = build_parser().parse_args(
        ["prune", "m", "--sparsity", "0.5", "--method", toy, "--output_dir", "o"]
    )
    assert args.method == toy
    folder = tmp_path / "model"
    _model().save_pretrained(folder)
    make_tiny_tokenizer(folder)
    out = tmp_path / "out"
    argv = ["prune", str(folder), "--sparsity", "0.5", "--method", toy, "--scope", "layer", "--output_dir"]
    assert main([*argv, str(out)]) == 0
    assert json.loads((out / SPARSITY_CONFIG).read_text())["method"] == toy
    assert main([*argv[:-3], "--output_dir", str(tmp_path / "o2")]) == 2  # scope global: not its scope
    assert "--scope: must be one of ('layer',) for method first_half" in capsys.readouterr().err


def test_the_registry_is_restored_after_a_test_that_registers_a_pruner():
    assert tuple(PRUNERS) == ("magnitude", "wanda", "sparsegpt") == choices.METHODS
    assert choices.CALIBRATED == ("wanda", "sparsegpt")


@pytest.mark.parametrize(
    "spec,kwargs,match",
    [
        (
            PruningSpec("obs"),
            {},
            r"^method: must be one of \('magnitude', 'wanda', 'sparsegpt'\), got 'obs'\.$",
        ),
        (PruningSpec(scope="row"), {}, r"^scope: must be one of \('global', 'layer'\) for method magnitude"),
        (PruningSpec(damping=-1), {}, r"^damping: must be a number >= 0, got -1\.$"),
        (PruningSpec(damping=True), {}, r"^damping: must be a number"),
        (PruningSpec(block_size=0), {}, r"^block_size: must be a positive integer, got 0\.$"),
        (PruningSpec(block_size=2.0), {}, r"^block_size: must be a positive integer"),
        (PruningSpec(num_calibration_samples=0), {}, r"^num_calibration_samples: must be a positive integer"),
        (PruningSpec(targets=["("]), {}, r"^targets: '\(' is not a valid regular expression"),
        (PruningSpec("wanda"), {"calibration": False}, r"^calibration: method wanda needs calibration data"),
        (
            PruningSpec("sparsegpt", damping=-1),
            {"names": {"damping": "--damping"}},
            r"^--damping: must be a number >= 0",
        ),
    ],
)
def test_the_one_validation_names_the_argument_and_what_is_allowed(spec, kwargs, match):
    with pytest.raises(ValueError, match=match):
        spec.validate(**kwargs)


def test_a_valid_spec_passes_and_is_a_hashable_value():
    spec = PruningSpec("sparsegpt", "layer", [r"query\.weight$"], damping=0.05).validate(
        [0.5, (2, 4)], calibration=True
    )
    assert spec.targets == (r"query\.weight$",) and hash(spec) == hash(
        PruningSpec("sparsegpt", "layer", spec.targets, 0.05)
    )
    PruningSpec("wanda").validate(calibration=None)  # not known yet: not refused
    PruningSpec().validate([0.0, 0.9, (4, 8)], calibration=False)


def test_a_spec_and_loose_keywords_are_not_mixed():
    model = _model()
    with pytest.raises(ValueError, match=r"^spec: give the settings in the spec or as scope, not both\.$"):
        prune(model, 0.5, PruningSpec(), scope="layer")
    with pytest.raises(ValueError, match=r"^spec: must be a PruningSpec, got dict\.$"):
        prune(model, 0.5, {"method": "magnitude"})
    assert pruning.sparsity_report(model).target_zeros == 0


def test_a_spec_prunes_exactly_as_the_keywords_do():
    a, b = _model(), _model()
    ra = prune(a, 0.6, scope="layer", targets=[r"query\.weight$"])
    rb = prune(b, 0.6, PruningSpec(scope="layer", targets=[r"query\.weight$"]))
    assert ra.targets == rb.targets and ra.target_patterns == rb.target_patterns == [r"query\.weight$"]
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n


def test_a_parsed_level_is_returned_as_it_is_and_a_bad_one_still_refused():
    for level in (0.7, 0.0, (2, 4)):
        assert parse_level(level) is level
    for bad, match in (
        ((3, 2), "0 < N < M"),
        (1.0, r"\[0, 1\)"),
        ((True, 2), "N:M"),
        (float("nan"), "sparsity"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_level(bad, "level")


def test_one_shot_checks_the_spec_and_the_levels_against_the_model_once(monkeypatch):
    calls = {"targets": 0, "validate": 0}
    target_names, validate = pruning.target_names, PruningSpec.validate

    def count_targets(*args, **kwargs):
        calls["targets"] += 1
        return target_names(*args, **kwargs)

    def count_validate(self, *args, **kwargs):
        calls["validate"] += 1
        return validate(self, *args, **kwargs)

    monkeypatch.setattr(pruning, "target_names", count_targets)
    monkeypatch.setattr(PruningSpec, "validate", count_validate)
    rows = one_shot(_model(), ["0.5", "2:4", 0.9, "0.5"], lambda m: {}, spec=PruningSpec(scope="layer"))
    assert [r["level"] for r in rows] == ["0.5", "2:4", "0.9", "0.5"] and rows[0]["method"] == "magnitude"
    assert calls == {"targets": 1, "validate": 1}


def test_no_pruner_module_imports_the_cli_or_its_options():
    root = os.path.join(os.path.dirname(__file__), "..", "cram_hf")
    for module in (
        "pruning",
        "pruning_spec",
        "calibrated",
        "calibration",
        "compression",
        "gradual",
        "choices",
    ):
        tree = ast.parse(open(os.path.join(root, f"{module}.py")).read())
        imported = {
            node.module.rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module
        } | {
            a.name.rsplit(".", 1)[-1]
            for node in ast.walk(tree)
            if isinstance(node, ast.Import)
            for a in node.names
        }
        assert not imported & {"sweep_options", "cli", "sweep"}, module


def test_check_levels_reachable_reads_targets_given_as_a_spec_holds_them(tmp_path):
    from cram_hf.checkpoint import check_levels_reachable, save_sparse

    model = _model()
    report = prune(model, 0.8, targets=[r"query\.weight$"])
    save_sparse(model, tmp_path / "m", report=report)
    spec = PruningSpec(targets=[r"query\.weight$"])
    with pytest.raises(ValueError, match="below the sparsity model"):
        check_levels_reachable(str(tmp_path / "m"), [0.5], spec.targets)
