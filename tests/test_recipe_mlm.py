"""recipes/run_mlm_cram.py end to end on a tiny local model and text files."""

import importlib.util
import json
import os

import pytest
import torch
from conftest import WORDS, make_tiny_tokenizer
from transformers import BertForMaskedLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_recipe():
    spec = importlib.util.spec_from_file_location(
        "run_mlm_cram", os.path.join(ROOT, "recipes", "run_mlm_cram.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def setup(tmp_path, tiny_config):
    tok = make_tiny_tokenizer(tmp_path / "model")
    tiny_config.vocab_size = len(tok)
    torch.manual_seed(0)
    BertForMaskedLM(tiny_config).save_pretrained(tmp_path / "model")
    lines = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(20)) for i in range(80)]
    (tmp_path / "train.txt").write_text("\n".join(lines[:60]))
    (tmp_path / "eval.txt").write_text("\n".join(lines[60:]))
    return tmp_path


def base_args(tmp):
    return [
        "--model_name_or_path",
        str(tmp / "model"),
        "--train_file",
        str(tmp / "train.txt"),
        "--validation_file",
        str(tmp / "eval.txt"),
        "--max_seq_length",
        "16",
        "--do_train",
        "--do_eval",
        "--output_dir",
        str(tmp / "out"),
        "--max_steps",
        "3",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
    ]


def test_trains_and_writes_the_one_shot_table(setup, capsys):
    recipe = load_recipe()
    restored = []
    one_shot_table = recipe.evaluate_sparsities

    def checked(evaluate, model, *args, **kwargs):
        # The model in memory after the one-shot loop (what --push_to_hub and later code use) is the dense one.
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        result = one_shot_table(evaluate, model, *args, **kwargs)
        restored.append(all(torch.equal(p, before[n]) for n, p in model.named_parameters()))
        return result

    recipe.evaluate_sparsities = checked
    recipe.main(base_args(setup) + ["--cram_sparsities", "0.5", "2:4", "--eval_sparsities", "0.7", "2:4"])
    assert restored == [True]
    out = setup / "out"
    assert (out / "model.safetensors").exists()
    result = json.loads((out / "eval_sparsities.json").read_text())
    assert [row["level"] for row in result["levels"]] == ["0.7", "2:4"]
    assert result["levels"][0]["achieved_sparsity"] == pytest.approx(0.7, abs=1e-3)
    assert set(result["dense"]) == {"loss", "perplexity", "accuracy"}
    eval_metrics = json.loads((out / "eval_results.json").read_text())
    assert eval_metrics["eval_loss"] == pytest.approx(result["dense"]["loss"])
    assert "| 2:4 |" in capsys.readouterr().out
    # The saved model is the dense one too.
    saved = BertForMaskedLM.from_pretrained(out)
    w = saved.bert.encoder.layer[0].intermediate.dense.weight
    assert (w == 0).float().mean() < 0.01


def test_yaml_config_with_flag_overrides(setup):
    cfg = setup / "cfg.yaml"
    flags = base_args(setup)
    lines, i = [], 0
    while i < len(flags):
        key = flags[i][2:]
        if i + 1 < len(flags) and not flags[i + 1].startswith("--"):
            lines.append(f"{key}: {json.dumps(flags[i + 1])}")
            i += 2
        else:
            lines.append(f"{key}: true")
            i += 1
    lines.append('cram_sparsities: ["0.6", "2:4"]')
    lines.append("eval_sparsities: []")
    cfg.write_text("\n".join(lines))
    recipe = load_recipe()
    model_args, data_args, _, args = recipe.parse_args(
        recipe.build_parser(), [str(cfg), "--max_steps", "7", "--cram_rho", "0.1"]
    )
    assert args.max_steps == 7 and args.cram_rho == 0.1 and args.cram_sparsities == ["0.6", "2:4"]
    assert data_args.eval_sparsities == [] and data_args.max_seq_length == 16


@pytest.mark.parametrize(
    "change,msg",
    [
        ({"--train_file": "missing.txt"}, "train_file"),
        ({"--train_file": "data.parquet"}, "train_file"),
        ({"--mlm_probability": "1.5"}, "mlm_probability"),
        ({"--cram_sparsities": "1.2"}, "cram_sparsities"),
        ({"--eval_sparsities": "3:2"}, "eval_sparsities"),
        ({"--model_name_or_path": "./no/such/dir"}, "model_name_or_path"),
    ],
)
def test_bad_arguments_fail_before_any_work(setup, change, msg):
    args = base_args(setup)
    for flag, value in change.items():
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    with pytest.raises(ValueError, match=msg):
        load_recipe().main(args)
    assert not (setup / "out").exists()


def test_unquoted_nm_pattern_in_yaml_gets_a_hint(setup):
    cfg = setup / "bad.yaml"
    cfg.write_text(
        f"model_name_or_path: {setup / 'model'}\ntrain_file: {setup / 'train.txt'}\n"
        f"output_dir: {setup / 'out'}\ncram_sparsities: [0.5, 2:4]\n"
    )
    with pytest.raises(ValueError, match="quote N:M"):
        load_recipe().main([str(cfg)])


def test_the_one_shot_table_with_a_calibrated_pruner(setup):
    recipe = load_recipe()
    recipe.main(
        base_args(setup)
        + [
            "--cram_sparsities",
            "0.5",
            "--eval_sparsities",
            "0.5",
            "2:4",
            "--eval_pruning_method",
            "sparsegpt",
            "--eval_calibration_file",
            str(setup / "train.txt"),
            "--eval_num_calibration_samples",
            "8",
        ]
    )
    result = json.loads((setup / "out" / "eval_sparsities.json").read_text())
    assert result["method"] == "sparsegpt"
    assert [(r["method"], r["level"]) for r in result["levels"]] == [
        ("sparsegpt", "0.5"),
        ("sparsegpt", "2:4"),
    ]


def test_a_calibrated_table_without_calibration_text_is_refused_while_parsing(setup):
    recipe = load_recipe()
    with pytest.raises(
        ValueError, match="eval_calibration_file: eval_pruning_method wanda needs calibration data"
    ):
        recipe.main(base_args(setup) + ["--eval_pruning_method", "wanda"])
    assert not (setup / "out").exists()
