"""Knowledge distillation from a dense teacher (cram_hf.distillation, CrAMTrainer(teacher_model=...)): the loss
against a written-out KL on hand-made logits, the trainer with CrAM on and off, accumulation and a kept mask, the
refusals, and the three recipes end to end, all on tiny random BERTs."""

import copy
import math

import pytest
import test_recipe_configs
import test_recipe_mlm
import test_recipes_transfer
import torch
from conftest import tiny_bert_config
from test_cram_update import make_data, stack
from test_recipe_configs import parse_config
from test_recipes_transfer import (
    assert_same_zeros,
    common_args,
    run_glue,
    run_qa,
    squad_examples,
    unloadable_model,
    write_nested_squad,
    write_pairs_csv,
)
from test_sparse_finetune import dataset, make_model, prune_
from transformers import (
    AutoConfig,
    BertForMaskedLM,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    Trainer,
)
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from cram_hf import CrAMConfig, CrAMTrainer, CrAMTrainerForMaskedLM, Distiller, KeepSparsityCallback
from cram_hf.checkpoint import check_model_source
from cram_hf.diagnostics import HostReadCounter
from cram_hf.distillation import check_distill_fields, distillation_logits, distillation_loss

# The other recipe tests' fixtures, shared rather than copied: the pruned tiny model, the MLM set-up, the mirror.
sparse_model = test_recipes_transfer.sparse_model
mlm_setup = test_recipe_mlm.setup
repo_mirror = test_recipe_configs.repo_mirror

# --- the loss, against the formula written out -------------------------------------------------------------


def explicit_kd(student_rows, teacher_rows, t):
    """T² · mean over rows of Σ_c p_t,c · (log p_t,c − log p_s,c), in plain Python floats."""

    def log_softmax(row):
        z = [v / t for v in row]
        top = max(z)
        lse = top + math.log(sum(math.exp(v - top) for v in z))
        return [v - lse for v in z]

    total = 0.0
    for s, q in zip(student_rows, teacher_rows):
        log_s, log_t = log_softmax(s), log_softmax(q)
        total += sum(math.exp(b) * (b - a) for a, b in zip(log_s, log_t))
    return t * t * total / len(student_rows)


STUDENT = [[1.0, -2.0, 0.5], [0.0, 3.0, -1.0], [2.5, 2.5, -4.0]]
TEACHER = [[3.0, 0.0, 0.0], [-1.0, 1.0, 4.0], [0.0, 6.0, -2.0]]


@pytest.mark.parametrize("t", [1.0, 2.0, 5.5])
def test_classification_kd_is_the_explicit_kl_over_every_example(t):
    s, q = torch.tensor(STUDENT), torch.tensor(TEACHER)
    # Every example is a row, whatever its label: classification labels are never positions to skip.
    (rows,) = distillation_logits({"logits": s}, {"labels": torch.tensor([0, -100, 2])})
    assert torch.equal(rows, s)
    assert distillation_loss(rows, q, t).item() == pytest.approx(explicit_kd(STUDENT, TEACHER, t), rel=1e-6)
    assert distillation_loss(s.half(), q.bfloat16(), t).dtype == torch.float32  # whatever the logits' dtype


def test_token_level_kd_uses_only_positions_that_carry_a_label():
    # [batch 1, length 3, vocab 3]: positions 0 and 2 are unlabelled (-100) and carry no KD.
    s, q = torch.tensor([STUDENT]), torch.tensor([TEACHER])
    labels = torch.tensor([[-100, 1, -100]])
    (student,) = distillation_logits({"logits": s}, {"labels": labels})
    (teacher,) = distillation_logits({"logits": q}, {"labels": labels})
    assert student.shape == (1, 3)
    assert distillation_loss(student, teacher, 2.0).item() == pytest.approx(
        explicit_kd(STUDENT[1:2], TEACHER[1:2], 2.0), rel=1e-6
    )
    nothing = {"labels": torch.full_like(labels, -100)}  # a micro-batch without a labelled position adds 0
    (student,), (teacher,) = (
        distillation_logits({"logits": s}, nothing),
        distillation_logits({"logits": q}, nothing),
    )
    assert distillation_loss(student, teacher, 2.0) == 0


