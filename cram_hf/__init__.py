"""CrAM (compression-aware minimizer) for Hugging Face Transformers."""

__version__ = "0.1.0"

from .compression import compression_masks, kth_smallest_abs, magnitude_masks, nm_mask, parse_level
from .config import CrAMConfig
from .cram_step import CrAM
from .targets import default_target_names, target_names
from .trainer import CrAMTrainer

__all__ = [
    "CrAM",
    "CrAMConfig",
    "CrAMTrainer",
    "compression_masks",
    "default_target_names",
    "kth_smallest_abs",
    "magnitude_masks",
    "nm_mask",
    "parse_level",
    "target_names",
]
