"""Publishing sparse checkpoints: a model card generated from ``sparsity_config.json`` and a Hub push.

The push never writes into the user's folder: the card goes into a temporary staging folder that links to
the checkpoint's files, and that staging folder is what ``upload_folder`` sends.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from typing import Optional

from .checkpoint import SPARSITY_CONFIG, lacks_tokenizer, read_sparsity_config

SWEEP_JSON = "sweep.json"
CARD_NAME = "README.md"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")

_PIPELINE_TAGS = (
    ("ForMaskedLM", "fill-mask"),
    ("ForSequenceClassification", "text-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForTokenClassification", "token-classification"),
    ("Model", "feature-extraction"),
)
_AUTO_CLASSES = {
    "fill-mask": "AutoModelForMaskedLM",
    "text-classification": "AutoModelForSequenceClassification",
    "question-answering": "AutoModelForQuestionAnswering",
    "token-classification": "AutoModelForTokenClassification",
    "feature-extraction": "AutoModel",
}


class HubError(RuntimeError):
    """A push that cannot happen (no token, offline, unreachable endpoint, refused by the server)."""


# ------------------------------------------------------------------------------------------ model card


def _architecture(folder: str) -> Optional[str]:
    try:
        with open(os.path.join(folder, "config.json")) as f:
            return (json.load(f).get("architectures") or [None])[0]
    except (OSError, ValueError):
        return None


def _pipeline_tag(architecture: Optional[str]) -> Optional[str]:
    for suffix, tag in _PIPELINE_TAGS:
        if architecture and architecture.endswith(suffix):
            return tag
    return None


def card_tags(config: dict) -> list[str]:
    tags = ["cram", "sparse", "pruning"]
    tags.append("semi-structured-sparsity" if config.get("pattern") else "unstructured-sparsity")
    if config.get("pattern"):
        tags.append(config["pattern"])
    return tags


# Advice, not figures: the measurements live in cram_hf's benchmarks (benchmarks/README.md), which change.
PRUNER_GUIDANCE = """## Choosing the pruner, and whether CrAM pays

For a CrAM-trained model and a plainly trained one alike, a calibrated pruner (SparseGPT, per matrix) keeps the
most accuracy in one shot. CrAM's extra training pays most at the highest sparsities (90 %); up to about 80 %
and at 2:4 a calibrated pruner on a plainly trained model comes close. The measurements behind this, with their
settings and seeds, are in `cram_hf`'s benchmarks (`benchmarks/README.md`)."""


def _how_pruned(config: dict) -> str:
    method, level = config.get("method"), config.get("level")
    if method == "n:m":
        n, m = level.split(":")
        return (
            f"**{level} semi-structured sparsity**: in every group of {m} consecutive input weights of each "
            f"target matrix (`weight[out, in]`), the {n} of largest magnitude are kept and the rest set to zero."
        )
    if method == "magnitude":
        where = (
            "ranked over all target matrices together (global)"
            if config.get("scope") == "global"
            else "ranked within each matrix (per layer)"
        )
        return (
            f"**one-shot magnitude pruning to {100 * float(level):g} %**: the smallest-magnitude target "
            f"weights, {where}, set to exactly zero (no re-training)."
        )
    if method in ("wanda", "sparsegpt"):
        name, what = (
            (
                "SparseGPT",
                "each matrix reconstructed from the Hessian of its inputs (optimal brain surgeon), layer by "
                "layer, the kept weights updated",
            )
            if method == "sparsegpt"
            else (
                "Wanda",
                "weights scored by |w| times the norm of their input feature, pruned per output row",
            )
        )
        params = config.get("method_params") or {}
        data = params.get("calibration_file")
        samples = params.get("num_calibration_samples")
        calibration = f" on {samples} calibration samples" if samples else ""
        calibration += f" from `{os.path.basename(data)}`" if data else ""
        target = f"the {level} pattern" if config.get("pattern") else f"{100 * float(level):g} %"
        return f"**one-shot {name} pruning to {target}**: {what}{calibration}; no re-training."
    if method == "gradual magnitude":
        params = config.get("method_params") or {}
        where = (
            "over all target matrices together" if config.get("scope") == "global" else "within each matrix"
        )
        return (
            f"**gradual magnitude pruning to {100 * float(level):g} % while training**: cubic schedule from "
            f"optimizer step {params.get('start_step', '?')} to {params.get('end_step', '?')}, the "
            f"smallest-magnitude target weights ({where}) set to zero every {params.get('update_every', '?')} "
            "steps, the mask then held to the end of training."
        )
    return "sparsity measured on the saved weights (how they were pruned is not recorded)."