def softmax(row, t):
    exps = [math.exp(v / t) for v in row]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("hardness", [1.0, 0.25])
def test_the_distiller_loss_and_its_gradient_are_the_formula_written_out(hardness):
    # L = h·KD + (1-h)·task; dKD/dz_s = T·(p_s − p_t) / rows (the T² of KD times the 1/T of the softened softmax).
    t, task = 2.0, torch.tensor(1.5)
    student = torch.tensor(STUDENT, requires_grad=True)
    distiller = Distiller(torch.nn.Linear(1, 1), temperature=t, hardness=hardness)
    loss = distiller.loss(task, (student,), (torch.tensor(TEACHER),))
    assert loss.item() == pytest.approx(hardness * explicit_kd(STUDENT, TEACHER, t) + (1 - hardness) * 1.5)
    loss.backward()
    expected = [
        [hardness * t * (ps - pt) / len(STUDENT) for ps, pt in zip(softmax(s, t), softmax(q, t))]
        for s, q in zip(STUDENT, TEACHER)
    ]
    torch.testing.assert_close(student.grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_the_distiller_weights_kd_by_one_over_k_only_when_the_task_loss_is_already_a_share():
    # The step divides the loss by K unless the task loss is already this micro-batch's share of the batch:
    # then KD, a per-micro-batch mean, is divided here, so it weighs 1/K in the step either way.
    kd = explicit_kd(STUDENT, TEACHER, 2.0)
    rows = (torch.tensor(STUDENT),), (torch.tensor(TEACHER),)
    distiller = Distiller(torch.nn.Linear(1, 1), temperature=2.0, hardness=0.5)
    plain = distiller.loss(torch.tensor(1.0), *rows, accumulation_steps=4, task_scaled=False)
    shared = distiller.loss(torch.tensor(1.0), *rows, accumulation_steps=4, task_scaled=True)
    assert plain.item() == pytest.approx(0.5 * kd + 0.5)
    assert shared.item() == pytest.approx(0.5 * kd / 4 + 0.5)


class Counting(torch.nn.Module):
    """A teacher that counts its forwards and returns fixed logits on the device and dtype of its weight."""

    def __init__(self, logits):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(()))
        self.logits, self.calls = logits, 0

    def forward(self, input_ids):
        self.calls += 1
        return SequenceClassifierOutput(logits=self.logits.to(self.weight) * self.weight)


def test_the_distiller_runs_the_teacher_once_per_shared_micro_batch_and_logs_the_first_loss_only():
    teacher = Counting(torch.tensor(TEACHER)).double().train()
    distiller = Distiller(teacher, temperature=2.0, hardness=0.5)
    student = torch.nn.Linear(2, 2)  # float32 on the CPU: the teacher follows it
    inputs = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "labels": torch.tensor([0, 1, 2])}
    s = (torch.tensor(STUDENT),)
    assert not teacher.training and not teacher.weight.requires_grad  # frozen at construction
    with distiller.sharing_teacher(inputs, student):
        first = distiller.loss(
            torch.tensor(1.0), s, distiller.teacher_rows(inputs, student), accumulation_steps=2
        )
        second = distiller.loss(
            torch.tensor(9.0), s, distiller.teacher_rows(inputs, student), accumulation_steps=2
        )
    assert teacher.calls == 1 and distiller.shared is None
    assert teacher.weight.dtype == torch.float32
    assert first.item() == pytest.approx(0.5 * explicit_kd(STUDENT, TEACHER, 2.0) + 0.5, rel=1e-6)
    assert second.item() != first.item()
    distiller.loss(torch.tensor(5.0), s, distiller.teacher_rows(inputs, student))  # outside: not recorded
    assert teacher.calls == 2
    with pytest.raises(RuntimeError), distiller.sharing_teacher(inputs, student):
        raise RuntimeError("out of memory")  # nothing left shared
    assert distiller.shared is None
    # The micro-batch weight 1/K cancels in the mean: the first loss's own terms, whatever was said outside.
    logs = distiller.pop_logs()
    assert logs == {"distill_loss": round(explicit_kd(STUDENT, TEACHER, 2.0), 4), "task_loss": 1.0}
    assert distiller.pop_logs() == {}


