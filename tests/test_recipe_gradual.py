"""``--gradual_sparsity`` & co. in the three recipes: gradual magnitude pruning while training, recorded in the
saved model's sparsity_config.json; the default end step; the refusals, before any work."""

import json
import os

import pytest
import test_preflight
import test_recipes_transfer
from test_preflight import RECIPES, parse, recipe_args, run_glue, run_mlm, run_qa
from transformers import (
    AutoModelForMaskedLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
)

from cram_hf import GradualPruningCallback, load_sparse
from cram_hf.checkpoint import read_sparsity_config
from cram_hf.errors import UsageError
from cram_hf.hub import model_card
from cram_hf.sparse_finetune import keep_sparsity_callback
from cram_hf.targets import target_names
from gradual_pruning import gradual_end_step, gradual_pruning_callback

# The fixtures of the other recipe tests: their tiny models and data files (shared, not copied).
data, no_data_loads = test_preflight.data, test_preflight.no_data_loads
sparse_model = test_recipes_transfer.sparse_model  # 70 % pruned, no sparsity_config.json

RECIPE = {"run_mlm_cram": run_mlm, "run_glue": run_glue, "run_qa": run_qa}
MODEL_CLASS = {
    "run_mlm_cram": AutoModelForMaskedLM,
    "run_glue": AutoModelForSequenceClassification,
    "run_qa": AutoModelForQuestionAnswering,
}


def gradual_of(trainer) -> GradualPruningCallback:
    return next(c for c in trainer.callback_handler.callbacks if isinstance(c, GradualPruningCallback))


def target_zeros(model) -> dict[str, tuple[int, int]]:
    """Target matrix name -> (exact zeros, entries)."""
    params = dict(model.named_parameters())
    return {n: (int((params[n] == 0).sum()), params[n].numel()) for n in target_names(model)}


def assert_pruned_to(zeros: dict, sparsity: float, scope: str) -> None:
    if scope == "layer":
        assert {n: z for n, (z, _) in zeros.items()} == {
            n: round(sparsity * k) for n, (_, k) in zeros.items()
        }
    else:
        assert sum(z for z, _ in zeros.values()) == round(sparsity * sum(k for _, k in zeros.values()))


# --- end to end ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, scope", [("run_mlm_cram", "global"), ("run_glue", "global"), ("run_qa", "layer")]
)
def test_recipe_prunes_gradually_and_saves_a_sparse_checkpoint(name, scope, data, tmp_path):
    out = tmp_path / "out"
    window = ["--gradual_end_step", "4", "--gradual_update_every", "2", "--gradual_scope", scope]
    RECIPE[name].main(recipe_args(name, data, out, "--max_steps", "6", "--gradual_sparsity", "0.5", *window))
    saved = MODEL_CLASS[name].from_pretrained(out)
    zeros = target_zeros(saved)
    # Exactly round(0.5·n) zeros two steps after the last event: pruned at step 4, then held while training on.
    assert_pruned_to(zeros, 0.5, scope)
    config = read_sparsity_config(out)
    assert (config["method"], config["level"], config["sparsity"], config["scope"]) == (
        "gradual magnitude",
        "0.5",
        0.5,
        scope,
    )
    assert config["method_params"] == {
        "schedule": "cubic",
        "initial_sparsity": 0.0,
        "start_step": 0,
        "end_step": 4,
        "update_every": 2,
    }
    assert sorted(config["targets"]) == sorted(zeros)
    assert config["achieved"]["target_zeros"] == sum(z for z, _ in zeros.values())
    load_sparse(out)  # the loader verifies the mask against the record
    assert "gradual magnitude pruning to 50 % while training" in model_card(out)  # cram-hf push's card
    assert keep_sparsity_callback(saved, str(out)) is not None  # --keep_sparsity's auto-detection downstream
    metrics = json.loads((out / "train_results.json").read_text())
    assert metrics["train_pruned_weights_nonzero"] == 0
    assert metrics["train_gradual_sparsity"] == pytest.approx(config["achieved"]["target_sparsity"])


def test_cram_with_gradual_pruning_of_an_already_sparse_model(sparse_model, data, tmp_path):
    model_dir, input_zeros = sparse_model  # 70 % pruned, no sparsity_config.json
    out = tmp_path / "out"
    args = recipe_args("run_glue", data, out, "--max_steps", "6", "--gradual_sparsity", "0.8")
    args[args.index("--model_name_or_path") + 1] = model_dir
    # A high rate: the input's zeros would move well into the kept magnitudes were they not held until the
    # first event (step 2).
    flags = [
        "--gradual_end_step",
        "4",
        "--gradual_update_every",
        "2",
        "--learning_rate",
        "1e-2",
        "--cram_rho",
        "0.05",
    ]
    trainer = run_glue.main([*args, *flags, "--cram_sparsities", "0.5", "0.9"])
    assert trainer.cram.active
    saved = AutoModelForSequenceClassification.from_pretrained(out)
    assert_pruned_to(target_zeros(saved), 0.8, "global")
    params = dict(saved.named_parameters())
    assert all(bool((params[n] == 0)[z].all()) for n, z in input_zeros.items()), "an input zero came back"
    config = read_sparsity_config(out)
    assert (config["method"], config["level"], config["base_model"]) == (
        "gradual magnitude",
        "0.8",
        os.path.basename(model_dir),  # a local base by its name: the record is uploaded with the model
    )


