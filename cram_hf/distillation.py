r"""Logit knowledge distillation from a dense teacher, as in oBERT's sparse transfer and CrAM's BERT runs.

**The loss.** With ``z_s``, ``z_t`` the student's and the teacher's logits on one *row* (a distribution over
``C`` outcomes), temperature ``T > 0`` and hardness ``h ∈ [0, 1]``:

.. code-block:: text

    KD = T² · mean over rows of KL( softmax(z_t / T) ‖ softmax(z_s / T) )
       = T² · mean over rows of Σ_c p_t,c · (log p_t,c − log p_s,c)
    L  = h · KD + (1 − h) · L_task

The factor ``T²`` keeps the size of the KD gradient independent of ``T``: the gradient of the softened KL
with respect to ``z_s`` is ``(p_s − p_t) / T``, and ``p_s − p_t`` itself shrinks as ``1/T`` for large ``T``
(Hinton et al., 2015). ``h = 1`` (distillation only) is oBERT's choice for sparse transfer; ``h = 0`` is the
task loss alone. Everything is computed in float32, whatever the dtype of the logits.

**The rows.** Only outputs that carry a label are distilled, one row each:

* sequence classification (logits ``[batch, labels]``): every example, over the labels;
* token classification and masked LM (logits ``[batch, length, C]``): every position whose label is not
  ``-100``, over the labels / the vocabulary. The rows are selected *before* any softmax, so a masked LM
  never normalises its vocabulary at the ~85 % of positions that carry no label
  (:class:`~cram_hf.CrAMTrainerForMaskedLM` does not even project them onto the vocabulary);
* extractive QA (``start_logits`` and ``end_logits``, ``[batch, length]``): per example, one row over the
  positions for the answer's start and one for its end; positions outside the attention mask take no part in
  either softmax. KD is the mean of the start and end terms.

A single output (``num_labels=1``, regression) is no distribution, and multi-label heads (one sigmoid per
label) are not softmax distributions either: neither is distilled here.

**Teacher and student must agree** on what each logit means: the same vocabulary, the same labels in the same
order (:func:`check_teacher_fits`).

**The component.** :class:`Distiller` is all a trainer needs: it owns the frozen teacher, runs it (no grad,
on the student's device and dtype), computes ``L`` and keeps the logged ``distill_loss`` / ``task_loss``.
:class:`~cram_hf.CrAMTrainer` builds one when a teacher is configured, shares the teacher's logits between
CrAM's two passes (:meth:`Distiller.sharing_teacher`) and calls :meth:`Distiller.loss` from ``compute_loss``.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Mapping
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a position that carries none (transformers' convention)
TEACHER_ARG = "distill_teacher (--distill_teacher_model_name_or_path)"  # the field and its recipe flag


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) ‖ softmax(student/T))``, averaged over rows, in float32.

    The last dimension holds one row's ``C`` logits; all others are flattened into rows. No rows: 0 (a
    micro-batch in which no position carries a label adds nothing).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"distillation_loss: student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} must have the same shape (the same rows and classes)."
        )
    classes = student_logits.shape[-1]
    log_p_student = F.log_softmax(student_logits.float().reshape(-1, classes) / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float().reshape(-1, classes) / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="sum")
    return temperature**2 * kl / max(log_p_student.shape[0], 1)


def combined_loss(distill: torch.Tensor, task: torch.Tensor, hardness: float) -> torch.Tensor:
    """``h · KD + (1 − h) · L_task``."""
    return hardness * distill + (1.0 - hardness) * task


def distillation_logits(outputs, inputs: Mapping) -> tuple[torch.Tensor, ...]:
    """The rows of a model's ``outputs`` that are distilled (see the module docstring), one ``[rows, C]``
    tensor per KD term: ``(logits,)``, or ``(start, end)`` for extractive QA. ``inputs`` supplies the
    ``labels`` and ``attention_mask`` that select them."""
    if not isinstance(outputs, Mapping):
        raise TypeError(
            f"distillation needs the model's outputs as a ModelOutput (return_dict=True), got "
            f"{type(outputs).__name__}."
        )
    if "start_logits" in outputs and "end_logits" in outputs:
        mask = inputs.get("attention_mask")
        return tuple(_over_positions(outputs[k], mask) for k in ("start_logits", "end_logits"))
    logits = outputs["logits"]
    labels = inputs.get("labels")
    if logits.dim() > 2 and labels is not None and labels.shape == logits.shape[:-1]:
        return (logits[labels != IGNORE_INDEX],)
    return (logits.reshape(-1, logits.shape[-1]),)


def _over_positions(logits: torch.Tensor, attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """QA logits ``[batch, length]`` as rows over the positions; padding gets the lowest float32, whose
    probability is exactly 0 for teacher and student alike, so it adds exactly 0 to the KL (and, being a
    constant, no gradient)."""
    logits = logits.float()
    if attention_mask is None:
        return logits
    return logits.masked_fill(attention_mask == 0, torch.finfo(torch.float32).min)


# --- the teacher ---------------------------------------------------------------------------------------------


def _named_labels(config) -> Optional[list[str]]:
    """The label names in id order, or ``None`` when they are transformers' placeholders (``LABEL_0``, ...),
    which say nothing about what each output means."""
    id2label = getattr(config, "id2label", None) or {}
    names = [str(id2label[k]) for k in sorted(id2label, key=int)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)):
        return None
    return names


def check_teacher_fits(student_config, teacher_config, name: str = "distill_teacher") -> None:
    """Refuse a teacher whose logits do not line up with the student's, class for class: another vocabulary
    size (where both configs have one), another number of labels, or other label names or order (where both
    name their labels), and a student with a single output. ``ValueError`` naming ``name``."""
    if student_config is None or teacher_config is None:
        return
    if getattr(student_config, "num_labels", None) == 1:
        raise ValueError(
            f"{name}: the student has a single output (num_labels=1, regression), which is no distribution "
            "to distil; distillation needs a classification, token-level, masked-LM or QA head."
        )
    problems = []
    for field in ("vocab_size", "num_labels"):
        student, teacher = getattr(student_config, field, None), getattr(teacher_config, field, None)
        if student is not None and teacher is not None and student != teacher:
            problems.append(f"{field} {teacher} (the student's: {student})")
    student, teacher = _named_labels(student_config), _named_labels(teacher_config)
    if not problems and student is not None and teacher is not None and student != teacher:
        problems.append(f"labels {teacher} in this order (the student's: {student})")
    if problems:
        raise ValueError(
            f"{name}: the teacher's outputs do not line up with the student's: {'; '.join(problems)}. "
            "Distillation compares the two logit by logit, so the teacher needs the student's vocabulary and "
            "its labels in the same order (fine-tune the teacher with the student's label list)."
        )
    if (student is None) != (teacher is None):
        logger.warning(
            "%s: only one of teacher and student names its labels (the other has LABEL_0, ...); their order "
            "cannot be checked, make sure label i means the same for both.",
            name,
        )


def freeze(teacher: nn.Module) -> nn.Module:
    """The teacher as distillation uses it: no gradient, eval mode (no dropout), in place."""
    teacher.requires_grad_(False)
    return teacher.eval()


def model_class_of(student: nn.Module) -> type:
    """The class a teacher for ``student`` is loaded with: the student's own, or, for a PEFT model, that of the
    model it wraps (so the teacher has the same head)."""
    base = student.get_base_model() if callable(getattr(student, "get_base_model", None)) else student
    return type(base)


def load_teacher(
    model_class, name_or_path: str, name: str = "distill_teacher", **from_pretrained_kwargs
) -> nn.Module:
    """The teacher at ``name_or_path`` (a model folder or Hub id) loaded with ``model_class`` (a model class or
    an ``AutoModelFor...`` class), frozen (:func:`freeze`).

    A checkpoint that lacks weights of that class is refused (``ValueError`` naming ``name`` and the weights):
    ``from_pretrained`` would initialise them at random — a masked-LM checkpoint loaded as a classifier gets a
    random ``classifier`` and pooler — and the student would be distilled from random logits."""
    teacher, info = model_class.from_pretrained(
        name_or_path, output_loading_info=True, **from_pretrained_kwargs
    )
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:6]) + (f" and {len(missing) - 6} more" if len(missing) > 6 else "")
        raise ValueError(
            f"{name}: {name_or_path!r} has no trained weights for {len(missing)} parameter(s) of "
            f"{type(teacher).__name__} ({shown}); they would start random and the student would learn from random "
            "logits. Give a teacher trained with this head, e.g. the dense model fine-tuned on this task."
        )
    return freeze(teacher)


# --- the component -------------------------------------------------------------------------------------------


class Distiller:
    r"""Knowledge distillation from a frozen dense teacher, for any training loop.

    For one micro-batch, with the rows of the module docstring, ``T = temperature`` and ``h = hardness``::

        KD = T² · mean over rows of KL( softmax(z_t / T) ‖ softmax(z_s / T) )   (QA: mean of start and end)
        L  = h · KD + (1 − h) · L_task

    Use::

        distiller = Distiller(teacher, temperature=5.5, hardness=1.0)
        teacher_rows = distiller.teacher_rows(inputs, student)   # no grad, on the student's device and dtype
        task_loss, outputs = ...                                  # the student's own loss and outputs
        loss = distiller.loss(task_loss, distillation_logits(outputs, inputs), teacher_rows)

    :class:`~cram_hf.CrAMTrainer` builds one with :meth:`for_student`, runs each training micro-batch inside
    :meth:`sharing_teacher` (the teacher runs once, before CrAM's two passes, which reuse its logits) and logs
    :meth:`pop_logs`. Nothing is kept between micro-batches but the logged sums, which stay on the device.

    Args:
        teacher: the teacher model; frozen here (no gradient, eval mode), never trained, never saved.
        temperature: softmax temperature ``T > 0``.
        hardness: weight ``h ∈ [0, 1]`` of KD in the loss.
        label_names: input keys the teacher's forward does not get (its own loss is never needed).
        autocast: returns the context the teacher's forward runs in (the trainer's mixed precision).
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        temperature: float = 2.0,
        hardness: float = 1.0,
        label_names=("labels",),
        autocast: Callable = contextlib.nullcontext,
    ):
        self.teacher = freeze(teacher)
        self.temperature, self.hardness = temperature, hardness
        self.label_names = tuple(label_names)
        self.autocast = autocast
        self.shared = None  # the teacher's rows while sharing_teacher() runs, else None
        self._unrecorded = False  # inside sharing_teacher(), until the first loss is recorded
        self._sums = None  # [KD, task loss, weight], each weighted as its optimizer step weights it

    @classmethod
    def for_student(
        cls, student: nn.Module, args, teacher: Optional[nn.Module] = None, **kwargs
    ) -> "Distiller":
        """A distiller with ``args.distill_temperature`` and ``args.distill_hardness`` for ``student``:
        ``teacher`` (a loaded model), else ``args.distill_teacher`` loaded with the student's model class
        (:func:`load_teacher`); either is checked against the student (:func:`check_teacher_fits`)."""
        if teacher is None:
            teacher = load_teacher(model_class_of(student), args.distill_teacher)
        elif not isinstance(teacher, nn.Module):
            raise TypeError(
                f"teacher_model: must be a loaded model (an nn.Module), got {type(teacher).__name__}; "
                "pass a model folder or Hub id as CrAMConfig(distill_teacher=...) instead."
            )
        check_teacher_fits(getattr(student, "config", None), getattr(teacher, "config", None))
        return cls(teacher, temperature=args.distill_temperature, hardness=args.distill_hardness, **kwargs)

    def teacher_rows(self, inputs: Mapping, student: nn.Module) -> tuple:
        """The teacher's rows for ``inputs``: those :meth:`sharing_teacher` computed for this micro-batch, or
        (evaluation, prediction) computed now, without gradient, the teacher on ``student``'s device and dtype."""
        if self.shared is not None:
            return self.shared
        self._follow(student)
        with torch.no_grad(), self.autocast():
            return self.run_teacher(inputs)

    def run_teacher(self, inputs: Mapping) -> tuple:
        """The teacher's forward on ``inputs``, reduced to the rows the loss distils (:func:`distillation_logits`).
        A subclass may compute only those rows (:class:`~cram_hf.CrAMTrainerForMaskedLM` does)."""
        outputs = self.teacher(**{k: v for k, v in inputs.items() if k not in self.label_names})
        return distillation_logits(outputs, inputs)

    def _follow(self, student: nn.Module) -> None:
        # At first use, not at construction: the Trainer places the student (device, dtype) only when it
        # sets it up, and model_init gives it a fresh one inside train().
        params = next((p for p in student.parameters() if p.is_floating_point()), None)
        own = next(self.teacher.parameters(), None)
        if (
            params is not None
            and own is not None
            and (own.device, own.dtype) != (params.device, params.dtype)
        ):
            self.teacher.to(device=params.device, dtype=params.dtype)
        if self.teacher.training:
            self.teacher.eval()

    @contextlib.contextmanager
    def sharing_teacher(self, inputs: Mapping, student: nn.Module):
        """One training micro-batch whose passes all see ``inputs`` (CrAM's clean and compressed ones): the
        teacher runs once, on entry; every :meth:`loss` inside reuses its rows, and only the first — the clean
        pass, whose loss the Trainer logs — is recorded for :meth:`pop_logs`."""
        self.shared = self.teacher_rows(inputs, student)
        self._unrecorded = True
        try:
            yield
        finally:
            self.shared = None
            self._unrecorded = False  # an evaluation's loss is never recorded

    def loss(
        self,
        task_loss: torch.Tensor,
        student_rows: tuple,
        teacher_rows: tuple,
        *,
        accumulation_steps: int = 1,
        task_scaled: bool = False,
    ) -> torch.Tensor:
        """``h · KD + (1 − h) · task_loss`` for one micro-batch, ``KD`` the mean of its terms (QA: start, end).

        The training step divides this loss by the ``accumulation_steps`` K, unless the task loss is already
        the micro-batch's share of the accumulated batch (``task_scaled``: a model that weights it by
        ``num_items_in_batch``). KD is a per-micro-batch mean, so it then gets its ``1/K`` here: each
        micro-batch's KD weighs ``1/K`` in the step either way."""
        distill = torch.stack(
            [
                distillation_loss(s, t, self.temperature)
                for s, t in zip(student_rows, teacher_rows, strict=True)
            ]
        ).mean()
        if self._unrecorded:
            self._unrecorded = False
            self._record(distill, task_loss, accumulation_steps, task_scaled)
        k = accumulation_steps
        return combined_loss(distill / k if task_scaled else distill, task_loss, self.hardness)

    def _record(self, distill, task_loss, k: int, task_scaled: bool) -> None:
        # Each term weighted as the optimizer step weights it (1/K, or the task loss's own share when it is
        # already scaled), the weight summed beside them: pop_logs() divides, for means over micro-batches.
        distill = distill.detach().float()
        task = task_loss.detach().float().mean()
        values = torch.stack([distill / k, task if task_scaled else task / k, distill.new_full((), 1.0 / k)])
        self._sums = values if self._sums is None else self._sums + values

    def pop_logs(self, sum_over_ranks: Callable = lambda sums: sums) -> dict:
        """``distill_loss`` and ``task_loss``, means over the micro-batches recorded since the last call (``{}``
        if none), and a fresh start. ``sum_over_ranks`` sums a tensor across DDP ranks; the one read to the host
        is here, when the Trainer logs."""
        if self._sums is None:
            return {}
        distill_sum, task_sum, weight = sum_over_ranks(self._sums).tolist()
        self._sums = None
        return {"distill_loss": round(distill_sum / weight, 4), "task_loss": round(task_sum / weight, 4)}