def test_check_distill_fields_canonicalises_numbers_and_local_teacher_folders(tmp_path, monkeypatch):
    make_model(1).save_pretrained(tmp_path / "teacher")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert check_distill_fields("~/teacher", "5.5", 1, check_model_source) == (
        str(tmp_path / "teacher"),
        5.5,
        1.0,
    )
    assert check_distill_fields("org/teacher", 2, 0.5, check_model_source) == ("org/teacher", 2.0, 0.5)
    assert check_distill_fields(None, 2.0, 1.0, check_model_source) == (None, 2.0, 1.0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"^distill_teacher \(--distill_teacher_model_name_or_path\): .*config"
    ):
        check_distill_fields(str(tmp_path / "empty"), 2.0, 1.0, check_model_source)
    with pytest.raises(ValueError, match="^distill_hardness"):
        check_distill_fields(None, 2.0, True, check_model_source)
    assert off(tmp_path, distill_teacher="~/teacher").distill_teacher == str(tmp_path / "teacher")


class HandMade(torch.nn.Module):
    """A 'model' whose outputs are fixed hand-made logits and a fixed task loss (plus a trainable zero)."""

    output = SequenceClassifierOutput

    def __init__(self, task_loss=1.25, **logits):
        super().__init__()
        self.zero = torch.nn.Parameter(torch.zeros(()))
        self.task_loss, self.logits = task_loss, logits

    def forward(self, input_ids, attention_mask=None, labels=None):
        return self.output(
            loss=self.zero + self.task_loss, **{k: v + self.zero for k, v in self.logits.items()}
        )


class HandMadeQA(HandMade):
    output = QuestionAnsweringModelOutput

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None):
        return super().forward(input_ids, attention_mask)


def off(tmp_path, **fields):
    return CrAMConfig(
        output_dir=str(tmp_path / "out"),
        report_to=[],
        use_cpu=True,
        cram_rho=0.0,
        cram_sparsities=[],
        **fields,
    )


@pytest.mark.parametrize("hardness", [1.0, 0.3])
def test_qa_kd_averages_start_and_end_over_unpadded_positions_and_mixes_in_the_task_loss(tmp_path, hardness):
    # Two examples over 4 positions; the first has one padding position, which takes no part in either softmax.
    s_start, s_end = (
        [[1.0, 0.0, -1.0, 9.0], [0.5, 2.0, 0.0, 1.0]],
        [[0.0, 2.0, 1.0, -9.0], [1.0, 1.0, 3.0, 0.0]],
    )
    t_start, t_end = (
        [[3.0, -1.0, 0.0, -7.0], [0.0, 0.0, 4.0, 1.0]],
        [[-2.0, 0.0, 2.0, 5.0], [2.0, 0.0, 0.0, 1.0]],
    )
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    start = torch.tensor(s_start, requires_grad=True)
    student = HandMadeQA(start_logits=start, end_logits=torch.tensor(s_end))
    teacher = HandMadeQA(start_logits=torch.tensor(t_start), end_logits=torch.tensor(t_end))
    t = 5.5
    trainer = CrAMTrainer(
        model=student,
        args=off(tmp_path, distill_temperature=t, distill_hardness=hardness),
        teacher_model=teacher,
    )
    inputs = {
        "input_ids": torch.zeros(2, 4, dtype=torch.long),
        "attention_mask": mask,
        "start_positions": torch.tensor([0, 1]),
        "end_positions": torch.tensor([1, 2]),
    }
    loss = trainer.compute_loss(student, inputs)

    def unpadded(rows):
        return [rows[0][:3], rows[1]]

    kd = 0.5 * (
        explicit_kd(unpadded(s_start), unpadded(t_start), t)
        + explicit_kd(unpadded(s_end), unpadded(t_end), t)
    )
    assert loss.item() == pytest.approx(hardness * kd + (1 - hardness) * 1.25, rel=1e-6)
    loss.backward()
    assert start.grad[0, 3] == 0 and torch.isfinite(start.grad).all()  # padding: no gradient, no NaN


