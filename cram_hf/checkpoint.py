"""Sparse checkpoints: ordinary Hugging Face folders with exact zeros, plus ``sparsity_config.json``.

Two storages, both described by ``sparsity_config.json``:

- **dense** (default): ``config.json`` + ``model.safetensors`` as ``save_pretrained`` writes them, with
  the pruned entries stored as exact zeros. Plain ``AutoModel*.from_pretrained`` reads it; so does
  :func:`load_sparse`, which also checks the mask against the config.
- **compact** (``compact=True``): ``config.json`` + ``sparse_weights.safetensors`` in which every target
  matrix is stored as its nonzero values plus a packed bit mask (1 bit per entry, ``numpy.packbits``) and
  every other tensor densely. There is deliberately *no* ``model.safetensors``: plain ``from_pretrained``
  fails loudly ("no file named model.safetensors") instead of silently initialising random target weights.
  Only :func:`load_sparse` reads it, and it rebuilds the bit-identical model. At sparsity ``s`` a target
  matrix costs ``(1 - s) + 1/32`` of its float32 size.

Everything is written into a temporary folder next to ``out_dir`` and moved into place at the end, so an
interrupted save never leaves a half-written checkpoint under ``out_dir``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
from typing import Optional

import numpy as np
import torch
from torch import nn

from .compression import level_name, level_sparsity, parse_level
from .files import replacing, write_json
from .pruning import SparsityReport, reachable, satisfies_nm, sparsity_report, sparsity_report_for
from .targets import resolve_parameter_names

logger = logging.getLogger(__name__)

SPARSITY_CONFIG = "sparsity_config.json"
COMPACT_WEIGHTS = "sparse_weights.safetensors"
COMPACT_FORMAT = "cram_hf.compact/1"
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    COMPACT_WEIGHTS,
)
_VALUES, _MASK = ".__values__", ".__mask__"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# ----------------------------------------------------------------------------------------------- checks


def check_writable_dir(out_dir, name: str = "output_dir") -> None:
    """Refuse an ``out_dir`` that could not be written, before any work: a file in its place, or a nearest
    existing ancestor that is a file or not writable. Creates nothing."""
    out_dir = os.fspath(out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise FileExistsError(f"{name}: {out_dir!r} exists and is not a directory.")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise NotADirectoryError(
            f"{name}: cannot create {out_dir!r}: {existing!r} is a file, not a directory."
        )
    # os.access sees read-only mounts even for root (which file permissions do not stop).
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"{name}: cannot write {out_dir!r}: {existing!r} is not writable.")


def check_output_dir(out_dir, overwrite: bool = False, flag: str = "overwrite=True") -> None:
    """Refuse an existing non-empty ``out_dir`` unless ``overwrite``, and one that could not be written."""
    out_dir = os.fspath(out_dir)
    check_writable_dir(out_dir)
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not overwrite:
        raise FileExistsError(
            f"output_dir: {out_dir!r} already exists and is not empty; pass {flag} to replace it."
        )


# What a saved tokenizer leaves in a model folder (fast, WordPiece, BPE or SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
)


def lacks_tokenizer(path) -> bool:
    """A local model folder with no tokenizer saved in it (a Hub id: not known here, ``False``). transformers 5
    loads one anyway: an empty tokenizer of special tokens only, which maps every word to [UNK]."""
    path = os.fspath(path)
    return os.path.isdir(path) and not any(os.path.isfile(os.path.join(path, f)) for f in TOKENIZER_FILES)


def check_model_source(path: str, name: str = "model") -> None:
    """A local model folder must hold a config and weights; a non-existing path that looks like a file
    path (not a Hub id) is an error. Hub ids pass through (``from_pretrained`` resolves them). ``name``
    is the argument the messages name."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(
                f"{name}: {path!r} has no config.json; is it a Hugging Face model folder?"
            )
        if not any(os.path.isfile(os.path.join(path, f)) for f in WEIGHT_FILES):
            raise FileNotFoundError(
                f"{name}: {path!r} has a config.json but no weights (looked for {', '.join(WEIGHT_FILES)})."
            )
        return
    if os.path.exists(path):
        raise FileNotFoundError(f"{name}: {path!r} is a file; give the model folder or a Hub id.")
    if not _HUB_ID.match(path) or ".." in path:
        raise FileNotFoundError(
            f"{name}: no such directory {path!r} (and it is not a Hub id like 'org/name')."
        )


