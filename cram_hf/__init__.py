"""CrAM (compression-aware minimizer) for Hugging Face Transformers."""

__version__ = "0.1.0"

from .checkpoint import load_sparse, save_sparse
from .compression import compression_masks, kth_smallest_abs, magnitude_masks, nm_mask, parse_level
from .config import CrAMConfig
from .cram_step import CrAM
from .pruning import SparsityReport, prune, sparsity_report
from .sparse_finetune import KeepSparsityCallback, keep_sparsity_callback
from .targets import default_target_names, target_names
from .trainer import CrAMTrainer

__all__ = [
    "CrAM",
    "CrAMConfig",
    "CrAMTrainer",
    "KeepSparsityCallback",
    "SparsityReport",
    "compression_masks",
    "default_target_names",
    "keep_sparsity_callback",
    "kth_smallest_abs",
    "load_sparse",
    "magnitude_masks",
    "nm_mask",
    "parse_level",
    "prune",
    "save_sparse",
    "sparsity_report",
    "target_names",
]