def test_classification_trainer_loss_is_hardness_times_kd_plus_the_rest_task_loss(tmp_path):
    student = HandMade(logits=torch.tensor(STUDENT))
    teacher = HandMade(logits=torch.tensor(TEACHER))
    trainer = CrAMTrainer(
        model=student,
        args=off(tmp_path, distill_temperature=2.0, distill_hardness=0.6),
        teacher_model=teacher,
    )
    inputs = {"input_ids": torch.zeros(3, 2, dtype=torch.long), "labels": torch.tensor([0, 1, 2])}
    loss, outputs = trainer.compute_loss(student, inputs, return_outputs=True)
    assert isinstance(outputs, SequenceClassifierOutput)
    assert loss.item() == pytest.approx(0.6 * explicit_kd(STUDENT, TEACHER, 2.0) + 0.4 * 1.25, rel=1e-6)


# --- the trainer on tiny BERTs --------------------------------------------------------------------------------


def sharp_teacher(seed=1):
    """A classifier whose logits are far from uniform (a random tiny BERT's are all ≈ 0, which makes KD ≈ 0)."""
    teacher = make_model(seed)
    with torch.no_grad():
        teacher.classifier.weight.mul_(200)
    return teacher


def kd_trainer(tmp_path, student, teacher, *, callbacks=(), cls=CrAMTrainer, data=None, **fields):
    """CrAM+ (levels 0.5 and 2:4) with accumulation 2 and KD at hardness 0.5, unless ``fields`` say otherwise."""
    settings = dict(
        cram_rho=0.05,
        cram_sparsities=["0.5", "2:4"],
        distill_temperature=2.0,
        distill_hardness=0.5,
        gradient_accumulation_steps=2,
        max_steps=3,
    )
    args = CrAMConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        learning_rate=5e-2,
        weight_decay=0.1,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        use_cpu=True,
        seed=3,
        **(settings | fields),
    )
    return cls(
        model=student,
        args=args,
        train_dataset=data or dataset(),
        teacher_model=teacher,
        callbacks=list(callbacks),
    )


def logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if "loss" in h]


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize(
    "cram",
    [{}, {"cram_rho": 0.0, "cram_sparsities": [], "gradient_accumulation_steps": 1}],
    ids=["cram-accumulation", "plain"],
)
def test_hardness_zero_is_exactly_the_loss_and_gradients_without_a_teacher(tmp_path, cram):
    runs = []
    for teacher in (None, sharp_teacher()):
        student = make_model(0)
        trainer = kd_trainer(tmp_path, student, teacher, distill_hardness=0.0, **cram)
        trainer.train()
        runs.append((logged(trainer, "loss"), params(student)))
    (loss, weights), (kd_loss, kd_weights) = runs
    assert loss == kd_loss
    assert all(torch.equal(weights[n], kd_weights[n]) for n in weights)


def test_the_teacher_is_frozen_outside_the_model_and_follows_the_students_dtype(tmp_path):
    student, teacher = make_model(0), sharp_teacher()
    before = params(teacher)
    teacher.double()  # moved to the student's float32 at the first step, exactly (the values were float32)
    trainer = kd_trainer(tmp_path, student, teacher)
    trainer.train()
    assert trainer.teacher_model is teacher and not teacher.training
    for n, p in teacher.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[n]), n
        assert p.grad is None and not p.requires_grad, n
    assert not any(m is teacher for m in trainer.model.modules())
    in_optimizer = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    trainer.save_model(str(tmp_path / "saved"))
    saved = BertForSequenceClassification.from_pretrained(tmp_path / "saved")
    assert set(saved.state_dict()) == set(student.state_dict())  # the checkpoint is the student's alone