def is_compact(path) -> bool:
    return os.path.isfile(os.path.join(os.fspath(path), COMPACT_WEIGHTS))


def sparsity_config_file(path) -> str:
    """``path/sparsity_config.json`` for a checkpoint folder; a ``.json`` path is taken as the file itself."""
    path = os.fspath(path)
    return path if path.endswith(".json") else os.path.join(path, SPARSITY_CONFIG)


def read_sparsity_config(path, required: bool = True) -> Optional[dict]:
    """The ``sparsity_config.json`` of a checkpoint folder (or the file itself) as a dict. Without one (an
    ordinary dense checkpoint, a Hub id, ``None``): an error, or ``None`` when not ``required``."""
    if path is None and not required:
        return None
    file = sparsity_config_file(path)
    if not os.path.isfile(file):
        if not required:
            return None
        raise FileNotFoundError(
            f"{os.fspath(path)!r} has no {SPARSITY_CONFIG}; it is not a cram_hf sparse checkpoint."
        )
    with open(file) as f:
        config = json.load(f)
    if not isinstance(config, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(config).__name__}.")
    return config


def check_levels_reachable(path, levels, targets=None, *, levels_name: str = "sparsities") -> None:
    """Before a sparse checkpoint loads, from its own record of its sparsity: an unstructured level below it
    cannot be reached, since pruning never revives a weight (``prune`` refuses it once the model is loaded,
    which is what happens to a folder without a record, or with other targets)."""
    record = read_sparsity_config(path, required=False) if path and os.path.isdir(path) else None
    achieved = (record or {}).get("achieved") or {}
    given = list(targets) if targets else None  # a spec holds its regexes as a tuple, the record as a list
    if not achieved.get("target_numel") or (record.get("target_patterns") or None) != given:
        return
    zeros, numel = achieved["target_zeros"], achieved["target_numel"]
    below = []
    for value in levels:
        level = parse_level(value, levels_name)
        if not reachable(level, zeros, numel):
            below.append(level_name(level))
    if below:
        raise ValueError(
            f"{levels_name}: {', '.join(below)} below the sparsity model {os.fspath(path)!r} already has "
            f"({zeros / numel:.4f}, its {SPARSITY_CONFIG}). Pruning never revives a weight; give levels >= "
            f"{zeros / numel:.4f}, N:M patterns, or 0 for the model as it is."
        )


# ------------------------------------------------------------------------------------------------ save


def sparsity_config(
    report: SparsityReport,
    *,
    base_model: Optional[str] = None,
    base_model_is_local: Optional[bool] = None,
    storage: str = "dense",
) -> dict:
    """The content of ``sparsity_config.json`` for a report measured on the model being saved.
    ``base_model_is_local``: ``None`` decides by whether ``base_model`` is a folder here."""
    from . import __version__

    level = report.level
    is_local = base_model_is_local
    if is_local is None:
        is_local = bool(base_model) and os.path.isdir(os.path.expanduser(base_model))
    params = dict(report.method_params or {})
    if params.get("calibration_file"):
        params["calibration_file"] = _public_name(params["calibration_file"])
    return {
        "format_version": 1,
        "library": "cram_hf",
        "library_version": __version__,
        "method": report.method,
        "level": level,
        "pattern": report.pattern,
        "sparsity": level_sparsity(parse_level(level)) if level is not None else None,
        "scope": report.scope,
        # Calibrated methods: damping, block size and how much calibration data was used.
        "method_params": params or None,
        # A flat list of parameter names: KeepSparsityCallback.from_checkpoint reads it as such.
        "targets": list(report.targets),
        "target_rule": "default" if report.target_patterns is None else "regex",
        "target_patterns": report.target_patterns,
        "achieved": {
            "target_sparsity": report.target_sparsity,
            "model_sparsity": report.model_sparsity,
            "target_zeros": report.target_zeros,
            "target_numel": report.target_numel,
            "model_zeros": report.model_zeros,
            "model_numel": report.model_numel,
            "num_pruned": report.num_pruned,
            "per_matrix": report.per_matrix,
        },
        # A local folder by its name only: the record is uploaded with the model, a local path says nothing there.
        "base_model": _public_name(base_model) if is_local else base_model,
        "base_model_is_local": is_local,
        "storage": storage,
        "weights_file": COMPACT_WEIGHTS if storage == "compact" else "model.safetensors",
        "loads_with_from_pretrained": storage == "dense",
    }


