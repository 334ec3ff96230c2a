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
order (:func:`check_teacher_fits`). :class:`~cram_hf.CrAMTrainer` computes the teacher's logits once per
micro-batch, before its two passes, and both reuse them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100  # the label of a position that carries none (transformers' convention)


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
