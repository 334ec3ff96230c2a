"""The cost-saving CrAM schedules: which steps take the CrAM update, and what the other steps are."""

import numpy as np
import pytest

from cram_hf import CrAMConfig
from cram_hf.schedule import cram_step_due


def test_interval_runs_cram_on_every_kth_step_from_step_0():
    due = [cram_step_due(t, seed=0, interval=4) for t in range(12)]
    assert due == [t in (0, 4, 8) for t in range(12)]
    assert all(cram_step_due(t, seed=3) for t in range(20))  # the default: every step


def test_probability_is_a_function_of_seed_and_step_with_the_asked_share():
    draws = [cram_step_due(t, seed=7, probability=0.25) for t in range(4000)]
    assert draws == [cram_step_due(t, seed=7, probability=0.25) for t in range(4000)]  # same (seed, step)
    assert abs(np.mean(draws) - 0.25) < 0.03
    other = [cram_step_due(t, seed=8, probability=0.25) for t in range(4000)]
    assert draws != other
    # Independent draws, not a pattern: P(due at t+1 | due at t) is the share itself.
    after_due = [b for a, b in zip(draws, draws[1:]) if a]
    assert abs(np.mean(after_due) - 0.25) < 0.05


def test_the_schedule_draw_is_not_the_level_draw():
    # With 4 levels, a schedule of p = 0.25 drawn from the level stream would be "level index == 0".
    level_zero = [int(np.random.default_rng([5, t]).integers(4)) == 0 for t in range(400)]
    due = [cram_step_due(t, seed=5, probability=0.25) for t in range(400)]
    assert due != level_zero


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"cram_interval": 0}, "cram_interval"),
        ({"cram_interval": -2}, "cram_interval"),
        ({"cram_interval": 1.5}, "cram_interval"),
        ({"cram_interval": True}, "cram_interval"),
        ({"cram_probability": 0}, "cram_probability"),
        ({"cram_probability": 1.5}, "cram_probability"),
        ({"cram_probability": float("nan")}, "cram_probability"),
        ({"cram_probability": "often"}, "cram_probability"),
        ({"cram_interval": 2, "cram_probability": 0.5}, "choose one"),
    ],
)
def test_bad_schedule_fields_are_refused_by_the_config(tmp_path, fields, message):
    with pytest.raises(ValueError, match=message):
        CrAMConfig(output_dir=str(tmp_path), **fields)


def test_schedule_fields_parse_from_strings(tmp_path):
    args = CrAMConfig(output_dir=str(tmp_path), cram_interval="3")
    assert args.cram_interval == 3 and args.cram_probability == 1.0
    args = CrAMConfig(output_dir=str(tmp_path), cram_probability="0.25")
    assert args.cram_probability == 0.25


# --- in the trainer ------------------------------------------------------------------------------------------

import copy  # noqa: E402

import torch  # noqa: E402
from test_cram_update import InOrder, make_data, sgd_args  # noqa: E402
from transformers import BertForMaskedLM, Trainer  # noqa: E402

from cram_hf.cram_step import CrAM  # noqa: E402


class Reference(InOrder):
    """Full CrAM on the steps ``due(step)`` names, the stock ``Trainer.training_step`` on the others: what a
    schedule must be, built from the unscheduled trainer."""

    due = staticmethod(lambda step: True)

    def training_step(self, model, inputs, num_items_in_batch=None):
        if self.due(self.state.global_step):
            return super().training_step(model, inputs, num_items_in_batch)
        return Trainer.training_step(self, model, inputs, num_items_in_batch)


def train(model, args, data, cls=InOrder, due=None):
    trainer = cls(model=model, args=args, train_dataset=data)
    if due is not None:
        trainer.due = due
    trainer.train()
    return trainer


@pytest.fixture
def passes(monkeypatch):
    """Every compressed pass the trainer enters: (global step, level)."""
    seen = []
    original = CrAM.compressed_point

    def recording(self, level, *args, **kwargs):
        seen.append(level)
        return original(self, level, *args, **kwargs)

    monkeypatch.setattr(CrAM, "compressed_point", recording)
    return seen


@pytest.mark.parametrize(
    "schedule, rule, accumulation",
    [
        ({"cram_interval": 3}, lambda step: step % 3 == 0, 1),
        ({"cram_probability": 0.5}, None, 2),  # the rule: the draws, checked below to mix both kinds
    ],
    ids=["interval", "probability-accumulation"],
)
def test_scheduled_steps_are_the_full_update_and_the_others_the_stock_step(
    tmp_path, tiny_config, schedule, rule, accumulation, passes
):
    steps = 6
    common = dict(
        cram_rho=0.1, cram_sparsities=["0.5", "0.7", "2:4"], gradient_accumulation_steps=accumulation
    )
    if rule is None:
        rule = lambda step: cram_step_due(step, seed=7, probability=0.5)  # noqa: E731
        assert 0 < sum(map(rule, range(steps))) < steps
    data = make_data(4 * accumulation * steps)
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config)
    reference = copy.deepcopy(model)
    args = sgd_args(tmp_path, **common, **schedule)
    args.max_steps = steps
    trainer = train(model, args, data)
    ref_args = sgd_args(tmp_path, **common)
    ref_args.max_steps = steps
    passes_before = len(passes)
    ref = train(reference, ref_args, data, Reference, due=rule)
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), name
    due_steps = [t for t in range(steps) if rule(t)]
    # Plain steps enter no compressed point; each CrAM step gets the level the unscheduled run draws for it.
    assert passes[:passes_before] == [ref.cram.level_at(t) for t in due_steps for _ in range(accumulation)]
    fractions = [h["cram_step_fraction"] for h in trainer.state.log_history if "loss" in h]
    assert fractions == [float(rule(t)) for t in range(steps)]
    assert all("cram_step_fraction" not in h for h in ref.state.log_history)  # not logged unscheduled


def test_a_scheduled_run_differs_from_full_cram_and_from_plain(tmp_path, tiny_config):
    """Guards the test above: the two trainings it compares are not trivially the same thing."""
    data = make_data(16)
    results = []
    for schedule in ({}, {"cram_interval": 2}, {"cram_rho": 0.0, "cram_sparsities": []}):
        torch.manual_seed(0)
        model = BertForMaskedLM(tiny_config)
        fields = {"cram_rho": 0.1, "cram_sparsities": ["0.7"], **schedule}
        args = sgd_args(tmp_path, **fields)
        args.max_steps = 4
        train(model, args, data)
        results.append(model.bert.encoder.layer[0].output.dense.weight.detach().clone())
    full, every_2, plain = results
    assert not torch.equal(every_2, full) and not torch.equal(every_2, plain)