def _public_name(path) -> str:
    """The last component of a local path: what a record that leaves this machine may say of it."""
    return os.path.basename(os.path.normpath(os.path.expanduser(os.fspath(path))))


def _nonzero_bits(t: torch.Tensor) -> torch.Tensor:
    # Keep every entry whose bit pattern is not +0.0 (so a -0.0 survives the round trip exactly).
    return t.detach().contiguous().view(_INT_VIEW[t.element_size()]) != 0


def compact_state_dict(model: nn.Module, target_names) -> tuple[dict, dict]:
    """Tensors and metadata of the compact form: targets as values + packed mask, the rest dense.

    Tied tensors (same storage) are stored once; the others are listed as aliases.
    """
    targets = set(target_names)
    tensors, aliases, shapes, seen = {}, {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape), t.stride()) if t.numel() else None
        if key is not None and key in seen:
            aliases[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        t = t.detach().cpu().contiguous()
        if name in targets:
            keep = _nonzero_bits(t)
            tensors[name + _VALUES] = t[keep].contiguous()
            tensors[name + _MASK] = torch.from_numpy(np.packbits(keep.reshape(-1).numpy()))
            shapes[name] = list(t.shape)
        else:
            tensors[name] = t
    missing = targets - set(shapes)
    if missing:
        raise ValueError(f"targets: {sorted(missing)[0]!r} is not in the model's state dict.")
    metadata = {"format": COMPACT_FORMAT, "targets": json.dumps(shapes), "aliases": json.dumps(aliases)}
    return tensors, metadata


def _write_checkpoint(model, tmp, tokenizer, config, compact: bool) -> None:
    from safetensors.torch import save_file

    if compact:
        # save_pretrained records the class in `architectures`; do the same so load_sparse can rebuild it.
        model_config = copy.deepcopy(model.config)
        model_config.architectures = [type(model).__name__]
        model_config.save_pretrained(tmp)
        generation_config = getattr(model, "generation_config", None)
        if generation_config is not None and getattr(model, "can_generate", lambda: False)():
            generation_config.save_pretrained(tmp)
        tensors, metadata = compact_state_dict(model, config["targets"])
        save_file(tensors, os.path.join(tmp, COMPACT_WEIGHTS), metadata=metadata)
    else:
        model.save_pretrained(tmp, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, SPARSITY_CONFIG), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")


def save_sparse(
    model: nn.Module,
    out_dir,
    tokenizer=None,
    report: Optional[SparsityReport] = None,
    *,
    overwrite: bool = False,
    compact: bool = False,
    base_model: Optional[str] = None,
    base_model_is_local: Optional[bool] = None,
) -> dict:
    """Write a sparse checkpoint of ``model`` to ``out_dir`` and return its ``sparsity_config.json`` content.

    ``report`` (from :func:`cram_hf.prune`) says how the model was pruned; its figures are re-measured on
    the model as saved. Without it the default targets are measured and the method is ``"measured"``.
    ``compact=True`` writes the compact storage (see the module docstring) instead of ``model.safetensors``.
    ``base_model``: the Hub id or local folder it was pruned from (a local one is recorded by its name only).
    """
    out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    check_output_dir(out_dir, overwrite)
    if report is None:
        measured = sparsity_report(model)
    else:
        measured = sparsity_report_for(
            model,
            report.targets,
            method=report.method,
            level=report.level,
            scope=report.scope,
            target_patterns=report.target_patterns,
            num_pruned=report.num_pruned,
            method_params=dict(report.method_params),
        )
    config = sparsity_config(
        measured,
        base_model=base_model,
        base_model_is_local=base_model_is_local,
        storage="compact" if compact else "dense",
    )
    with replacing(out_dir, directory=True) as tmp:
        _write_checkpoint(model, tmp, tokenizer, config, compact)
    return config


def save_finetuned_sparsity_config(
    model: nn.Module, output_dir: str, names, model_path=None, pruned: Optional[dict] = None
) -> dict:
    """Write ``sparsity_config.json`` for a model fine-tuned with the mask of the matrices ``names`` kept, so
    the output folder is a sparse checkpoint like its input (``load_sparse`` verifies it). How it was pruned is
    carried over from the input's config when there is one, or is ``pruned`` (``method``, ``level``, ``scope``
    and optionally ``method_params`` and ``target_patterns``) when the fine-tuning pruned it (gradual pruning);
    the figures are measured on the fine-tuned weights."""
    if pruned is not None:
        how = dict(pruned)
    else:
        source = read_sparsity_config(model_path, required=False) or {}
        how = {k: source.get(k) for k in ("level", "scope")}
        how["method"] = source.get("method") or "measured"
        how["method_params"] = source.get("method_params") or {}
        if how["method"] == "measured":
            how["level"] = how["scope"] = None
    report = sparsity_report_for(model, list(names), **how)
    config = sparsity_config(report, base_model=str(model_path) if model_path is not None else None)
    config["fine_tuned_with_mask_kept"] = True
    write_json(os.path.join(output_dir, SPARSITY_CONFIG), config)
    return config


# ------------------------------------------------------------------------------------------------ load


def model_class_for(config, default=None):
    """The transformers class named in ``config.architectures`` (falls back to ``default`` / AutoModel)."""
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return default or transformers.AutoModel


def _from_config(model_class, config, **kwargs):
    # Concrete classes build from a config with _from_config (from_config exists on the Auto classes only).
    build = getattr(model_class, "from_config", None) or model_class._from_config
    return build(config, **kwargs)


def meta_model(config, model_class, **kwargs) -> Optional[nn.Module]:
    """``model_class`` built from ``config`` on the meta device: every parameter's name and shape, without
    memory or weights, for checks (targets, N:M shapes) before a model is loaded. ``None`` for a model that
    cannot be built there: an early check must not stop a run, the loaded model is checked anyway."""
    try:
        with torch.device("meta"):
            return _from_config(model_class, config, **kwargs)
    except Exception as err:  # noqa: BLE001 - e.g. custom code that reads tensor values in __init__
        logger.warning(
            "%s: cannot build on the meta device (%s); checked once loaded.", model_class.__name__, err
        )
        return None


def load_pretrained(path: str, model_class=None, **kwargs):
    """Load a model from a folder or Hub id: compact sparse checkpoints through :func:`load_sparse`,
    anything else with ``from_pretrained`` of ``model_class`` (default: the class in ``architectures``)."""
    if os.path.isdir(path) and is_compact(path):
        return load_sparse(path, model_class, **kwargs)
    if model_class is None:
        from transformers import AutoConfig

        model_class = model_class_for(AutoConfig.from_pretrained(path))
    return model_class.from_pretrained(path, **kwargs)


def _rebuild_compact(path: str, model_class, config_overrides: dict) -> tuple[nn.Module, dict]:
    from safetensors import safe_open
    from transformers import AutoConfig

    file = os.path.join(path, COMPACT_WEIGHTS)
    with safe_open(file, framework="pt") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != COMPACT_FORMAT:
            raise ValueError(f"{file}: not a {COMPACT_FORMAT} file (format={metadata.get('format')!r}).")
        stored = {k: f.get_tensor(k) for k in f.keys()}
    shapes = json.loads(metadata["targets"])
    aliases = json.loads(metadata["aliases"])
    state = {k: v for k, v in stored.items() if not k.endswith((_VALUES, _MASK))}
    for name, shape in shapes.items():
        values, packed = stored[name + _VALUES], stored[name + _MASK]
        numel = int(np.prod(shape)) if shape else 1
        keep = torch.from_numpy(np.unpackbits(packed.numpy(), count=numel).astype(bool))
        if int(keep.sum()) != values.numel():
            raise ValueError(
                f"{file}: {name}: the mask keeps {int(keep.sum())} entries but "
                f"{values.numel()} values are stored; the file is corrupt."
            )
        dense = torch.zeros(numel, dtype=values.dtype)
        dense[keep] = values
        state[name] = dense.view(shape)

    config = AutoConfig.from_pretrained(path, **config_overrides)
    saved_class = model_class_for(config)
    model_class = model_class or saved_class
    model = _from_config(model_class, config)
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())
    state = _match_prefix(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in aliases]
    if model_class is saved_class and (missing or unexpected):
        raise ValueError(
            f"{file}: does not match {model_class.__name__} (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})."
        )
    if missing or unexpected:
        # Another head on the same body (e.g. MLM checkpoint -> classifier), as from_pretrained allows.
        logger.warning(
            "%s as %s: %d weights newly initialised (%s), %d unused (%s).",
            path,
            model_class.__name__,
            len(missing),
            ", ".join(missing[:3]),
            len(unexpected),
            ", ".join(unexpected[:3]),
        )
    model.tie_weights()
    full = model.state_dict()
    for alias, source in aliases.items():
        if alias in full and source in full and not torch.equal(full[alias], full[source]):
            raise ValueError(f"{file}: {alias} should be tied to {source} but the model does not tie them.")
    model.eval()
    return model, {"missing_keys": set(missing), "unexpected_keys": set(unexpected)}


