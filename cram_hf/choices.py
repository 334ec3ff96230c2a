"""What users choose by name — pruning methods (``METHODS``, ``CALIBRATED``: read off the registry of
pruners), ranking scopes, data-file extensions — and the seed of the masks every masked-LM evaluation scores
on, each declared once. Plain Python without torch, so that the CLI can offer the choices without paying for
the import."""

from __future__ import annotations

from collections.abc import Collection

SCOPES = ("global", "layer")  # magnitude ranking over all targets together, or per matrix
TEXT_EXTENSIONS = (".txt", ".text", ".raw")  # plain text, one sample (MLM: a line of the corpus) per line
TABLE_EXTENSIONS = (".csv", ".json", ".jsonl")  # a text column (and a label column) per row
# The MLM masks of an evaluation set: one seed for the recipes' one-shot table and for `cram-hf sweep`, so
# their figures compare.
EVAL_MASK_SEED = 0


def __getattr__(name: str):
    # METHODS (the pruners of cram_hf.prune) and CALIBRATED (those that need calibration data) are read off
    # the registry cram_hf.pruning_spec.PRUNERS, their one source, when asked for.
    if name in ("METHODS", "CALIBRATED"):
        from .pruning_spec import PRUNERS

        return tuple(m for m, pruner in PRUNERS.items() if name == "METHODS" or pruner.calibrated)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_choice(value, choices: Collection, name: str) -> None:
    """``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name}: must be one of {tuple(choices)}, got {value!r}.")


def extension(path: str) -> str:
    """A data file's extension, lower case with its dot, a ``.gz`` looked through (``"Train.CSV.gz"`` ->
    ``".csv"``)."""
    import os

    path = os.fspath(path)
    return os.path.splitext(path[:-3] if path.endswith(".gz") else path)[1].lower()


def builder_for(path: str) -> str:
    """The ``datasets`` builder that reads a data file of a known extension: "text", "csv" or "json"."""
    ext = extension(path)
    return "text" if ext in TEXT_EXTENSIONS else ("csv" if ext == ".csv" else "json")
