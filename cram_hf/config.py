"""``CrAMConfig``: ``TrainingArguments`` plus the CrAM fields, validated before anything runs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Optional

from transformers import TrainingArguments

from .checkpoint import check_model_source
from .choices import SCOPES, check_choice
from .compression import level_name, parse_level, parse_levels
from .distillation import check_distill_fields
from .targets import validate_patterns

DEFAULT_SPARSITIES = ["0.5", "0.6", "0.7", "0.8"]
# Optimizers that apply the update inside backward(): there is no gradient left for CrAM to combine.
_FUSED_UPDATE_OPTIMS = ("lomo", "adalomo")


def _finite_number(name: str, value, allowed: str, ok) -> float:
    """``value`` (a number, or a string holding one) as a float when it is finite and ``ok(value)``; else a
    ``ValueError`` saying which argument, what it got and what is allowed."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            number = None
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not math.isfinite(number)
        or not ok(number)
    ):
        raise ValueError(f"{name}: must be {allowed}, got {value!r}.")
    return float(number)


def _has_fp16_accelerator() -> bool:
    import torch

    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())


@dataclass
class CrAMConfig(TrainingArguments):
    r"""Training arguments for :class:`~cram_hf.CrAMTrainer`: every ``TrainingArguments`` field works as usual,
    and the ``cram_*`` fields set the CrAM update. Each is checked here, before anything runs.

    With ``cram_rho=0`` and no levels the trainer is the stock ``Trainer``.

    Parameters:
        > The update

        cram_rho (`float`, *optional*, defaults to `0.05`):
            Perturbation radius ρ >= 0: the second pass runs at ``θ̃ = θ + ρ·g`` (``g`` the clean gradient of the
            micro-batch's own mean loss). The paper's vision runs used 0.05–0.2; ρ = 1 with the unnormalised
            perturbation is far too large.
        cram_plus (`bool`, *optional*, defaults to `True`):
            CrAM+: add the clean gradient ``g`` to the direction (``d = m ⊙ g' + g``), the variant the authors
            recommend. `False`: plain CrAM (``d = m ⊙ g'``).
        cram_sparse_grad (`bool`, *optional*, defaults to `True`):
            Mask the target gradients taken at the compressed point (``m ⊙ g'``). `False`: use ``g'`` as is.
        cram_grad_norm (`bool`, *optional*, defaults to `False`):
            SAM-style perturbation ``ρ·g/‖g‖`` (then ρ is the length of the step) instead of ``ρ·g``.

        > Cost (:mod:`cram_hf.schedule`)

        cram_interval (`int`, *optional*, defaults to `1`):
            The CrAM update on every k-th optimizer step (steps 0, k, 2k, ...), the plain update on the others:
            about ``1 + 1/k`` plain steps' time per step instead of 2. 1: every step (the paper).
        cram_probability (`float`, *optional*, defaults to `1.0`):
            Each optimizer step takes the CrAM update with this probability, drawn from ``(seed, step)`` (the same
            on every rank and after a resume). 1: every step. Set this or ``cram_interval``, not both.

        > Compression

        cram_sparsities (`list[str]`, *optional*, defaults to `["0.5", "0.6", "0.7", "0.8"]`):
            The levels, one drawn per optimizer step as a function of ``(seed, step)`` (the same on every rank
            and after a resume): sparsities in ``[0, 1)`` (magnitude Top-K) and/or ``"N:M"`` patterns such as
            ``"2:4"`` or ``"4:8"`` (keep the N largest of every M consecutive inputs of a ``weight[out, in]``).
            Stored in canonical form (``"0.5"``, ``"2:4"``); empty (``none`` on the command line) means no
            compression (SAM-like when ρ > 0). Put the level you will deploy in the set.
        cram_scope (`str`, *optional*, defaults to `"global"`):
            Magnitude ranking over all targets together (``"global"``) or per matrix (``"layer"``).
        cram_targets (`list[str]` or `None`, *optional*, defaults to `None`):
            Regexes on parameter names (``re.search``) selecting the 2-D weights to compress. `None`: the weight
            of every ``nn.Linear`` inside the model's transformer layers (for BERT: query, key, value, attention
            output, intermediate, output); embeddings, pooler and heads are never compressed by default.

        > Distillation (:class:`~cram_hf.distillation.Distiller`)

        distill_teacher (`str` or `None`, *optional*, defaults to `None`):
            A dense teacher to distil from: a model folder or a Hub id (``--distill_teacher_model_name_or_path``
            also sets it), loaded with the student's own model class. The loss becomes
            ``distill_hardness · KD + (1 − distill_hardness) · task loss``, ``KD`` the temperature-softened KL
            from the teacher's to the student's logits at the labelled outputs (:mod:`cram_hf.distillation`).
            `None`: no distillation. ``CrAMTrainer(teacher_model=...)`` takes a loaded model instead.
        distill_temperature (`float`, *optional*, defaults to `2.0`):
            Softmax temperature T > 0 of both logit sets; KD is scaled by T². oBERT's sparse transfer (and the
            CrAM paper's BERT runs after it) used 5.5.
        distill_hardness (`float`, *optional*, defaults to `1.0`):
            Weight h in [0, 1] of KD in the loss: 1 = KD only (oBERT's choice), 0 = the task loss only.

        The three are checked together by :func:`~cram_hf.distillation.check_distill_fields`.
    """

    cram_rho: float = field(
        default=0.05,
        metadata={
            "help": "Perturbation radius rho >= 0: the second pass runs at θ + ρ·g (g: the clean gradient)."
        },
    )
    cram_sparsities: Optional[list[str]] = field(
        default_factory=lambda: list(DEFAULT_SPARSITIES),
        metadata={
            "help": "Compression levels, one drawn per optimizer step: sparsities in [0, 1) and/or N:M patterns "
            "such as 2:4 or 4:8 (quote them in YAML). 'none' (or [] in a config file): no compression.",
        },
    )
    cram_plus: bool = field(
        default=True, metadata={"help": "CrAM+: add the clean gradient g to the direction (d = m ⊙ g' + g)."}
    )
    cram_sparse_grad: bool = field(
        default=True, metadata={"help": "Mask the target gradients taken at the compressed point (m ⊙ g')."}
    )
    cram_scope: str = field(
        default="global",
        metadata={"help": "Magnitude ranking over all targets ('global') or per matrix ('layer')."},
    )
    cram_targets: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "Regexes on parameter names selecting the 2-D weights to compress. Default: the nn.Linear "
            "weights inside the transformer layers (never embeddings, pooler or heads).",
        },
    )
    cram_grad_norm: bool = field(
        default=False, metadata={"help": "SAM-style perturbation ρ·g/‖g‖ instead of ρ·g."}
    )
    cram_interval: int = field(
        default=1,
        metadata={
            "help": "CrAM update on every k-th optimizer step, the plain update between (1: every step)."
        },
    )
    cram_probability: float = field(
        default=1.0,
        metadata={
            "help": "Each optimizer step takes the CrAM update with this probability, drawn from (seed, step) "
            "(1: every step). Set this or --cram_interval."
        },
    )
    # Distillation: cram_hf.distillation.Distiller uses these; check_distill_fields checks them.
    distill_teacher: Optional[str] = field(
        default=None,
        metadata={
            "help": "Dense teacher to distil from (model folder or Hub id), loaded with the student's model class; "
            "the loss becomes h·KD + (1-h)·task loss. Default: no distillation.",
            "aliases": ["--distill_teacher_model_name_or_path"],
        },
    )
    distill_temperature: float = field(
        default=2.0,
        metadata={
            "help": "Softmax temperature T > 0 of teacher and student logits; KD is scaled by T² (oBERT: 5.5)."
        },
    )
    distill_hardness: float = field(
        default=1.0,
        metadata={"help": "Weight h in [0, 1] of the KD loss: 1 = KD only (oBERT), 0 = the task loss only."},
    )

    def __post_init__(self):
        self._validate_cram_fields()
        self._validate_distill_fields()
        # Before TrainingArguments' own set-up, which would try to import DeepSpeed or build FSDP plugins.
        self._validate_cram_compatibility()
        super().__post_init__()
        self._check_launch()

    def _check_launch(self) -> None:
        launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
        if launched > 1 and self.world_size == 1:
            raise ValueError(
                f"torchrun started {launched} processes (WORLD_SIZE={launched}) but transformers set up a "
                "single-process run in each, so they would train independently and write the same output_dir. "
                "On a machine without a GPU add --use_cpu true (gloo backend)."
            )

    def _validate_cram_fields(self) -> None:
        self.cram_rho = _finite_number("cram_rho", self.cram_rho, "a finite number >= 0", lambda v: v >= 0)
        # Canonical strings, so the field holds what its type says: "0.5", "2:4".
        self.cram_sparsities = [level_name(v) for v in parse_levels(self.cram_sparsities, "cram_sparsities")]
        check_choice(self.cram_scope, SCOPES, "cram_scope")
        if isinstance(self.cram_targets, str):
            self.cram_targets = [self.cram_targets]
        self.cram_targets = validate_patterns(self.cram_targets) or None
        for name in ("cram_plus", "cram_sparse_grad", "cram_grad_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}.")
        self._validate_schedule_fields()

    def _validate_schedule_fields(self) -> None:
        interval = self.cram_interval
        if isinstance(interval, str) and interval.strip().isdigit():
            interval = int(interval)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(
                f"cram_interval: must be an integer >= 1 (1 = CrAM on every optimizer step), got {interval!r}."
            )
        self.cram_interval = interval
        self.cram_probability = _finite_number(
            "cram_probability",
            self.cram_probability,
            "a number in (0, 1] (the share of optimizer steps that take the CrAM update; 1 = every step)",
            lambda v: 0 < v <= 1,
        )
        if self.cram_interval > 1 and self.cram_probability < 1:
            raise ValueError(
                f"cram_interval={self.cram_interval} and cram_probability={self.cram_probability}: choose one "
                "schedule (leave the other at 1)."
            )

    def _validate_distill_fields(self) -> None:
        self.distill_teacher, self.distill_temperature, self.distill_hardness = check_distill_fields(
            self.distill_teacher, self.distill_temperature, self.distill_hardness, check_model_source
        )

    def _validate_cram_compatibility(self) -> None:
        if not self.cram_enabled:
            return
        if self.deepspeed:
            raise ValueError(
                "deepspeed: CrAMTrainer does not support DeepSpeed (the CrAM step needs the full local gradient "
                "between its two passes). Use DDP (torchrun) instead."
            )
        if self.fsdp:
            raise ValueError(
                "fsdp: CrAMTrainer does not support FSDP (sharded parameters and gradients). Use DDP (torchrun)."
            )
        if self.fp16 and not _has_fp16_accelerator():
            raise ValueError(
                "fp16: there is no GPU here, and on CPU Accelerate runs fp16 without loss scaling, so small "
                "gradients underflow to zero and CrAM's perturbation with them. Use bf16=True (no scaling needed) "
                "or full precision."
            )
        optim = str(getattr(self.optim, "value", self.optim))
        if optim in _FUSED_UPDATE_OPTIMS:
            raise ValueError(
                f"optim: {optim!r} updates the weights inside backward(), which leaves no gradient for the CrAM "
                "update; choose another optimizer (e.g. adamw_torch)."
            )

    @property
    def cram_enabled(self) -> bool:
        return self.cram_rho > 0 or bool(self.cram_sparsities)

    @property
    def cram_levels(self) -> list:
        return [parse_level(v, "cram_sparsities") for v in self.cram_sparsities]