@pytest.mark.parametrize("accumulation", [1, 2])
def test_the_teacher_runs_once_per_micro_batch_and_both_cram_passes_reuse_it(tmp_path, accumulation):
    student, teacher = make_model(0), sharp_teacher()
    calls = {"teacher": 0, "student": 0}
    teacher.register_forward_hook(lambda *_: calls.__setitem__("teacher", calls["teacher"] + 1))
    student.register_forward_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1))
    trainer = kd_trainer(tmp_path, student, teacher, gradient_accumulation_steps=accumulation, max_steps=2)
    trainer.train()
    assert trainer.cram.active
    assert calls == {"teacher": 2 * accumulation, "student": 2 * 2 * accumulation}
    assert trainer.distiller.shared is None  # nothing kept between steps


def test_the_mask_stays_exact_through_kd_fine_tuning_with_keep_sparsity(tmp_path):
    student = make_model(0)
    zeros = prune_(student)
    callback = KeepSparsityCallback.from_model(student)
    before = params(student)
    trainer = kd_trainer(tmp_path, student, sharp_teacher(), callbacks=[callback], max_steps=4)
    trainer.train()
    now = dict(student.named_parameters())
    for n, z in zeros.items():
        assert torch.equal(now[n].detach() == 0, z), f"{n}: zero pattern changed"
        assert (now[n].detach() != before[n])[~z].float().mean() > 0.9, f"{n}: kept weights did not train"
    assert callback.violations() == 0


@pytest.mark.parametrize(
    "cram",
    [{"cram_rho": 0.0, "cram_sparsities": [], "gradient_accumulation_steps": 1}, {}],
    ids=["cram-off", "cram-accumulation"],
)
def test_logged_distill_and_task_losses_make_up_the_logged_loss(tmp_path, cram):
    student, teacher = make_model(0), sharp_teacher()
    batch = stack([{k: v for k, v in row.items() if k != "labels"} for row in dataset()])

    @torch.no_grad()
    def kd():
        return distillation_loss(student(**batch).logits, teacher(**batch).logits, 2.0).item()

    before = kd()
    trainer = kd_trainer(tmp_path, student, teacher, max_steps=4, **cram)
    trainer.train()
    assert trainer.cram.active == bool(cram == {})
    loss, distill, task = (logged(trainer, k) for k in ("loss", "distill_loss", "task_loss"))
    assert len(loss) == len(distill) == len(task) == 4
    for total, d, t in zip(loss, distill, task):
        assert total == pytest.approx(0.5 * d + 0.5 * t, abs=2e-4)  # the logs round to 4 decimals
    assert min(distill) > 0.05 and kd() < before  # there is something to distil, and it is learnt


def test_a_distillation_step_reads_nothing_more_back_to_the_host_than_its_forwards(tmp_path):
    batch = stack(dataset()[:4])

    def reads(trainer, model):
        trainer.create_optimizer_and_scheduler(num_training_steps=1)
        trainer.current_gradient_accumulation_steps = 1
        trainer.training_step(model, batch)  # warm-up: lazily created state is not part of a step
        with HostReadCounter() as counter:
            trainer.training_step(model, batch)
        return counter.total

    stock_model = make_model(0)
    stock = reads(Trainer(model=stock_model, args=off(tmp_path)), stock_model)
    student = make_model(0)
    kd = reads(kd_trainer(tmp_path, student, sharp_teacher(), gradient_accumulation_steps=1), student)
    assert kd == 3 * stock  # the teacher's forward and CrAM's two passes, as many as each forward makes


