"""Gradual magnitude pruning: the cubic schedule, exact counts per event, masks that only grow and are held
exactly between events and after the window (AdamW + weight decay + accumulation, CrAM on and off)."""

import logging
import math

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForSequenceClassification, TrainerCallback, TrainerControl, TrainerState

from cram_hf import CrAMConfig, CrAMTrainer, GradualPruningCallback
from cram_hf.gradual import cubic_sparsity
from cram_hf.targets import target_names


def make_model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(tiny_bert_config(num_labels=3))


def dataset(n=24, seq=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 64, (n, seq), generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return [
        {"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long), "labels": labels[i]}
        for i in range(n)
    ]


def expected_sparsity(t, s_f, t0, t1, s_i=0.0):
    """The Zhu & Gupta schedule written out independently of cram_hf.gradual."""
    if t < t0:
        return 0.0
    if t > t1:
        return s_f
    return s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3


def expected_events(t0, t1, every):
    return sorted(set(range(t0, t1 + 1, every)) | {t1})


def held_level(t, s_f, t0, t1, every, s_i=0.0):
    """The level of the last event at or before step t (0 before the first)."""
    past = [e for e in expected_events(t0, t1, every) if e <= t]
    return expected_sparsity(past[-1], s_f, t0, t1, s_i) if past else 0.0


def zeros_of(model, names):
    params = dict(model.named_parameters())
    return {n: params[n].detach() == 0 for n in names}


def expected_zeros(model, names, level, scope):
    """round(s·n) over all targets (global) or per matrix (layer)."""
    params = dict(model.named_parameters())
    if scope == "layer":
        return {n: round(level * params[n].numel()) for n in names}
    return round(level * sum(params[n].numel() for n in names))


def counts(zeros, scope):
    per = {n: int(z.sum()) for n, z in zeros.items()}
    return per if scope == "layer" else sum(per.values())


def only_grows(before, after):
    return all(not bool((before[n] & ~after[n]).any()) for n in before)


# --- the schedule --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "s_f, t0, t1, s_i", [(0.8, 10, 20, 0.0), (0.9, 0, 7, 0.0), (0.5, 3, 40, 0.2), (0.7, 5, 6, 0.0)]
)
def test_cubic_sparsity_matches_the_formula(s_f, t0, t1, s_i):
    for t in range(0, t1 + 6):
        got = cubic_sparsity(t, target=s_f, start_step=t0, end_step=t1, initial=s_i)
        assert got == pytest.approx(expected_sparsity(t, s_f, t0, t1, s_i), abs=1e-12), t
    assert cubic_sparsity(t0 - 1, target=s_f, start_step=t0, end_step=t1, initial=s_i) == 0.0
    assert cubic_sparsity(t0, target=s_f, start_step=t0, end_step=t1, initial=s_i) == pytest.approx(s_i)
    # Exactly the target (==, not approx) at end_step and after it.
    assert cubic_sparsity(t1, target=s_f, start_step=t0, end_step=t1, initial=s_i) == s_f
    assert cubic_sparsity(t1 + 100, target=s_f, start_step=t0, end_step=t1, initial=s_i) == s_f


def test_cubic_sparsity_hand_values():
    # Half-way through the window 1 - 0.5^3 = 87.5 % of the target is reached; a linear ramp would give 50 %.
    assert cubic_sparsity(15, target=0.8, start_step=10, end_step=20) == pytest.approx(0.7)
    assert cubic_sparsity(12, target=0.8, start_step=10, end_step=20) == pytest.approx(0.8 * (1 - 0.8**3))
    assert cubic_sparsity(5, target=0.5, start_step=0, end_step=10, initial=0.1) == pytest.approx(0.45)


def test_events_and_held_level():
    cb = GradualPruningCallback(0.6, start_step=2, end_step=9, update_every=3)
    assert [t for t in range(15) if cb.is_event(t)] == [2, 5, 8, 9] == expected_events(2, 9, 3)
    for t in range(15):
        assert cb.sparsity_at(t) == pytest.approx(held_level(t, 0.6, 2, 9, 3)), t
    assert cb.sparsity_at(9) == 0.6 and cb.sparsity_at(14) == 0.6


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        (dict(target="2:4"), "target"),
        (dict(target=1.0), "target"),
        (dict(target=-0.1), "target"),
        (dict(target="dense"), "target"),
        (dict(start_step=-1), "start_step"),
        (dict(start_step=1.5), "start_step"),
        (dict(start_step=5, end_step=5), "end_step"),
        (dict(start_step=5, end_step=3), "end_step"),
        (dict(update_every=0), "update_every"),
        (dict(update_every=2.0), "update_every"),
        (dict(initial=0.6), "initial"),
        (dict(initial="2:4"), "initial"),
        (dict(scope="row"), "scope"),
        (dict(targets=["("]), "targets"),
    ],
)
def test_refusals_name_the_argument(kwargs, argument):
    full = dict(target=0.5, start_step=0, end_step=10) | kwargs
    with pytest.raises(ValueError, match=f"^{argument}: ") as err:
        GradualPruningCallback(**full)
    assert "\n" not in str(err.value)
    if argument in ("target", "start_step", "end_step", "initial"):
        schedule = {k: v for k, v in full.items() if k in ("target", "start_step", "end_step", "initial")}
        with pytest.raises(ValueError, match=f"^{argument}: "):
            cubic_sparsity(3, **schedule)