def _match_prefix(state: dict, model: nn.Module) -> dict:
    """Add or strip the base-model prefix (``bert.``) when the checkpoint and the model class differ in it."""
    prefix = getattr(model, "base_model_prefix", "") + "."
    keys = set(model.state_dict())
    if prefix == "." or set(state) & keys:
        return state
    if any(k.startswith(prefix) for k in state):  # head-model checkpoint into a bare base model
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return {prefix + k: v for k, v in state.items()}  # bare base model into a head model


def verify_sparsity(model: nn.Module, config: dict, where: str = "") -> None:
    """Raise ``ValueError`` unless the model's zeros match ``sparsity_config.json`` exactly (per matrix) and
    every target satisfies the N:M pattern the config names."""

    saved = config["targets"]
    # Names recorded with one class (bert.encoder...) map onto another (encoder...) by dotted suffix.
    names = resolve_parameter_names(model, saved)
    params = dict(model.named_parameters())
    measured = sparsity_report_for(model, names)
    expected = {n: config["achieved"]["per_matrix"][s] for n, s in zip(names, saved)}
    for n in names:
        if measured.per_matrix[n]["zeros"] != expected[n]["zeros"]:
            raise ValueError(
                f"{where}{n} has {measured.per_matrix[n]['zeros']} zeros but {SPARSITY_CONFIG} records "
                f"{expected[n]['zeros']}: the weights do not match the mask the checkpoint was saved with."
            )
    if config.get("pattern"):
        n_keep, m = parse_level(config["pattern"], "pattern")
        for n in names:
            if not satisfies_nm(params[n], n_keep, m):
                raise ValueError(
                    f"{where}{n} violates the {config['pattern']} pattern recorded in {SPARSITY_CONFIG}."
                )