# --- the arguments -------------------------------------------------------------------------------------------


def check_distill_fields(
    teacher, temperature, hardness, check_model_source: Callable
) -> tuple[Optional[str], float, float]:
    """``CrAMConfig``'s ``distill_teacher``, ``distill_temperature`` and ``distill_hardness``, checked and in
    canonical form: the numbers as floats, a local teacher folder with ``~`` expanded. ``ValueError`` naming the
    field. ``check_model_source(path, name)`` checks a local model folder (config and weights)."""
    from .config import _finite_number  # config imports this module, so its number check is imported here

    temperature = _finite_number(
        "distill_temperature",
        temperature,
        "a finite number > 0 (the softmax temperature of the distillation loss; oBERT used 5.5)",
        lambda v: v > 0,
    )
    hardness = _finite_number(
        "distill_hardness",
        hardness,
        "a number in [0, 1] (the weight of the distillation loss: 1 = distillation only, 0 = task loss only)",
        lambda v: 0 <= v <= 1,
    )
    return _checked_teacher(teacher, check_model_source), temperature, hardness


def _checked_teacher(teacher, check_model_source: Callable) -> Optional[str]:
    """``distill_teacher`` as ``from_pretrained`` will read it: ``None``, a Hub id, or an existing model folder."""
    if teacher is None:
        return None
    if not isinstance(teacher, str) or not teacher.strip():
        raise ValueError(
            f"{TEACHER_ARG}: must be a model folder or a Hub id such as 'org/name', got {teacher!r}."
        )
    path = os.path.expanduser(teacher)
    parent = os.path.dirname(path.rstrip(os.sep))
    # A Hub id 'org/name' looks like a relative path; it is taken as a path only when 'org' is a folder here
    # (from_pretrained reads an existing path as local, too).
    if not (
        teacher.startswith((".", os.sep, "~")) or (parent and os.path.isdir(parent)) or os.path.exists(path)
    ):
        return teacher
    if not os.path.exists(path):
        raise ValueError(
            f"{TEACHER_ARG}: no such model folder {teacher!r}; give the folder of a saved model (config.json and "
            "weights, as save_pretrained writes it) or a Hub id such as 'org/name'."
        )
    try:
        check_model_source(path, TEACHER_ARG)
    except FileNotFoundError as err:
        raise ValueError(str(err)) from None
    return path