def test_masked_lm_kd_is_computed_at_the_masked_positions_only(tmp_path, tiny_config):
    torch.manual_seed(0)
    student, teacher = BertForMaskedLM(tiny_config), BertForMaskedLM(tiny_config)
    with torch.no_grad():
        teacher.cls.predictions.bias.normal_(0, 3.0)
    batch = stack(make_data(4))
    batch["labels"][:, ::2] = -100  # half the positions carry no label
    labelled = int((batch["labels"] != -100).sum())
    rows = []
    teacher.get_output_embeddings().register_forward_hook(lambda *hook: rows.append(tuple(hook[2].shape)))
    args = off(tmp_path, distill_temperature=2.0, distill_hardness=0.7)
    mlm = CrAMTrainerForMaskedLM(model=student, args=args, teacher_model=teacher)
    loss = mlm.compute_loss(student, dict(batch))
    assert rows == [(labelled, 64)]  # the teacher projected the masked positions only

    with torch.no_grad():  # the same from the full-vocabulary logits, selected afterwards
        features = {k: v for k, v in batch.items() if k != "labels"}
        select = batch["labels"] != -100
        s, q = student(**features).logits[select], teacher(**features).logits[select]
        expected = 0.7 * distillation_loss(s, q, 2.0) + 0.3 * torch.nn.functional.cross_entropy(
            s, batch["labels"][select]
        )
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    generic = CrAMTrainer(model=student, args=args, teacher_model=teacher)
    torch.testing.assert_close(generic.compute_loss(student, dict(batch)), expected, rtol=1e-5, atol=1e-6)
    mlm_loss, _ = mlm.compute_loss(student, dict(batch), return_outputs=True)  # evaluation's path
    torch.testing.assert_close(mlm_loss, expected, rtol=1e-5, atol=1e-6)


# --- refusals, before any training ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value",
    [
        ("distill_temperature", 0.0),
        ("distill_temperature", -1.0),
        ("distill_temperature", float("inf")),
        ("distill_temperature", "hot"),
        ("distill_hardness", -0.1),
        ("distill_hardness", 1.5),
        ("distill_teacher", "./no/such/teacher"),
    ],
)
def test_bad_distillation_settings_are_refused_with_the_field_named(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"^{field}"):
        off(tmp_path, **{field: value})


def test_the_recipe_flag_is_an_alias_of_distill_teacher(tmp_path):
    from transformers import HfArgumentParser

    parser = HfArgumentParser(CrAMConfig)
    for flag in ("--distill_teacher", "--distill_teacher_model_name_or_path"):
        (args,) = parser.parse_args_into_dataclasses(["--output_dir", str(tmp_path), flag, "org/teacher"])
        assert args.distill_teacher == "org/teacher"


def relabelled(model, names):
    model.config.id2label = dict(enumerate(names))
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    return model


@pytest.mark.parametrize(
    "teacher,problem",
    [
        (
            lambda: BertForSequenceClassification(tiny_bert_config(vocab_size=65, num_labels=3)),
            "vocab_size 65",
        ),
        (lambda: BertForSequenceClassification(tiny_bert_config(num_labels=2)), "num_labels 2"),
        (lambda: relabelled(make_model(1), ["b", "a", "c"]), r"labels \['b', 'a', 'c'\] in this order"),
    ],
    ids=["vocabulary", "label-count", "label-order"],
)
def test_a_teacher_that_does_not_line_up_is_refused_at_construction(tmp_path, teacher, problem):
    student = relabelled(make_model(0), ["a", "b", "c"])
    with pytest.raises(ValueError, match=f"^distill_teacher: .*{problem}"):
        kd_trainer(tmp_path, student, teacher())