def load_sparse(
    path, model_class=None, output_loading_info: bool = False, semi_structured: bool = False, **kwargs
):
    """Load a sparse checkpoint (dense or compact storage) and verify its mask against ``sparsity_config.json``.

    ``model_class`` defaults to the class in ``config.architectures``; another head class on the same body
    works as with ``from_pretrained`` (new head weights initialised, with a warning). ``kwargs`` go to
    ``from_pretrained`` (dense) or override config attributes (compact), e.g. ``num_labels=5``. Returns the
    model in eval mode, and with ``output_loading_info`` also ``{"missing_keys", "unexpected_keys"}``.

    ``semi_structured=True`` (a 2:4 checkpoint, for inference): the target weights become PyTorch's 2:4 sparse
    tensors where the kernels run — load it onto a GPU in half precision, e.g. ``device_map="cuda",
    dtype=torch.float16`` — and stay dense with their zeros elsewhere, with one warning
    (:func:`cram_hf.semi_structured.to_semi_structured`).
    """
    path = os.fspath(path)
    config = read_sparsity_config(path)
    if semi_structured and config.get("pattern") != "2:4":
        raise ValueError(
            f"semi_structured: {path!r} is not a 2:4 checkpoint (its {SPARSITY_CONFIG} says pattern "
            f"{config.get('pattern')!r}); 2:4 kernels need the 2:4 pattern: prune it with --sparsity 2:4."
        )
    if is_compact(path):
        model, info = _rebuild_compact(path, model_class, kwargs)
    else:
        if model_class is None:
            from transformers import AutoConfig

            model_class = model_class_for(AutoConfig.from_pretrained(path))
        model, info = model_class.from_pretrained(path, output_loading_info=True, **kwargs)
    verify_sparsity(model, config, where=f"{path}: ")
    if semi_structured:
        from .semi_structured import to_semi_structured

        to_semi_structured(model, config.get("target_patterns"))
    return (model, info) if output_loading_info else model
