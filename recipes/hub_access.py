"""How a recipe loads from the Hub: the keyword arguments of ``--cache_dir``, ``--model_revision``, ``--token``
and ``--trust_remote_code``, and a failure to fetch as one line naming the flag and what to pass instead."""

from __future__ import annotations

import contextlib
import os
from typing import Optional

from cram_hf.errors import UsageError


def hub_kwargs(model_args) -> dict:
    """What ``from_pretrained`` takes from a recipe's ``ModelArguments``."""
    return dict(
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )


def hub_offline() -> bool:
    """Whether offline mode is on for the Hub or for datasets (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE``)."""
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


@contextlib.contextmanager
def from_the_hub(flag: str, name: Optional[str], instead: str):
    """A block that loads ``name`` (given as ``flag``) from the Hub or its cache: a failure to fetch it — offline
    mode on, no network, no such repository — becomes one line naming the flag and what to pass ``instead``
    (local files or a folder). Errors of local files (missing, unreadable) keep their own message."""
    try:
        yield
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError):
        raise
    except OSError as err:  # ConnectionError included; transformers raises OSError for what it cannot fetch
        if hub_offline():
            why = "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) and it is not in the local cache"
        else:
            why = "it could not be fetched from the Hub (" + " ".join(str(err).split())[:200] + ")"
        raise UsageError(f"{flag}: {name!r}: {why}; {instead}.") from err