def _fine_tuned(config: dict) -> str:
    if not config.get("fine_tuned_with_mask_kept"):
        return ""
    return "\n- Then fine-tuned with the mask kept: the pruned weights stayed exactly zero."


def _sweep_table(sweep: dict) -> str:
    rows = sweep.get("results") or []
    if not rows:
        return ""
    metrics = [m for m in ("accuracy", "f1", "loss", "perplexity") if any(m in r for r in rows)]
    head = "| model | level | target sparsity | " + " | ".join(metrics) + " |"
    sep = "|---" * (3 + len(metrics)) + "|"
    lines = [head, sep]
    for r in rows:
        values = " | ".join(f"{r[m]:.4g}" if isinstance(r.get(m), (int, float)) else "" for m in metrics)
        lines.append(
            f"| {r.get('model', '')} | {r.get('level', '')} | "
            f"{100 * r.get('achieved_sparsity', r.get('sparsity', 0)):.1f} % | {values} |"
        )
    what = f"task `{sweep.get('task', '?')}` on `{os.path.basename(str(sweep.get('validation_file', '?')))}`"
    return (
        f"## Sparsity sweep\n\nOne-shot pruning at several levels, no re-training ({what}):\n\n"
        + "\n".join(lines)
    )


def model_card(folder, repo_id: Optional[str] = None, sweep_file: Optional[str] = None) -> str:
    """A README.md model card for a sparse checkpoint folder, from its ``sparsity_config.json`` and the sweep
    table of ``sweep_file`` (default: ``folder/sweep.json`` if present)."""
    folder = os.fspath(folder)
    config = read_sparsity_config(folder)
    arch = _architecture(folder)
    pipeline = _pipeline_tag(arch)
    auto = _AUTO_CLASSES.get(pipeline, "AutoModel")
    base = config.get("base_model")
    base_on_hub = bool(base) and not config.get("base_model_is_local")
    name = repo_id or os.path.basename(os.path.abspath(folder))
    ach = config.get("achieved", {})

    front = ["---", "library_name: transformers"]
    if base_on_hub:
        front.append(f"base_model: {base}")
    if pipeline:
        front.append(f"pipeline_tag: {pipeline}")
    front.append("tags:")
    front += [f"- '{t}'" for t in card_tags(config)]
    front.append("---")

    targets = config.get("targets") or []
    if config.get("target_rule") == "regex":
        target_text = "parameters matching " + ", ".join(
            f"`{p}`" for p in config.get("target_patterns") or []
        )
    else:
        target_text = (
            "the 2-D weight of every `nn.Linear` inside the transformer layers (attention query/key/"
            "value/output and the feed-forward matrices); embeddings, pooler and heads are dense"
        )
    base_text = (
        f"[`{base}`](https://huggingface.co/{base})"
        if base_on_hub
        else (f"`{base}`" if base else "a dense model")
    )
    compact = config.get("storage") == "compact"
    repo = repo_id or "ORG/NAME"
    patterns = config.get("target_patterns") if config.get("target_rule") == "regex" else None
    targets_arg = f", targets={patterns!r}" if patterns else ""
    has_tokenizer = not lacks_tokenizer(folder)
    tokenizer_line = f'\ntokenizer = AutoTokenizer.from_pretrained("{repo}")' if has_tokenizer else ""
    tokenizer_import = ", AutoTokenizer" if has_tokenizer else ""

    if compact:
        load = (
            f"This repository stores the pruned matrices in compact form (`{config.get('weights_file')}`: "
            "nonzero values + a packed bit mask); plain `from_pretrained` cannot read it. Use `cram_hf`:\n\n"
            "```python\nfrom huggingface_hub import snapshot_download\nfrom cram_hf.checkpoint import load_sparse\n\n"
            f'model = load_sparse(snapshot_download("{repo}"))  # verifies the mask against sparsity_config.json\n```'
        )
    else:
        load = (
            "An ordinary Transformers checkpoint: the pruned weights are stored as exact zeros in "
            "`model.safetensors`, so nothing beyond `transformers` is needed.\n\n"
            f"```python\nfrom transformers import {auto}{tokenizer_import}\n\n"
            f'model = {auto}.from_pretrained("{repo}"){tokenizer_line}\n```\n\n'
            "`cram_hf.checkpoint.load_sparse(path)` loads it too and checks that the zeros (and the N:M pattern, "
            "if any) match `sparsity_config.json`."
        )

    body = f"""# {name}

{base_text} pruned one shot with `cram_hf` {config.get("library_version", "")}, a Hugging Face Transformers \
integration of [CrAM](https://arxiv.org/abs/2207.14200) (Compression-Aware Minimizer, Peste et al., ICLR 2023).

## How it was pruned

- Method: {_how_pruned(config)}{_fine_tuned(config)}
- Targets: {len(targets)} matrices — {target_text}.
- Achieved: **{100 * ach.get("target_sparsity", 0):.2f} %** of the target weights are zero \
({ach.get("target_zeros", 0):,} of {ach.get("target_numel", 0):,}); {100 * ach.get("model_sparsity", 0):.2f} % of all parameters.
- Full record: `{SPARSITY_CONFIG}` in this repository (per-matrix zeros, targets, library version).

Sparsity here is a mask of exact zeros; a speed-up needs a sparse runtime (e.g. 2:4 kernels on recent GPUs).

{PRUNER_GUIDANCE}

## How to load

{load}

## Keeping the mask when fine-tuning

Plain fine-tuning fills the zeros back in. Keep them with `cram_hf`'s callback, which masks gradients,
weights and optimizer state at every step:

```python
from transformers import Trainer
from cram_hf.sparse_finetune import KeepSparsityCallback

keep = KeepSparsityCallback.from_model(model{targets_arg})  # masks from the zeros of the pruned matrices
trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[keep])
```
"""
    sweep_file = sweep_file or os.path.join(folder, SWEEP_JSON)
    if os.path.isfile(sweep_file):
        with open(sweep_file) as f:
            body += "\n" + _sweep_table(json.load(f)) + "\n"
    body += """
## Citation

```bibtex
@inproceedings{peste2023cram,
  title     = {{CrAM}: A Compression-Aware Minimizer},
  author    = {Peste, Alexandra and Vladu, Adrian and Kurtic, Eldar and Lampert, Christoph H. and Alistarh, Dan},
  booktitle = {International Conference on Learning Representations (ICLR)},
  year      = {2023}
}
```
"""
    return "\n".join(front) + "\n\n" + body


