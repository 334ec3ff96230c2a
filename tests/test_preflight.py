"""Bad arguments and inputs are refused as one line before any work: before a model loads, data is read, a
level is evaluated or a folder is created — in ``cram-hf`` and in the three recipes."""

import csv
import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import WORDS, make_tiny_tokenizer, tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf import CrAMConfig
from cram_hf.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OFFLINE = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def load_recipe(name):
    path = os.path.join(ROOT, "recipes", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"preflight_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_glue, run_qa, run_mlm = (load_recipe(n) for n in ("run_glue", "run_qa", "run_mlm_cram"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A tiny MLM model (hidden 16, so 3:7 does not fit), one with hidden 12 (4:8 does not fit), text, csv and
    SQuAD json files, and an empty file of each kind."""
    root = tmp_path_factory.mktemp("preflight")
    tok = make_tiny_tokenizer(root / "tok")
    out = {}
    for name, hidden in (("model", 16), ("narrow", 12)):
        torch.manual_seed(0)
        config = tiny_bert_config(
            vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, max_position_embeddings=64
        )
        BertForMaskedLM(config).save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = str(root / name)
    lines = [" ".join(WORDS[(i * 5 + j) % len(WORDS)] for j in range(20)) for i in range(40)]
    (root / "text.txt").write_text("\n".join(lines) + "\n")
    with open(root / "pairs.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "label"])
        writer.writerows([(lines[i][:30], lines[i + 1][:30], i % 2) for i in range(20)])
    record = {
        "id": "q0",
        "title": "t",
        "context": lines[0],
        "question": "what ?",
        "answers": {"text": [lines[0][:3]], "answer_start": [0]},
    }
    (root / "squad.json").write_text(json.dumps({"data": [record]}))
    for ext, text in (("txt", ""), ("csv", "\n"), ("json", " \n\t")):  # whitespace only is empty too
        (root / f"empty.{ext}").write_text(text)
        out[f"empty_{ext}"] = str(root / f"empty.{ext}")
    (root / "a_file").write_text("not a folder")
    out.update(
        text=str(root / "text.txt"),
        csv=str(root / "pairs.csv"),
        squad=str(root / "squad.json"),
        file=str(root / "a_file"),
    )
    return out


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: os.access says ``folder`` is not writable (as on a read-only mount)."""
    real_access = os.access

    def access(path, mode, *args, **kwargs):
        if os.fspath(path) in folders and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    folders = set()
    monkeypatch.setattr(os, "access", access)
    return lambda folder: folders.add(str(folder))


@pytest.fixture
def no_model_loads(monkeypatch):
    """Fail the test if the sweep or prune loads a model (the checks must come first)."""
    import cram_hf.checkpoint
    import cram_hf.sweep

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(cram_hf.sweep, "_load_model", loaded)
    monkeypatch.setattr(cram_hf.checkpoint, "load_pretrained", loaded)


@pytest.fixture
def no_data_loads(monkeypatch):
    """Fail the test if a recipe reads its data (the checks must come first)."""
    import datasets

    def loaded(*args, **kwargs):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(datasets, "load_dataset", loaded)
    monkeypatch.setattr(run_qa, "load_squad_file", loaded)


def sweep(data, out, *extra, validation="text"):
    return main(
        [
            "sweep",
            data["model"],
            "--validation_file",
            data[validation],
            "--output_dir",
            str(out),
            "--max_seq_length",
            "16",
            "--sparsities",
            "0",
            "0.5",
            "--disable_tqdm",
            *extra,
        ]
    )


def recipe_args(name, data, out, *extra):
    """Flags for a short training run of recipe ``name`` on the fixture's data."""
    files = {
        "run_mlm_cram": ["--train_file", data["text"], "--max_seq_length", "16"],
        "run_glue": ["--train_file", data["csv"], "--max_seq_length", "16"],
        "run_qa": ["--train_file", data["squad"], "--max_seq_length", "32", "--doc_stride", "8"],
    }[name]
    return [
        "--model_name_or_path",
        data["model"],
        *files,
        "--do_train",
        "--output_dir",
        str(out),
        "--max_steps",
        "1",
        "--per_device_train_batch_size",
        "4",
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--use_cpu",
        *extra,
    ]


def parse(name, argv):
    if name == "run_mlm_cram":
        return run_mlm.parse_args(run_mlm.build_parser(), argv)
    return {"run_glue": run_glue, "run_qa": run_qa}[name].parse_args(argv)


RECIPES = ("run_mlm_cram", "run_glue", "run_qa")


# --- 1. output folders that could not be written ----------------------------------------------------------


def test_sweep_and_prune_refuse_an_output_dir_under_a_file_before_any_work(data, no_model_loads, capsys):
    assert sweep(data, os.path.join(data["file"], "sweep")) == 2
    captured = capsys.readouterr()
    assert "is a file, not a directory" in captured.err and captured.out == ""  # not even the table header
    under_a_file = os.path.join(data["file"], "p")
    assert main(["prune", data["model"], "--sparsity", "0.5", "--output_dir", under_a_file]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["empty", "folder", "extension"])
def test_a_bad_calibration_file_is_refused_before_any_model_loads(
    data, tmp_path, no_model_loads, capsys, bad
):
    path = {
        "empty": tmp_path / "empty.txt",
        "folder": tmp_path / "calib",
        "extension": tmp_path / "c.parquet",
    }[bad]
    if bad == "folder":
        path.mkdir()
    else:
        path.write_text("   \n" if bad == "empty" else "some text\n")
    message = {"empty": "is empty", "folder": "is a folder; give one text file", "extension": "needs a .txt"}[
        bad
    ]
    calib = ["--calibration_file", str(path)]
    out = tmp_path / "out"
    assert (
        main(
            [
                "prune",
                data["model"],
                "--sparsity",
                "0.5",
                "--method",
                "sparsegpt",
                *calib,
                "--output_dir",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("cram-hf prune: error: --calibration_file: ") and message in err
    assert sweep(data, out, "--methods", "sparsegpt", *calib) == 2
    assert message in capsys.readouterr().err
    with pytest.raises(ValueError, match=f"^eval_calibration_file: .*{message}"):
        run_glue.parse_args(
            recipe_args(
                "run_glue", data, out, "--eval_pruning_method", "wanda", "--eval_calibration_file", str(path)
            )
        )
    assert not out.exists()


def test_a_calibrated_prune_of_a_folder_without_tokenizer_is_refused_first(
    data, tmp_path, no_model_loads, capsys
):
    bare = tmp_path / "bare"
    shutil.copytree(
        data["model"], bare, ignore=shutil.ignore_patterns("tokenizer*", "vocab*", "special_tokens*")
    )
    argv = [
        "prune",
        str(bare),
        "--sparsity",
        "0.5",
        "--method",
        "sparsegpt",
        "--calibration_file",
        data["text"],
    ]
    assert main(argv + ["--output_dir", str(tmp_path / "out")]) == 2
    assert "has none; save one with the model" in capsys.readouterr().err
    assert (
        main(["sweep", str(bare), "--validation_file", data["text"], "--output_dir", str(tmp_path / "s")])
        == 2
    )
    assert "has no tokenizer saved with it" in capsys.readouterr().err


def test_sweep_and_prune_refuse_an_output_dir_os_access_calls_read_only(
    data, tmp_path, read_only, no_model_loads, capsys
):
    # As root, chmod does not stop a write; this proves the check asks os.access (which also sees read-only
    # mounts) about the nearest existing folder before any work — not that the OS would refuse.
    read_only(tmp_path)
    assert sweep(data, tmp_path / "new" / "sweep") == 2
    assert f"{str(tmp_path)!r} is not writable" in capsys.readouterr().err
    assert main(["prune", data["model"], "--sparsity", "0.5", "--output_dir", str(tmp_path / "p")]) == 2
    assert "is not writable" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_refuse_an_output_dir_that_is_or_is_under_a_file_while_parsing(
    name, data, tmp_path, read_only
):
    with pytest.raises(ValueError, match="exists and is not a directory"):
        parse(name, recipe_args(name, data, data["file"]))
    with pytest.raises(ValueError, match="is a file, not a directory"):
        parse(name, recipe_args(name, data, os.path.join(data["file"], "out")))
    read_only(tmp_path)  # see the test above for what this proves
    with pytest.raises(ValueError, match="is not writable"):
        parse(name, recipe_args(name, data, tmp_path / "out"))


# --- 2. empty data files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("task, ext", [("mlm", "txt"), ("mlm", "json"), ("classification", "csv")])
def test_sweep_refuses_an_empty_validation_file(data, tmp_path, no_model_loads, capsys, task, ext):
    assert sweep(data, tmp_path / "s", "--task", task, validation=f"empty_{ext}") == 2
    assert f"--validation_file: {data[f'empty_{ext}']!r} is empty" in capsys.readouterr().err


@pytest.mark.parametrize("name, ext", [("run_mlm_cram", "txt"), ("run_glue", "csv"), ("run_qa", "json")])
@pytest.mark.parametrize("flag", ["--train_file", "--validation_file"])
def test_recipes_refuse_an_empty_data_file_while_parsing(name, ext, flag, data, tmp_path):
    args = recipe_args(name, data, tmp_path / "out")
    if flag in args:
        args[args.index(flag) + 1] = data[f"empty_{ext}"]
    else:
        args += [flag, data[f"empty_{ext}"]]
    with pytest.raises(ValueError, match=f"{flag[2:]}: .* is empty"):
        parse(name, args)


# --- 4. sweep levels and --mlm_probability checked before the first level -----------------------------------


def test_sweep_checks_every_nm_level_against_every_model_before_evaluating(
    data, tmp_path, no_model_loads, capsys
):
    # The second model (hidden 12) cannot take 4:8; today the first model's levels were evaluated first.
    rc = main(
        [
            "sweep",
            data["model"],
            data["narrow"],
            "--validation_file",
            data["text"],
            "--output_dir",
            str(tmp_path / "s"),
            "--sparsities",
            "0",
            "0.5",
            "4:8",
            "--disable_tqdm",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "--sparsities:" in err and "not divisible by M=8 of the 4:8 pattern" in err
    assert data["narrow"] in err
    assert sweep(data, tmp_path / "s", "--sparsities", "3:7") == 2
    assert "not divisible by M=7" in capsys.readouterr().err


@pytest.mark.parametrize("p", ["0", "1", "1.5", "-0.1"])
def test_sweep_checks_mlm_probability_before_evaluating(data, tmp_path, no_model_loads, capsys, p):
    assert sweep(data, tmp_path / "s", "--mlm_probability", p) == 2
    assert f"--mlm_probability: must be in (0, 1), got {float(p)}" in capsys.readouterr().err


# --- 5. targets that match nothing: no folder, nothing loaded -----------------------------------------------


def test_cli_targets_matching_nothing_leave_no_folder(data, tmp_path, no_model_loads, capsys):
    assert sweep(data, tmp_path / "s", "--targets", "no_such_weight") == 2
    assert "--targets: regex 'no_such_weight' matches no parameter" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_cram_targets_matching_nothing_fail_before_data_and_folder(
    name, data, tmp_path, no_data_loads
):
    out = tmp_path / "out"
    recipe = {"run_mlm_cram": run_mlm, "run_glue": run_glue, "run_qa": run_qa}[name]
    with pytest.raises(ValueError, match="cram_targets: regex 'no_such_weight' matches no parameter"):
        recipe.main(recipe_args(name, data, out, "--cram_rho", "0.05", "--cram_targets", "no_such_weight"))
    with pytest.raises(ValueError, match="cram_sparsities: .* not divisible by M=7 of the 3:7 pattern"):
        recipe.main(recipe_args(name, data, out, "--cram_sparsities", "3:7"))
    assert not out.exists()


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_one_shot_levels_without_an_evaluation_set_fail_before_data_and_folder(
    name, data, tmp_path, no_data_loads
):
    # One preflight for the three recipes: run_mlm_cram.py used to train and then print no table.
    out = tmp_path / "out"
    recipe = {"run_mlm_cram": run_mlm, "run_glue": run_glue, "run_qa": run_qa}[name]
    with pytest.raises(
        ValueError, match="eval_sparsities: one-shot results need an evaluation set; add --do_eval"
    ):
        recipe.main(recipe_args(name, data, out, "--eval_sparsities", "0.5"))
    assert not out.exists()


# --- 6. model paths that are neither a folder nor a Hub id ------------------------------------------------


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize("path", ["./no/such/dir", "no/such/dir", "/nonexistent-cram-hf-model"])
def test_recipes_refuse_a_missing_model_folder_while_parsing(name, path, data, tmp_path):
    args = recipe_args(name, data, tmp_path / "out")
    args[args.index("--model_name_or_path") + 1] = path
    with pytest.raises(ValueError, match=f"model_name_or_path: no such directory {path!r}"):
        parse(name, args)


def test_cli_model_that_cannot_be_fetched_is_one_line(data, tmp_path, capsys):
    # './no/such/dir' and '/tmp/nope' were refused already (test_cli); a name that looks like a Hub id but
    # cannot be fetched offline raised transformers' OSError out of `cram-hf sweep`.
    assert (
        main(
            [
                "sweep",
                "no-such-cram-hf-model",
                "--validation_file",
                data["text"],
                "--output_dir",
                str(tmp_path / "s"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("cram-hf sweep: error: model: could not load 'no-such-cram-hf-model'")
    assert err.count("\n") == 1
    for command in (
        ["sweep", "./no/such/dir", "--validation_file", data["text"]],
        ["prune", "/nonexistent-cram-hf-model", "--sparsity", "0.5"],
    ):
        assert main([*command, "--output_dir", str(tmp_path / "s")]) == 2
        assert "no such directory" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("run_mlm_cram", ("--model_name_or_path", "./no/such/dir"), "model_name_or_path: no such directory"),
        ("run_glue", ("--train_file", "empty_csv"), "train_file: .* is empty"),
        ("run_qa", ("--output_dir", "file"), "output_dir: .* exists and is not a directory"),
    ],
)
def test_recipe_user_errors_are_one_line_without_traceback(name, change, message, data, tmp_path):
    import re

    args = recipe_args(name, data, tmp_path / "out")
    flag, value = change
    args[args.index(flag) + 1] = data.get(value, value)
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", f"{name}.py"), *args],
        capture_output=True,
        text=True,
        env=OFFLINE,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{name}.py: error: ") and re.search(message, last), result.stderr


@pytest.mark.parametrize(
    "name,text,where",
    [
        ("bad.yaml", "max_steps: 3\n  do_train: [true\nseed: 1\n", r"line 2, column 11: not valid YAML \("),
        ("bad.json", '{"max_steps": 3,, "seed": 1}', r"line 1, column 17: not valid JSON \("),
    ],
)
def test_a_broken_config_file_is_one_line_naming_file_line_and_column(data, tmp_path, name, text, where):
    import re

    config = tmp_path / name
    config.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(config))}: {where}"):
        parse("run_glue", [str(config)])
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "recipes", "run_mlm_cram.py"), str(config)],
        capture_output=True,
        text=True,
        env=OFFLINE,
        timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert re.fullmatch(f"run_mlm_cram.py: error: {re.escape(str(config))}: {where}.*", result.stderr.strip())


@pytest.mark.parametrize(
    "name,change,flag,instead",
    [
        ("run_mlm_cram", ("--train_file", "--dataset_name", "wikitext"), "dataset_name", "--train_file"),
        ("run_glue", ("--train_file", "--task_name", "sst2"), "task_name", "--train_file"),
        (
            "run_qa",
            ("--model_name_or_path", "--model_name_or_path", "bert-base-uncased"),
            "model_name_or_path",
            "a local model folder",
        ),
        (
            "run_glue",
            ("--model_name_or_path", "--model_name_or_path", "bert-base-uncased"),
            "model_name_or_path",
            "a local model folder",
        ),
    ],
)
def test_a_hub_name_in_offline_mode_is_one_line_saying_so(
    data, tmp_path, monkeypatch, name, change, flag, instead
):
    from cram_hf.errors import UsageError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    args = recipe_args(name, data, tmp_path / "out")
    old, new, value = change
    i = args.index(old)
    args[i : i + 2] = [new, value]
    recipe = {"run_mlm_cram": run_mlm, "run_glue": run_glue, "run_qa": run_qa}[name]
    with pytest.raises(
        UsageError, match=f"^{flag}: '{value}': offline mode is on .*; pass .*{instead}"
    ) as err:
        recipe.main(args)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# --- 7. re-running into a folder with checkpoints of other CrAM settings ------------------------------------


def test_rerun_with_other_cram_settings_is_refused_instead_of_resumed(data, tmp_path):
    out = tmp_path / "out"
    saving = ["--save_strategy", "steps", "--save_steps", "1"]
    first = [*saving, "--cram_rho", "0.05", "--cram_sparsities", "0.5"]

    def args(*extra):
        plain = recipe_args("run_mlm_cram", data, out)
        return [a for a in plain if a not in ("--save_strategy", "no")] + list(extra)

    run_mlm.main(args(*first))
    assert (out / "checkpoint-1" / "training_args.bin").is_file()
    with pytest.raises(ValueError) as err:
        run_mlm.main(
            args(
                *saving,
                "--cram_rho",
                "0.1",
                "--cram_sparsities",
                "0.5",
                "2:4",
                "--cram_plus",
                "false",
                "--cram_targets",
                r"intermediate\.dense\.weight$",
                "--cram_interval",
                "2",
                "--distill_temperature",
                "5.5",
            )
        )
    message = str(err.value)
    assert str(out / "checkpoint-1") in message
    assert "--overwrite_output_dir" in message and "new --output_dir" in message
    for changed in (
        "cram_rho: 0.05 -> 0.1",
        "cram_sparsities: ['0.5'] -> ['0.5', '2:4']",
        "cram_plus: True -> False",
        "cram_targets: None -> ['intermediate\\\\.dense\\\\.weight$']",
        "cram_interval: 1 -> 2",
        "distill_temperature: 2.0 -> 5.5",
    ):
        assert changed in message
    assert "cram_scope" not in message and "cram_grad_norm" not in message  # unchanged ones are not listed
    assert "cram_probability" not in message and "distill_teacher" not in message
    # The same settings resume; --overwrite_output_dir starts over with the new ones (and saves them).
    run_mlm.main(args(*first))
    run_mlm.main(args(*saving, "--cram_rho", "0.1", "--cram_sparsities", "0.5", "--overwrite_output_dir"))
    assert torch.load(out / "checkpoint-1" / "training_args.bin", weights_only=False).cram_rho == 0.1


def test_a_checkpoint_whose_save_was_interrupted_is_passed_over_on_resume(data, tmp_path, caplog):
    out = tmp_path / "out"

    def args(steps):
        plain = recipe_args("run_mlm_cram", data, out)
        plain[plain.index("--max_steps") + 1] = str(steps)
        return [a for a in plain if a not in ("--save_strategy", "no")] + ["--save_steps", "1"]

    run_mlm.main(args(2))
    # Ctrl-C just after checkpoint-3/ appeared: only its config.json was written.
    (out / "checkpoint-3").mkdir()
    shutil.copy(out / "checkpoint-2" / "config.json", out / "checkpoint-3" / "config.json")
    run_mlm.main(args(4))  # resumes from checkpoint-2, not from the broken one
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["global_step"] == 4
    assert f"{out / 'checkpoint-3'} incomplete (no trainer_state.json" in caplog.text
    assert f"resuming from {out / 'checkpoint-2'}" in caplog.text
    assert (out / "checkpoint-3" / "trainer_state.json").is_file()  # rewritten whole by the resumed run
    # Named explicitly, an incomplete checkpoint is refused while parsing.
    (out / "checkpoint-5").mkdir()
    with pytest.raises(ValueError, match=r"^resume_from_checkpoint: .*checkpoint-5' is incomplete"):
        run_mlm.main(args(6) + ["--resume_from_checkpoint", str(out / "checkpoint-5")])


@pytest.mark.parametrize(
    "name,flag",
    [
        ("run_mlm_cram", "--max_train_samples"),
        ("run_mlm_cram", "--max_eval_samples"),
        ("run_glue", "--max_train_samples"),
        ("run_glue", "--max_eval_samples"),
        ("run_glue", "--max_predict_samples"),
        ("run_qa", "--max_train_samples"),
        ("run_qa", "--max_eval_samples"),
        ("run_qa", "--max_predict_samples"),
    ],
)
def test_a_sample_limit_of_zero_is_refused_while_parsing(data, tmp_path, name, flag):
    out = tmp_path / "out"
    for value in ("0", "-3"):
        with pytest.raises(
            ValueError, match=f"^{flag[2:]}: must be a positive number of examples, got {value}"
        ):
            parse(name, recipe_args(name, data, out, flag, value))
    assert not out.exists()
    parse(name, recipe_args(name, data, out, flag, "1"))


@pytest.mark.parametrize(
    "name, flags, message",
    [
        (name, flags, message)
        for name in RECIPES
        for flags, message in (
            (["--eval_pruning_method", "wanda"], r"^eval_calibration_file: eval_pruning_method wanda needs"),
            (["--eval_num_calibration_samples", "0"], r"^eval_num_calibration_samples: must be a positive"),
        )
    ]
    + [
        (
            name,
            ["--eval_sparsity_scope", "row"],
            r"^eval_sparsity_scope: must be one of \('global', 'layer'\)",
        )
        for name in ("run_glue", "run_qa")  # run_mlm_cram ranks its table by --cram_scope
    ],
)
def test_the_one_shot_tables_pruning_spec_is_checked_while_parsing(data, tmp_path, name, flags, message):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        parse(name, recipe_args(name, data, out, *flags))
    assert not out.exists()


@pytest.mark.parametrize("name", RECIPES)
def test_the_one_shot_table_defaults_to_the_runs_cram_levels_in_every_recipe(data, tmp_path, name):
    from preflight import eval_levels

    def levels(*flags):
        parsed = parse(name, recipe_args(name, data, tmp_path / "out", *flags))
        given = parsed[1 if name == "run_mlm_cram" else 2].eval_sparsities
        return [
            str(v) if not isinstance(v, tuple) else f"{v[0]}:{v[1]}" for v in eval_levels(given, parsed[-1])
        ]

    cram = ["--cram_rho", "0.05", "--cram_sparsities", "0.5", "2:4"]
    assert levels(*cram, "--do_eval") == ["0.5", "2:4"]
    assert levels(*cram) == []  # no evaluation set, no table
    assert levels(*cram, "--do_eval", "--eval_sparsities", "none") == []
    assert levels(*cram, "--do_eval", "--eval_sparsities", "0.9") == ["0.9"]
    assert levels("--cram_rho", "0", "--cram_sparsities", "none", "--do_eval") == []  # CrAM off: none


# --- 8. --keep_sparsity as a bare flag ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["run_glue", "run_qa"])
@pytest.mark.parametrize(
    "flags, expected",
    [
        ([], None),
        (["--keep_sparsity"], True),
        (["--keep_sparsity", "true"], True),
        (["--keep_sparsity", "false"], False),
    ],
)
def test_keep_sparsity_works_as_a_bare_flag(name, flags, expected, data, tmp_path):
    args = recipe_args(name, data, tmp_path / "out")
    # Last, then before another flag: a bare flag must not swallow what follows it.
    for argv in (args + flags, flags + args):
        _, _, sparse_args, _, _ = parse(name, argv)
        assert sparse_args.keep_sparsity is expected


def test_a_model_that_cannot_be_built_on_the_meta_device_skips_the_early_check(data, tmp_path):
    from cram_hf.checkpoint import meta_model
    from preflight import check_model_fits

    class ReadsValuesInInit:
        @classmethod
        def from_config(cls, config, **kwargs):
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")

    assert meta_model(tiny_bert_config(), ReadsValuesInInit) is None
    (_, _, _, _, training_args) = parse(
        "run_glue", recipe_args("run_glue", data, tmp_path / "out", "--cram_targets", "no_such_weight")
    )
    check_model_fits(data["model"], ReadsValuesInInit, training_args)  # left to the loaded model


def test_a_checkpoint_from_before_a_setting_existed_compares_as_that_settings_default(tmp_path):
    """training_args.bin of an older version lacks the schedule and distillation fields: it ran with their
    defaults, so a run with the defaults resumes it and one with other values is refused."""
    from types import SimpleNamespace

    from preflight import CRAM_SETTINGS, _changed_cram_settings

    current = CrAMConfig(output_dir=str(tmp_path / "o"), cram_rho=0.05, cram_sparsities=["0.5"])
    older = SimpleNamespace(
        **{
            n: getattr(current, n)
            for n in CRAM_SETTINGS
            if not n.startswith(("cram_interval", "cram_probability", "distill_"))
        }
    )
    (tmp_path / "checkpoint-1").mkdir()
    torch.save(older, tmp_path / "checkpoint-1" / "training_args.bin")
    assert _changed_cram_settings(str(tmp_path / "checkpoint-1"), current) == []
    current.cram_interval = 3
    assert _changed_cram_settings(str(tmp_path / "checkpoint-1"), current) == ["cram_interval: 1 -> 3"]