def test_a_teacher_checkpoint_without_the_students_head_is_refused(tmp_path):
    # A masked-LM checkpoint has no classifier (nor pooler): loaded as a classifier they would be random.
    folder = tmp_path / "mlm-teacher"
    BertForMaskedLM(tiny_bert_config()).save_pretrained(folder)
    student = make_model(0)
    with pytest.raises(
        ValueError, match=r"^distill_teacher: .*mlm-teacher.*classifier\.bias, classifier\.weight"
    ):
        CrAMTrainer(model=student, args=off(tmp_path, distill_teacher=str(folder)), train_dataset=dataset())
    # The same head, saved: accepted.
    make_model(1).save_pretrained(tmp_path / "cls-teacher")
    trainer = CrAMTrainer(
        model=student,
        args=off(tmp_path, distill_teacher=str(tmp_path / "cls-teacher")),
        train_dataset=dataset(),
    )
    assert isinstance(trainer.teacher_model, BertForSequenceClassification)


def test_a_regression_student_is_refused(tmp_path):
    student = BertForSequenceClassification(tiny_bert_config(num_labels=1))
    with pytest.raises(ValueError, match="^distill_teacher: .*num_labels=1"):
        kd_trainer(tmp_path, student, copy.deepcopy(student))


# --- the recipes ----------------------------------------------------------------------------------------------

KD_FLAGS = ["--distill_temperature", "5.5", "--distill_hardness", "0.5"]


def save_like(model_dir, model_class, path, **config):
    """A teacher with the vocabulary of the tiny model at ``model_dir`` (another random init)."""
    torch.manual_seed(1)
    model_class(AutoConfig.from_pretrained(model_dir, **config)).save_pretrained(path)
    return str(path)


def assert_distilled(trainer):
    assert trainer.teacher_model is not None and trainer.args.distill_temperature == 5.5
    assert all("distill_loss" in h and "task_loss" in h for h in trainer.state.log_history if "loss" in h)


def test_glue_recipe_distils_from_a_teacher_with_the_same_labels(sparse_model, tmp_path):
    model_dir, zeros = sparse_model
    labels = {"id2label": {0: "no", 1: "yes"}, "label2id": {"no": 0, "yes": 1}}
    teacher = save_like(model_dir, BertForSequenceClassification, tmp_path / "teacher", **labels)
    write_pairs_csv(tmp_path / "train.csv", 24, 0)
    write_pairs_csv(tmp_path / "dev.csv", 8, 1)
    data = ["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv")]
    run = ["--do_train", "--max_steps", "2", "--per_device_train_batch_size", "8", "--max_seq_length", "32"]
    out = tmp_path / "out"
    trainer = run_glue.main(
        ["--model_name_or_path", model_dir, *data, *run, "--do_eval", "--logging_steps", "1"]
        + ["--distill_teacher_model_name_or_path", teacher, *KD_FLAGS, "--cram_sparsities", "0.5"]
        + common_args(out, tmp_path / "cache")
    )
    assert_distilled(trainer)
    assert trainer.cram.active and trainer.model.config.id2label == {0: "no", 1: "yes"}
    assert_same_zeros(BertForSequenceClassification.from_pretrained(out), zeros)

    # A teacher of three labels, or a masked LM without a classifier, is refused once the labels are read,
    # before the model is loaded.
    wrong = save_like(model_dir, BertForSequenceClassification, tmp_path / "wrong", num_labels=3)
    headless = save_like(model_dir, BertForMaskedLM, tmp_path / "headless", vocab_size=64)  # the student's
    student = unloadable_model(tmp_path / "unloadable")
    for teacher, problem in ((wrong, "num_labels 3"), (headless, "no trained weights .*classifier")):
        with pytest.raises(
            ValueError, match=rf"distill_teacher \(--distill_teacher_model_name_or_path\): .*{problem}"
        ):
            run_glue.main(
                [
                    "--model_name_or_path",
                    student,
                    *data,
                    *run,
                    "--distill_teacher_model_name_or_path",
                    teacher,
                ]
                + common_args(tmp_path / "out2", tmp_path / "cache")
            )
        assert not (tmp_path / "out2").exists()


def no_data(*args, **kwargs):
    raise AssertionError("the data were read before the teacher was checked")