# ------------------------------------------------------------------------------------------------ push


def check_repo_id(repo_id: str) -> str:
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id) or ".." in repo_id:
        raise ValueError(f"repo_id: {repo_id!r} is not a Hub repository id of the form 'ORG/NAME'.")
    return repo_id


def resolve_token(token: Optional[str] = None) -> str:
    """The token to push with: ``token``, else ``HF_TOKEN`` / the saved login. No token is an error."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise HubError(
            "No Hugging Face token: pass --token, set HF_TOKEN, or run `hf auth login` "
            "(the token needs write access). Nothing was uploaded."
        )
    return token


def check_online() -> None:
    from huggingface_hub import constants

    if hasattr(constants, "is_offline_mode"):
        offline = constants.is_offline_mode()
    else:  # huggingface_hub < 1.0 (the transformers 4.57 stack) checks this constant on each request
        offline = bool(constants.HF_HUB_OFFLINE)
    if offline:
        raise HubError(
            "HF_HUB_OFFLINE is set, so huggingface_hub refuses network access; unset it to push. "
            "Nothing was uploaded."
        )


def resolve_endpoint(endpoint: Optional[str] = None) -> str:
    # huggingface_hub reads HF_ENDPOINT once at import; read it at call time so a later setting counts.
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def check_push(repo_id: str, token: Optional[str] = None) -> str:
    """Everything a push needs that can be checked without the network; returns the token."""
    check_repo_id(repo_id)
    # Offline first: with HF_HUB_OFFLINE set, "no token" would send the user after the wrong cause.
    check_online()
    return resolve_token(token)


def _is_connection_error(err: BaseException) -> bool:
    names = {c.__name__ for c in type(err).__mro__}
    return isinstance(err, (ConnectionError, TimeoutError)) or bool(
        names
        & {"ConnectError", "TransportError", "RequestError", "ConnectionError", "Timeout", "TimeoutException"}
    )


def _stage(folder: str, card: str, staging: str) -> None:
    """Mirror ``folder`` into ``staging`` with symlinks (no copy of the weights) and add the card."""
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(root, folder)
        os.makedirs(os.path.join(staging, rel), exist_ok=True)
        for name in files:
            if name.startswith(".") or (rel == "." and name == CARD_NAME):
                continue
            src, dst = os.path.abspath(os.path.join(root, name)), os.path.join(staging, rel, name)
            try:
                os.symlink(src, dst)
            except OSError:  # no symlinks (e.g. Windows without privileges): copy instead
                shutil.copy2(src, dst)
    with open(os.path.join(staging, CARD_NAME), "w") as f:
        f.write(card)


def push_to_hub(
    folder,
    repo_id: str,
    *,
    private: Optional[bool] = None,
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
    commit_message: Optional[str] = None,
    use_existing_card: bool = True,
    sweep_file: Optional[str] = None,
) -> str:
    """Create ``repo_id`` (if needed) and upload the sparse checkpoint ``folder`` with a generated model card.

    ``private=None`` leaves the visibility to the namespace's default (and an existing repo's as it is).
    ``sweep_file``: a ``sweep.json`` from ``cram-hf sweep`` whose table goes into the card; it is uploaded as
    ``sweep.json`` too.

    A ``README.md`` already in ``folder`` is uploaded as is when ``use_existing_card``; otherwise the card is
    generated in a staging folder — ``folder`` itself is never modified. Returns the repository URL.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"folder: {folder!r} is not a directory.")
    read_sparsity_config(folder)  # a sparse checkpoint, or a clear error
    if sweep_file is not None and not os.path.isfile(sweep_file):
        raise FileNotFoundError(f"sweep_file: no such file {os.fspath(sweep_file)!r}.")
    token = check_push(repo_id, token)
    endpoint = resolve_endpoint(endpoint)
    existing = os.path.join(folder, CARD_NAME)
    if use_existing_card and os.path.isfile(existing):
        with open(existing) as f:
            card = f.read()
    else:
        card = model_card(folder, repo_id, sweep_file)
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="cram_hf_push_") as staging:
        _stage(folder, card, staging)
        if sweep_file is not None:
            staged = os.path.join(staging, SWEEP_JSON)
            if os.path.lexists(staged):
                os.remove(staged)
            shutil.copy2(sweep_file, staged)
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                repo_type="model",
                commit_message=commit_message or "Upload sparse checkpoint (cram_hf)",
            )
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            hint = " Check that the token has write access to this namespace." if status in (401, 403) else ""
            raise HubError(
                f"The Hub at {endpoint} refused the push of {repo_id!r} (HTTP {status}).{hint} Details: {err}"
            ) from err
        except Exception as err:
            if _is_connection_error(err):
                raise HubError(
                    f"Could not reach the Hub at {endpoint} ({type(err).__name__}: {err}). "
                    "Check the network (or HF_ENDPOINT); the upload did not complete and nothing local was changed."
                ) from err
            raise
    return str(url)