# --- the default end step ------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_steps, end", [(4, 3), (7, 5), (8, 6), (100, 75)])
def test_default_end_step_is_three_quarters_of_max_steps(max_steps, end, data, tmp_path):
    assert gradual_end_step(None, 0, max_steps) == end
    flags = ["--max_steps", str(max_steps), "--gradual_sparsity", "0.5"]
    _, _, _, gradual_args, training_args = parse("run_glue", recipe_args("run_glue", data, tmp_path, *flags))
    model = AutoModelForSequenceClassification.from_pretrained(data["model"])
    assert gradual_pruning_callback(gradual_args, training_args, model).end_step == end


def test_default_end_step_of_a_run_given_in_epochs(data, tmp_path):
    # 20 rows, batches of 4, accumulation 2: the Trainer's count of optimizer steps, known at train begin.
    epochs = ["--max_steps", "-1", "--num_train_epochs", "2", "--gradient_accumulation_steps", "2"]
    trainer = run_glue.main(
        recipe_args("run_glue", data, tmp_path / "out", *epochs, "--gradual_sparsity", "0.5")
    )
    total = trainer.state.max_steps
    assert trainer.state.global_step == total >= 4
    assert gradual_of(trainer).end_step == total * 3 // 4
    assert read_sparsity_config(tmp_path / "out")["method_params"]["end_step"] == total * 3 // 4
    # An explicit end step after the run's last step: refused when the run starts, before any step.
    late = recipe_args("run_glue", data, tmp_path / "late", *epochs, "--gradual_sparsity", "0.5")
    with pytest.raises(
        UsageError, match=f"gradual_end_step: {total + 1} is after the run's last optimizer step"
    ):
        run_glue.main([*late, "--gradual_end_step", str(total + 1)])
    assert not (tmp_path / "late" / "model.safetensors").exists()


# --- refusals --------------------------------------------------------------------------------------------------

ON = ["--gradual_sparsity", "0.5", "--max_steps", "8"]


@pytest.mark.parametrize("name", RECIPES)
@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--gradual_sparsity", "2:4"],
            r"^gradual_sparsity: gradual pruning takes .* not the N:M pattern '2:4'",
        ),
        (["--gradual_sparsity", "0"], r"^gradual_sparsity: must be > 0"),
        (["--gradual_sparsity", "1"], r"^gradual_sparsity: sparsity must be in \[0, 1\)"),
        ([*ON, "--gradual_start_step", "-1"], r"^gradual_start_step: must be an integer >= 0"),
        ([*ON, "--gradual_update_every", "0"], r"^gradual_update_every: must be an integer >= 1"),
        (
            [*ON, "--gradual_start_step", "3", "--gradual_end_step", "3"],
            r"^gradual_end_step: must be .* after",
        ),
        ([*ON, "--gradual_scope", "row"], r"^gradual_scope: must be one of"),
        (["--gradual_end_step", "4"], r"^gradual_end_step: has no effect without --gradual_sparsity"),
        (
            [*ON, "--gradual_end_step", "9"],
            r"^gradual_end_step: 9 is after the run's last optimizer step \(8\)",
        ),
        (
            ["--gradual_sparsity", "0.5"],
            r"^gradual_end_step: the default, 75 % of the run's 1 optimizer steps, is 0",
        ),
        ([*ON, "--do_train", "false"], r"^gradual_sparsity: .* add --do_train"),
    ],
)
def test_refusals_name_the_flag_before_any_work(name, flags, message, data, tmp_path, no_data_loads):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        RECIPE[name].main(recipe_args(name, data, out, *flags))
    assert not out.exists()


@pytest.mark.parametrize("name", ["run_glue", "run_qa"])  # run_mlm_cram has no --keep_sparsity
def test_gradual_with_keep_sparsity_false_is_refused_before_any_work(name, data, tmp_path, no_data_loads):
    out = tmp_path / "out"
    with pytest.raises(
        UsageError, match=r"^gradual_sparsity: .* cannot be combined with --keep_sparsity false"
    ):
        RECIPE[name].main(recipe_args(name, data, out, *ON, "--keep_sparsity", "false"))
    assert not out.exists()


def test_a_target_not_above_the_models_sparsity_is_refused(sparse_model, data, tmp_path):
    args = recipe_args("run_glue", data, tmp_path / "out", *ON)
    args[args.index("--model_name_or_path") + 1] = sparse_model[0]
    with pytest.raises(
        UsageError, match=r"^gradual_sparsity: the model is already 70.0 % sparse .* prune nothing"
    ):
        run_glue.main(args)
    assert not (tmp_path / "out").exists()


def test_gradual_flags_in_a_yaml_config(data, tmp_path):
    config = tmp_path / "gradual.yaml"
    config.write_text("gradual_sparsity: 0.9\ngradual_end_step: 6\ngradual_scope: layer\n")
    args = recipe_args("run_mlm_cram", data, tmp_path / "out", "--max_steps", "8")
    _, _, gradual_args, _ = parse("run_mlm_cram", [str(config), *args])
    assert (gradual_args.gradual_sparsity, gradual_args.gradual_end_step, gradual_args.gradual_scope) == (
        0.9,
        6,
        "layer",
    )