def test_qa_recipe_distils_start_and_end_logits(sparse_model, tmp_path, monkeypatch):
    model_dir, zeros = sparse_model
    teacher = save_like(model_dir, BertForQuestionAnswering, tmp_path / "teacher")
    write_nested_squad(tmp_path / "train.json", squad_examples(8, 0))
    flags = ["--model_name_or_path", model_dir, "--train_file", str(tmp_path / "train.json"), "--do_train"]
    flags += [
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "8",
        "--max_seq_length",
        "32",
        "--doc_stride",
        "12",
    ]
    out = tmp_path / "out"
    trainer = run_qa.main(
        flags
        + ["--logging_steps", "1", "--distill_teacher_model_name_or_path", teacher, *KD_FLAGS]
        + common_args(out, tmp_path / "cache")
    )
    assert_distilled(trainer)
    assert_same_zeros(BertForQuestionAnswering.from_pretrained(out), zeros)

    wrong = save_like(model_dir, BertForQuestionAnswering, tmp_path / "wrong", vocab_size=100)
    monkeypatch.setattr(run_qa, "load_squad_file", no_data)
    with pytest.raises(ValueError, match="distill_teacher.*vocab_size 100"):
        run_qa.main(
            flags + ["--distill_teacher_model_name_or_path", wrong] + common_args(out, tmp_path / "cache")
        )


def test_mlm_recipe_distils_from_the_dense_upstream_model_and_refuses_bad_teachers_first(
    mlm_setup, monkeypatch
):
    recipe = test_recipe_mlm.load_recipe()
    args = test_recipe_mlm.base_args(mlm_setup) + [
        "--logging_steps",
        "1",
        "--cram_sparsities",
        "0.5",
        "--eval_sparsities",
        "none",
    ]
    teacher = str(mlm_setup / "model")  # the model the run starts from, dense and frozen
    recipe.main(args + ["--distill_teacher_model_name_or_path", teacher, *KD_FLAGS])
    state = (mlm_setup / "out" / "trainer_state.json").read_text()
    assert '"distill_loss"' in state and '"task_loss"' in state

    monkeypatch.setattr(recipe, "load_raw_datasets", no_data)
    missing = args + [
        "--output_dir",
        str(mlm_setup / "out2"),
        "--distill_teacher_model_name_or_path",
        "./no/such",
    ]
    with pytest.raises(
        ValueError, match=r"distill_teacher \(--distill_teacher_model_name_or_path\): no such"
    ):
        recipe.main(missing)
    wrong = save_like(teacher, BertForMaskedLM, mlm_setup / "wrong", vocab_size=100)
    with pytest.raises(ValueError, match="distill_teacher.*vocab_size 100"):
        recipe.main(
            args + ["--output_dir", str(mlm_setup / "out2"), "--distill_teacher_model_name_or_path", wrong]
        )
    assert not (mlm_setup / "out2").exists()


def test_the_kd_configs_change_nothing_but_the_distillation(repo_mirror):
    distill = {"distill_teacher", "distill_temperature", "distill_hardness", "output_dir", "logging_dir"}
    for kd_name, base_name, teacher in (
        (
            "bert_base_squad_sparse_kd.yaml",
            "bert_base_squad_sparse.yaml",
            "neuralmagic/oBERT-teacher-squadv1",
        ),
        ("bert_base_mlm_cram_kd.yaml", "bert_base_mlm_cram_plus_multi.yaml", "bert-base-uncased"),
    ):
        _, _, kd = parse_config(kd_name, repo_mirror)
        _, _, base = parse_config(base_name, repo_mirror)
        t = kd["training"]
        assert (t.distill_teacher, t.distill_temperature, t.distill_hardness) == (teacher, 5.5, 1.0), kd_name
        changed = {
            k for k, v in t.to_dict().items() if base["training"].to_dict().get(k) != v and k not in distill
        }
        assert not changed, f"{kd_name}: {changed}"
        for part in kd:
            if part != "training":
                assert vars(kd[part]) == vars(base[part]), f"{kd_name}: {part}"
