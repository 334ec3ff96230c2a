"""``cram-hf`` end to end on tiny models: prune, sweep (table, json, csv, plot), refusals, --help."""

import csv
import json
import os
import random

import pytest
import torch
from conftest import WORDS, make_tiny_tokenizer, tiny_bert_config
from transformers import AutoModelForMaskedLM, BertForMaskedLM, BertForSequenceClassification

from cram_hf.checkpoint import COMPACT_WEIGHTS, SPARSITY_CONFIG, load_sparse
from cram_hf.cli import main


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny MLM models and a tiny 2-class classifier, saved with a real WordPiece tokenizer."""
    root = tmp_path_factory.mktemp("models")
    tok = make_tiny_tokenizer(root / "tok")
    out = {}
    for name, cls, seed, extra in (
        ("mlm_a", BertForMaskedLM, 0, {}),
        ("mlm_b", BertForMaskedLM, 1, {}),
        (
            "clf",
            BertForSequenceClassification,
            2,
            {"num_labels": 2, "id2label": {0: "neg", 1: "pos"}, "label2id": {"neg": 0, "pos": 1}},
        ),
    ):
        torch.manual_seed(seed)
        model = cls(tiny_bert_config(vocab_size=len(tok), **extra))
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    rng = random.Random(0)
    text = root / "valid.txt"
    text.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(40)) + "\n")
    out["text"] = text
    table = root / "valid.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for i in range(24):
            writer.writerow([" ".join(rng.choice(WORDS) for _ in range(8)), "pos" if i % 3 else "neg"])
    out["csv"] = table
    return out


def _state(path):
    return {k: v.clone() for k, v in AutoModelForMaskedLM.from_pretrained(path).state_dict().items()}


def test_help_on_every_command(capsys):
    for argv, expected in (
        (["--help"], "prune"),
        (["prune", "--help"], "--overwrite_output_dir"),
        (["sweep", "--help"], "--validation_file"),
        (["push", "--help"], "--repo_id"),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 0
        assert expected in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["--help"], ["prune", "--help"], ["sweep", "--help"], ["push", "--help"]])
def test_help_imports_neither_torch_nor_transformers(argv):
    """--help is instant: what it prints needs no torch (1-9 s to import)."""
    import subprocess
    import sys

    code = (
        "import sys\nfrom cram_hf.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "print('imported:', sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("imported: []"), result.stdout[-300:]


def test_prune_writes_a_checkpoint_plain_from_pretrained_reads(models, tmp_path, capsys):
    out = tmp_path / "p70"
    assert (
        main(
            ["prune", str(models["mlm_a"]), "--sparsity", "0.7", "--scope", "layer", "--output_dir", str(out)]
        )
        == 0
    )
    assert "magnitude 0.7 (layer)" in capsys.readouterr().out
    config = json.loads((out / SPARSITY_CONFIG).read_text())
    assert (config["level"], config["scope"], config["method"]) == ("0.7", "layer", "magnitude")
    # A local base by its name only: the record is uploaded with the model, the local path says nothing there.
    assert config["base_model"] == "mlm_a" and config["base_model_is_local"]
    pruned = AutoModelForMaskedLM.from_pretrained(out)
    params = dict(pruned.named_parameters())
    for name in config["targets"]:
        assert int((params[name] == 0).sum()) == round(0.7 * params[name].numel())
    original = _state(models["mlm_a"])
    for k, v in pruned.state_dict().items():
        if k not in config["targets"]:
            assert torch.equal(v, original[k]), k
    from transformers import AutoTokenizer

    # the tokenizer travels with the checkpoint
    assert AutoTokenizer.from_pretrained(out).vocab == AutoTokenizer.from_pretrained(models["mlm_a"]).vocab


def test_prune_compact_nm_with_custom_targets(models, tmp_path):
    out = tmp_path / "c24"
    assert (
        main(
            [
                "prune",
                str(models["mlm_a"]),
                "--sparsity",
                "2:4",
                "--targets",
                r"intermediate\.dense\.weight$",
                r"output\.dense\.weight$",
                "--compact",
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    assert os.path.isfile(out / COMPACT_WEIGHTS) and not os.path.exists(out / "model.safetensors")
    config = json.loads((out / SPARSITY_CONFIG).read_text())
    assert config["pattern"] == "2:4" and config["target_rule"] == "regex" and len(config["targets"]) == 6
    load_sparse(out)  # verifies the pattern and the per-matrix zeros
    assert config["achieved"]["target_sparsity"] == 0.5
    # pruning a compact checkpoint again goes through load_sparse
    assert main(["prune", str(out), "--sparsity", "0.8", "--output_dir", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / SPARSITY_CONFIG).read_text())
    assert (
        again["base_model"] == "mlm_a" and again["base_model_is_local"]
    )  # the original, not the intermediate


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--sparsity", "1.0"], "sparsity must be in"),
        (["--sparsity", "3:2"], "0 < N < M"),
        (["--sparsity", "0.5", "--targets", "no_such_weight"], "matches no parameter"),
        (["--sparsity", "0.5", "--targets", "("], "not a valid regular expression"),
        (["--sparsity", "0.5", "--push_to_hub", "not a repo"], "ORG/NAME"),
        (["--sparsity", "0.5", "--method", "sparsegpt"], "--calibration_file: --method sparsegpt needs"),
        (["--sparsity", "0.5", "--method", "wanda", "--calibration_file", "nope.txt"], "no such file"),
        (["--sparsity", "0.5", "--calibration_file", "x.txt"], "only wanda and sparsegpt"),
        (
            ["--sparsity", "0.5", "--method", "sparsegpt", "--calibration_file", "x.txt", "--damping", "-1"],
            "--damping",
        ),
    ],
)
def test_prune_refusals_write_nothing(models, tmp_path, capsys, extra, match):
    out = tmp_path / "out"
    assert main(["prune", str(models["mlm_a"]), "--output_dir", str(out), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == []  # no temporary folder either


def test_prune_refuses_a_model_dir_without_weights_and_a_non_empty_output(models, tmp_path, capsys):
    no_weights = tmp_path / "no_weights"
    BertForMaskedLM(tiny_bert_config()).config.save_pretrained(no_weights)
    assert main(["prune", str(no_weights), "--sparsity", "0.5", "--output_dir", str(tmp_path / "o")]) == 2
    assert "no weights" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert main(["prune", str(models["mlm_a"]), "--sparsity", "0.5", "--output_dir", str(busy)]) == 2
    assert "--overwrite_output_dir" in capsys.readouterr().err
    assert os.listdir(busy) == ["notes.txt"]
    assert (
        main(
            [
                "prune",
                str(models["mlm_a"]),
                "--sparsity",
                "0.5",
                "--output_dir",
                str(busy),
                "--overwrite_output_dir",
            ]
        )
        == 0
    )
    assert os.path.isfile(busy / SPARSITY_CONFIG) and not os.path.exists(busy / "notes.txt")


def test_pruning_or_sweeping_into_the_models_own_folder_is_refused(models, tmp_path, capsys):
    import shutil

    own = tmp_path / "own"
    shutil.copytree(models["mlm_a"], own)
    before = {f: (own / f).read_bytes() for f in os.listdir(own)}
    for out in (own, tmp_path):  # the folder itself, or one that holds it
        argv = ["prune", str(own), "--sparsity", "0.5", "--output_dir", str(out), "--overwrite_output_dir"]
        assert main(argv) == 2
        assert "the input folder" in capsys.readouterr().err
        sweep = ["sweep", str(own), "--validation_file", str(models["text"]), "--output_dir", str(out)]
        assert main(sweep + ["--overwrite_output_dir"]) == 2
        assert "which writing the output replaces whole" in capsys.readouterr().err
    assert {f: (own / f).read_bytes() for f in os.listdir(own)} == before


def test_mlm_sweep_of_two_models_writes_table_json_csv_and_plot(models, tmp_path, capsys):
    out = tmp_path / "sweep"
    before = _state(models["mlm_a"])
    rc = main(
        [
            "sweep",
            str(models["mlm_a"]),
            str(models["mlm_b"]),
            "--validation_file",
            str(models["text"]),
            "--task",
            "mlm",
            "--sparsities",
            "0.9",
            "0",
            "0.5",
            "2:4",
            "4:8",
            "--max_seq_length",
            "16",
            "--batch_size",
            "8",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "--model_names",
            "A",
            "B",
            "--metric",
            "loss",  # a tiny random model's accuracy is 0: nothing to keep a share of
        ]
    )
    assert rc == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and "2:4" in printed
    record = json.loads((out / "sweep.json").read_text())
    rows = record["results"]
    assert [(r["model"], r["level"]) for r in rows] == [
        (m, lv) for m in "AB" for lv in ("0.9", "0", "0.5", "2:4", "4:8")
    ]
    for r in rows:
        assert r["achieved_sparsity"] == pytest.approx(r["sparsity"], abs=1 / 4096)  # round(s*n) of 4096
        assert r["perplexity"] == pytest.approx(torch.tensor(r["loss"]).exp().item(), rel=1e-6)
    # a fresh copy per level: level 0 after 0.9 equals the dense model, and the saved model is untouched
    from transformers import AutoTokenizer

    from cram_hf.sweep import MLMEval

    dense = MLMEval(
        str(models["text"]), AutoTokenizer.from_pretrained(models["mlm_a"]), max_seq_length=16, batch_size=8
    )(AutoModelForMaskedLM.from_pretrained(models["mlm_a"]))
    assert rows[1]["loss"] == pytest.approx(dense["loss"], rel=1e-6)
    # "kept": each row's share of its model's dense metric (lower is better for a loss: dense / pruned), from
    # the dense (0) row on, each model against its own dense row.
    assert "| kept |" in printed and "kept" not in rows[0] and rows[1]["kept"] == 1.0
    assert rows[2]["kept"] == pytest.approx(rows[1]["loss"] / rows[2]["loss"])
    assert rows[7]["kept"] == pytest.approx(rows[6]["loss"] / rows[7]["loss"]) != rows[2]["kept"]
    assert rows[0]["loss"] != pytest.approx(rows[1]["loss"])
    assert all(torch.equal(v, before[k]) for k, v in _state(models["mlm_a"]).items())
    with open(out / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert (
        len(table) == 10
        and table[3]["pattern"] == "2:4"
        and float(table[0]["achieved_sparsity"]) == rows[0]["achieved_sparsity"]
    )
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "sweep.png").stat().st_size > 10_000


def test_classification_sweep_reports_accuracy_and_macro_f1(models, tmp_path):
    from sklearn.metrics import f1_score
    from transformers import AutoTokenizer

    out = tmp_path / "clf"
    rc = main(
        [
            "sweep",
            str(models["clf"]),
            "--validation_file",
            str(models["csv"]),
            "--task",
            "classification",
            "--sparsities",
            "0",
            "0.7",
            "--output_dir",
            str(out),
            "--disable_tqdm",
            "--metric",
            "f1",
            "--max_eval_samples",
            "20",
        ]
    )
    assert rc == 0
    record = json.loads((out / "sweep.json").read_text())
    dense = record["results"][0]
    assert dense["samples"] == 20 and record["metric"] == "f1"
    # recompute level 0 by hand: string labels mapped through the model's label2id
    model = BertForSequenceClassification.from_pretrained(models["clf"]).eval()
    tok = AutoTokenizer.from_pretrained(models["clf"])
    with open(models["csv"]) as f:
        rows = list(csv.DictReader(f))[:20]
    gold = [{"neg": 0, "pos": 1}[r["label"]] for r in rows]
    with torch.no_grad():
        pred = (
            model(**tok([r["text"] for r in rows], padding=True, return_tensors="pt"))
            .logits.argmax(-1)
            .tolist()
        )
    assert dense["accuracy"] == pytest.approx(sum(p == g for p, g in zip(pred, gold)) / 20)
    assert dense["f1"] == pytest.approx(f1_score(gold, pred, average="macro"))
    assert os.path.isfile(out / "sweep.png") and os.path.isfile(out / "sweep.csv")


def test_sweep_refusals(models, tmp_path, capsys):
    base = ["sweep", str(models["mlm_a"]), "--output_dir", str(tmp_path / "s")]
    assert main(base + ["--validation_file", str(tmp_path / "missing.txt")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(base + ["--validation_file", str(models["text"]), "--task", "classification"]) == 2
    assert "csv" in capsys.readouterr().err
    assert main(base + ["--validation_file", str(models["text"]), "--sparsities", "0.5", "1.5"]) == 2
    assert "sparsity must be in" in capsys.readouterr().err
    assert main(base + ["--validation_file", str(models["text"]), "--metric", "f1"]) == 2
    assert (
        main(
            [
                "sweep",
                str(tmp_path / "nope"),
                "--validation_file",
                str(models["text"]),
                "--output_dir",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    assert not (tmp_path / "s").exists()


def test_a_sparse_checkpoint_is_never_un_pruned(models, tmp_path, capsys, monkeypatch):
    from cram_hf.targets import default_target_names

    sparse = tmp_path / "sparse80"
    assert main(["prune", str(models["mlm_a"]), "--sparsity", "0.8", "--output_dir", str(sparse)]) == 0
    zero = {n: p == 0 for n, p in _state(sparse).items()}
    # SparseGPT to 2:4 from the 80 % checkpoint: every zero stays zero (it used to revive them).
    calib = ["--method", "sparsegpt", "--calibration_file", str(models["text"])]
    out = tmp_path / "sparse24"
    assert main(["prune", str(sparse), "--sparsity", "2:4", *calib, "--output_dir", str(out)]) == 0
    pruned = _state(out)
    names = default_target_names(AutoModelForMaskedLM.from_pretrained(out))
    assert all(bool((pruned[n][zero[n]] == 0).all()) for n in names)
    # A level below 80 %: refused, by prune once loaded, by the sweep from the checkpoint's record before
    # any model loads.
    capsys.readouterr()
    assert main(["prune", str(sparse), "--sparsity", "0.7", *calib, "--output_dir", str(tmp_path / "o")]) == 2
    assert (
        "sparsity: 0.7 is below the sparsity the target weights already have (0.8000"
        in capsys.readouterr().err
    )
    monkeypatch.setattr("cram_hf.sweep._load_model", None)  # would raise TypeError if called
    sweep = [
        "sweep",
        str(sparse),
        "--validation_file",
        str(models["text"]),
        "--output_dir",
        str(tmp_path / "s"),
    ]
    assert main(sweep + ["--sparsities", "0", "0.5", "0.6", "0.9", "2:4"]) == 2
    assert "--sparsities: 0.5, 0.6 below the sparsity model" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "s").exists()


def test_an_interrupted_sweep_leaves_nothing_and_the_rerun_is_not_refused(models, tmp_path, monkeypatch):
    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "sweep"
    argv = ["sweep", str(models["mlm_a"]), "--validation_file", str(models["text"]), "--output_dir", str(out)]
    argv += ["--sparsities", "0", "0.5", "--max_seq_length", "16", "--disable_tqdm"]
    monkeypatch.setattr("cram_hf.sweep.plot_sweep", ctrl_c)  # after sweep.json and sweep.csv are written
    with pytest.raises(KeyboardInterrupt):
        main(argv)
    assert os.listdir(tmp_path) == []  # no folder, no half-written table, no temporary left
    monkeypatch.undo()
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == ["sweep.csv", "sweep.json", "sweep.png"]
    # Over a finished sweep (with --overwrite_output_dir): the old tables stay until the new ones are whole.
    before = (out / "sweep.json").read_text()
    monkeypatch.setattr("cram_hf.sweep.plot_sweep", ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        main(argv + ["--overwrite_output_dir"])
    assert (out / "sweep.json").read_text() == before and os.listdir(tmp_path) == ["sweep"]


def test_a_max_seq_length_longer_than_the_model_takes_is_cut_to_it(models, tmp_path, caplog):
    # The tiny models have 32 positions; the default 128 used to fail inside the embeddings (a shape error).
    sweep = [
        "sweep",
        str(models["mlm_a"]),
        "--validation_file",
        str(models["text"]),
        "--sparsities",
        "0",
        "0.5",
    ]
    assert main(sweep + ["--output_dir", str(tmp_path / "s"), "--disable_tqdm"]) == 0
    assert "--max_seq_length: 128 is longer than the model takes (32 positions); using 32." in caplog.text
    calib = ["--method", "sparsegpt", "--calibration_file", str(models["text"])]
    assert (
        main(
            ["prune", str(models["mlm_a"]), "--sparsity", "0.5", *calib, "--output_dir", str(tmp_path / "p")]
        )
        == 0
    )
    assert json.loads((tmp_path / "p" / SPARSITY_CONFIG).read_text())["method_params"]["max_seq_length"] == 32


def test_classification_sweep_of_an_encoder_without_head_uses_the_data_classes(models, tmp_path):
    from transformers import BertModel

    encoder = tmp_path / "encoder"
    BertModel(tiny_bert_config(vocab_size=128)).save_pretrained(encoder)
    make_tiny_tokenizer(encoder)
    data = tmp_path / "three.csv"
    with open(data, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        writer.writerows([("the cat sat", "a"), ("a dog", "b"), ("the house", "c"), ("good day", "a")])
    out = tmp_path / "s"
    assert (
        main(
            [
                "sweep",
                str(encoder),
                "--validation_file",
                str(data),
                "--task",
                "classification",
                "--sparsities",
                "0",
                "0.5",
                "--output_dir",
                str(out),
                "--disable_tqdm",
            ]
        )
        == 0
    )
    record = json.loads((out / "sweep.json").read_text())
    assert record["models"][0]["missing_weights"] == ["classifier.bias", "classifier.weight"]
    assert "untrained head" in record["warnings"][0]
    assert [r["samples"] for r in record["results"]] == [4, 4]


@pytest.mark.parametrize("method,level", [("sparsegpt", "0.6"), ("wanda", "2:4")])
def test_prune_with_a_calibrated_method_end_to_end(models, tmp_path, capsys, method, level):
    out = tmp_path / method
    args = [
        "prune",
        str(models["mlm_a"]),
        "--sparsity",
        level,
        "--method",
        method,
        "--calibration_file",
        str(models["text"]),
        "--num_calibration_samples",
        "16",
        "--max_seq_length",
        "16",
        "--output_dir",
        str(out),
    ]
    assert main(args) == 0
    assert f"{method} {level}" in capsys.readouterr().out
    config = json.loads((out / SPARSITY_CONFIG).read_text())
    assert config["method"] == method and config["level"] == level
    assert config["method_params"]["num_calibration_samples"] == 16
    assert config["method_params"]["calibration_file"] == "valid.txt"  # no local path in an uploaded record
    pruned = AutoModelForMaskedLM.from_pretrained(out)
    params = dict(pruned.named_parameters())
    if ":" not in level:
        # The default scope is global: per-matrix counts from the magnitude ranking, exact in total.
        total = sum(params[n].numel() for n in config["targets"])
        assert sum(int((params[n] == 0).sum()) for n in config["targets"]) == round(0.6 * total)
    else:
        assert config["pattern"] == "2:4"


def test_sweep_compares_pruners_one_curve_per_model_and_method(models, tmp_path, capsys):
    out = tmp_path / "sweep"
    args = [
        "sweep",
        str(models["mlm_a"]),
        "--validation_file",
        str(models["text"]),
        "--task",
        "mlm",
        "--sparsities",
        "0.5",
        "2:4",
        "--methods",
        "magnitude",
        "sparsegpt",
        "--calibration_file",
        str(models["text"]),
        "--num_calibration_samples",
        "16",
        "--max_seq_length",
        "16",
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "--model_names",
        "A",
    ]
    assert main(args) == 0
    record = json.loads((out / "sweep.json").read_text())
    rows = record["results"]
    assert [(r["model"], r["method"], r["level"]) for r in rows] == [
        ("A · magnitude", "magnitude", "0.5"),
        ("A · magnitude", "magnitude", "2:4"),
        ("A · sparsegpt", "sparsegpt", "0.5"),
        ("A · sparsegpt", "sparsegpt", "2:4"),
    ]
    assert rows[0]["loss"] != rows[2]["loss"]  # a different pruner, a different pruned model
    assert (out / "sweep.png").is_file() and record["methods"] == ["magnitude", "sparsegpt"]
    i = args.index("--calibration_file")
    no_calibration = args[:i] + args[i + 2 :]
    no_calibration[no_calibration.index("--output_dir") + 1] = str(tmp_path / "x")
    capsys.readouterr()
    assert main(no_calibration) == 2
    assert "--calibration_file: --methods sparsegpt needs" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_sweep_takes_one_scope_per_method(models, tmp_path, capsys):
    def sweep(name, *extra):
        argv = ["sweep", str(models["mlm_a"]), "--validation_file", str(models["text"]), "--task", "mlm"]
        argv += ["--sparsities", "0.7", "--max_seq_length", "16", "--output_dir", str(tmp_path / name)]
        argv += ["--disable_tqdm", "--model_names", "A", "--calibration_file", str(models["text"]), *extra]
        code = main(argv)
        return code, json.loads((tmp_path / name / "sweep.json").read_text()) if code == 0 else None

    _, mixed = sweep("mixed", "--methods", "magnitude", "sparsegpt", "--scope", "layer", "global")
    rows = {r["model"]: r for r in mixed["results"]}
    assert list(rows) == ["A · magnitude (per matrix)", "A · sparsegpt (global)"]
    _, layer = sweep("layer", "--scope", "layer")
    _, global_ = sweep("global", "--scope", "global")
    # The magnitude curve of the mixed sweep is the per-matrix one, which differs from the global one here.
    assert rows["A · magnitude (per matrix)"]["loss"] == layer["results"][0]["loss"]
    assert layer["results"][0]["loss"] != global_["results"][0]["loss"]
    capsys.readouterr()
    code, _ = sweep("bad", "--methods", "magnitude", "sparsegpt", "--scope", "global", "layer", "layer")
    assert (
        code == 2
        and "--scope: one scope for every method, or one per --methods entry (2)" in capsys.readouterr().err
    )