def test_nm_refusal_explains_why():
    with pytest.raises(ValueError, match="N:M pattern '2:4'.*one-shot"):
        GradualPruningCallback("2:4", start_step=0, end_step=10)


def test_unknown_targets_fail_at_train_begin():
    cb = GradualPruningCallback(0.5, start_step=3, end_step=10, targets=["no_such_parameter"])
    with pytest.raises(ValueError, match="targets"):
        cb.on_train_begin(None, TrainerState(), TrainerControl(), model=make_model())


def test_warns_when_training_ends_before_end_step(caplog):
    cb = GradualPruningCallback(0.5, start_step=3, end_step=10)
    with caplog.at_level(logging.WARNING, logger="cram_hf.gradual"):
        cb.on_train_begin(None, TrainerState(max_steps=8), TrainerControl(), model=make_model())
    assert "end_step=10" in caplog.text


# --- events driven by hand: exact counts, growing masks, ties ------------------------------------------------


def quantize_(model, names):
    """Magnitudes in {1, 2, 3}/8: nearly every weight ties with a third of the others."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            p = params[n]
            level = (p.abs() * 8).round().clamp(1, 3)
            p.copy_(torch.where(p == 0, p, torch.sign(p) * level / 8))


@pytest.mark.parametrize("scope", ["global", "layer"])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize(
    "schedule", [dict(t0=2, t1=11, every=3, s_i=0.0), dict(t0=0, t1=6, every=1, s_i=0.1)], ids=["late", "at0"]
)
def test_events_prune_exact_counts_and_masks_only_grow(scope, ties, schedule):
    t0, t1, every, s_i, s_f = schedule["t0"], schedule["t1"], schedule["every"], schedule["s_i"], 0.75
    model = make_model()
    names = target_names(model)
    params = dict(model.named_parameters())
    if ties:
        quantize_(model, names)
    cb = GradualPruningCallback(s_f, t0, t1, every, initial=s_i, scope=scope)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.01)
    state, control = TrainerState(max_steps=t1 + 4), TrainerControl()
    g = torch.Generator().manual_seed(0)

    # What optimizer.step() sees: the largest |grad| at the entries pruned so far.
    seen = []
    opt.register_step_pre_hook(
        lambda *_: seen.append(
            max(float(torch.where(z, params[n].grad, 0).abs().max()) for n, z in previous.items())
        )
    )

    cb.on_train_begin(None, state, control, model=model, optimizer=opt)
    previous = zeros_of(model, names)
    at_event = previous
    if t0 == 0:  # the event for step 0 runs before the first optimizer step
        assert counts(previous, scope) == expected_zeros(model, names, s_i, scope)
    for t in range(1, t1 + 5):
        # One simulated optimizer step: dense random gradients (set directly, so no backward hook masks
        # them), SGD with momentum and weight decay, the callback's two optimizer events around it. The
        # noise added after the step stands for an optimizer whose update is not zero at a zero gradient
        # (factored moments, trust ratios): only on_optimizer_step's re-masking keeps those weights at zero.
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=g)
        cb.on_pre_optimizer_step(None, state, control)
        opt.step()
        assert seen[-1] == 0.0, f"step {t}: the optimizer saw gradients at pruned entries"
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=g), alpha=1e-3)
        cb.on_optimizer_step(None, state, control, optimizer=opt)
        if ties:
            quantize_(model, names)  # keep magnitudes tied at every event
        state.global_step = t
        cb.on_step_end(None, state, control, model=model, optimizer=opt)

        now = zeros_of(model, names)
        assert only_grows(previous, now), f"step {t}: a pruned weight came back"
        level = held_level(t, s_f, t0, t1, every, s_i)
        if t in expected_events(t0, t1, every):
            assert counts(now, scope) == expected_zeros(model, names, level, scope), t
            if level > 0:  # an event at level 0 (t0 with initial 0) prunes nothing and is not recorded
                assert cb.history[-1]["step"] == t and cb.history[-1]["level"] == pytest.approx(level)
            at_event = now
        else:  # held exactly: the very same positions as after the last event
            assert all(torch.equal(now[n], at_event[n]) for n in names), t
        assert cb.sparsity == pytest.approx(
            sum(int(z.sum()) for z in now.values()) / sum(z.numel() for z in now.values())
        )
        for n, z in now.items():
            buf = opt.state[params[n]].get("momentum_buffer")
            assert buf is None or not bool(buf[z].any()), f"{n}: momentum at pruned entries"
        previous = now
    assert counts(previous, scope) == expected_zeros(model, names, s_f, scope)
    cb.on_train_end(None, state, control)
    assert all(not p._backward_hooks for p in model.parameters())


def test_resume_restores_the_mask_without_pruning_more():
    model = make_model()
    names = target_names(model)
    first = GradualPruningCallback(0.6, start_step=2, end_step=12, update_every=4)
    state, control = TrainerState(max_steps=20), TrainerControl()
    first.on_train_begin(None, state, control, model=model)
    for t in range(1, 8):
        state.global_step = t
        first.on_step_end(None, state, control, model=model)
    first.on_train_end(None, state, control)
    saved = zeros_of(model, names)
    # A new run resumed at step 7 (between the events at 6 and 10): the level of step 6, the same zeros.
    resumed = GradualPruningCallback(0.6, start_step=2, end_step=12, update_every=4)
    resumed.on_train_begin(None, TrainerState(global_step=7, max_steps=20), control, model=model)
    assert all(torch.equal(zeros_of(model, names)[n], saved[n]) for n in names)
    assert resumed.keep is not None and resumed.keep.num_pruned == sum(int(z.sum()) for z in saved.values())
    assert resumed.sparsity_at(7) == pytest.approx(expected_sparsity(6, 0.6, 2, 12))
    resumed.on_train_end(None, state, control)


# --- inside a Trainer ----------------------------------------------------------------------------------------


class Recorder(TrainerCallback):
    """Zero patterns of the targets where the loop is: at on_optimizer_step (the weights that step just
    updated, global_step still t - 1) and at on_step_end (after this step's event, global_step == t)."""

    def __init__(self, names):
        self.names = names
        self.at_optimizer_step, self.at_step_end, self.logs = {}, {}, []

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.at_optimizer_step[state.global_step + 1] = zeros_of(model, self.names)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.at_step_end[state.global_step] = zeros_of(model, self.names)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


@pytest.mark.parametrize(
    "cram", [{}, {"cram_rho": 0.05, "cram_sparsities": ["0.5", "2:4"]}], ids=["adamw", "cram"]
)
def test_training_prunes_on_schedule_and_holds_the_mask(tmp_path, cram):
    s_f, t0, t1, every, max_steps = 0.7, 2, 9, 3, 12
    model = make_model()
    names = target_names(model)
    n = sum(p.numel() for name, p in model.named_parameters() if name in names)
    callback = GradualPruningCallback(s_f, start_step=t0, end_step=t1, update_every=every)
    recorder = Recorder(names)
    args = CrAMConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=2,
        max_steps=max_steps,
        learning_rate=5e-2,
        weight_decay=0.1,
        max_grad_norm=1.0,
        optim="adamw_torch",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
        **({"cram_rho": 0.0, "cram_sparsities": []} | cram),
    )
    trainer = CrAMTrainer(model=model, args=args, train_dataset=dataset(), callbacks=[callback, recorder])
    trainer.train()

    events = expected_events(t0, t1, every)
    assert [h["step"] for h in callback.history] == events[1:]  # the event at t0 is at level 0: skipped
    last_event = None
    for t in range(1, max_steps + 1):
        zeros = recorder.at_step_end[t]
        count = sum(int(z.sum()) for z in zeros.values())
        assert count == round(held_level(t, s_f, t0, t1, every) * n), f"step {t}"
        # The optimizer step t still trained the model of step t - 1: the event comes after it.
        before = sum(int(z.sum()) for z in recorder.at_optimizer_step[t].values())
        assert before == round(held_level(t - 1, s_f, t0, t1, every) * n), f"optimizer step {t}"
        if t > 1:
            assert only_grows(recorder.at_step_end[t - 1], zeros), f"step {t}: a pruned weight came back"
        if t in events:
            last_event = zeros
        elif last_event is not None:  # between events and after the window: the very same positions
            assert all(torch.equal(zeros[k], last_event[k]) for k in names), f"step {t}: mask not held"
    final = zeros_of(model, names)
    assert sum(int(z.sum()) for z in final.values()) == round(s_f * n)
    assert all(torch.equal(final[k], recorder.at_step_end[t1][k]) for k in names)
    assert callback.sparsity == round(s_f * n) / n
    assert callback.keep.violations() == 0
    # Kept weights trained on after the window; pruned ones carry no AdamW state.
    params = dict(model.named_parameters())
    opt = trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer") else trainer.optimizer
    for k, z in final.items():
        for key in ("exp_avg", "exp_avg_sq"):
            assert float(opt.state[params[k]][key][z].abs().max()) == 0.0, f"{k}: {key} at pruned entries"
    assert all(not p._backward_hooks for p in model.parameters()), "gradient hooks left on the model"

    # Logs: every training log carries the achieved sparsity of its step, in log_history too.
    train_logs = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in train_logs] == list(range(1, max_steps + 1))
    for h in train_logs:
        assert h["gradual_sparsity"] == round(held_level(h["step"], s_f, t0, t1, every) * n) / n, h["step"]
    assert all("gradual_sparsity" in logs for logs in recorder.logs)
    assert math.isclose(train_logs[-1]["gradual_sparsity"], s_f, abs_tol=1 / n)


def test_an_interrupted_train_leaves_no_hooks(tmp_path):
    from conftest import tiny_bert_config
    from transformers import BertForSequenceClassification, TrainerCallback

    from cram_hf import CrAMConfig, CrAMTrainer, GradualPruningCallback

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(num_labels=2))
    gen = torch.Generator().manual_seed(0)
    data = [
        {"input_ids": torch.randint(5, 64, (8,), generator=gen), "labels": torch.tensor(i % 2)}
        for i in range(16)
    ]

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                raise KeyboardInterrupt

    args = CrAMConfig(
        output_dir=str(tmp_path),
        max_steps=6,
        per_device_train_batch_size=4,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        cram_rho=0.0,
        cram_sparsities=[],
    )
    gradual = GradualPruningCallback(0.5, start_step=1, end_step=4)
    with pytest.raises(KeyboardInterrupt):
        CrAMTrainer(model=model, args=args, train_dataset=data, callbacks=[gradual, Interrupt()]).train()
    assert all(not p._backward_hooks for p in model.parameters())
