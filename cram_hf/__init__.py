"""CrAM (compression-aware minimizer) for Hugging Face Transformers.

The public names below are imported on first use, so ``cram-hf --help`` and ``import cram_hf`` do not pay
for importing torch and transformers up front.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "CrAM": "cram_step",
    "CrAMConfig": "config",
    "CrAMTrainer": "trainer",
    "CrAMTrainerForMaskedLM": "mlm",
    "Distiller": "distillation",
    "ReproducibleMLMCollator": "mlm_data",
    "KeepSparsityCallback": "sparse_finetune",
    "keep_sparsity_callback": "sparse_finetune",
    "GradualPruningCallback": "gradual",
    "SparsityReport": "pruning",
    "prune": "pruning",
    "PruningSpec": "pruning_spec",
    "calibration_batches": "calibration",
    "sparsity_report": "pruning",
    "save_sparse": "checkpoint",
    "load_sparse": "checkpoint",
    "to_semi_structured": "semi_structured",
    "push_to_hub": "hub",
    "model_card": "hub",
    "HubError": "hub",
    "run_sweep": "sweep",
    "compression_masks": "compression",
    "compression_mask_stream": "compression",
    "kth_smallest_abs": "compression",
    "magnitude_masks": "compression",
    "nm_mask": "compression",
    "parse_level": "compression",
    "default_target_names": "targets",
    "target_names": "targets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
