import os
import sys

# The recipes import their helper modules as siblings, as `python recipes/run_x.py` finds them (the script's
# folder on sys.path); the tests load the scripts and import those modules the same way.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _environment_as_it_was():
    """Each test ends with the environment it began with: on transformers 4.x, building a ``TrainingArguments``
    with ``bf16``/``fp16`` (a recipe config parsed in a test) writes ``ACCELERATE_MIXED_PRECISION`` into
    ``os.environ``, and every later Trainer of the process would then train in that precision."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def tiny_bert_config(**overrides):
    from transformers import BertConfig

    kwargs = dict(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    kwargs.update(overrides)
    return BertConfig(**kwargs)


@pytest.fixture
def tiny_config():
    return tiny_bert_config()


WORDS = (
    "the a an of and to in is was it that he she his her had with for as at on by not be but from "
    "they this which or have all were one we my so there been would their if when what no more said "
    "cat dog sat mat house good great very much time day man woman love letter sister mother"
).split()


def make_tiny_tokenizer(directory):
    """A real WordPiece tokenizer over a small vocabulary, saved in ``directory`` and loaded back."""
    import json
    import os

    from transformers import AutoTokenizer

    os.makedirs(directory, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [chr(c) for c in range(97, 123)]
    vocab += [".", ",", "!", "?", ";", "'", '"'] + WORDS + ["##" + chr(c) for c in range(97, 123)]
    with open(os.path.join(directory, "vocab.txt"), "w") as f:
        f.write("\n".join(vocab) + "\n")
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 64}, f)
    return AutoTokenizer.from_pretrained(directory)


@pytest.fixture
def tiny_tokenizer(tmp_path):
    return make_tiny_tokenizer(tmp_path / "tokenizer")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a torchrun rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def exit_worker() -> None:
    """End a torchrun test worker once its checks are written: leave the group together, then exit at once.

    Call it after the function that built the trainers has returned. A gloo group still held by a DDP wrapper
    when the interpreter finalises can abort a rank after every check passed (SIGABRT, "terminate called
    without an active exception", no Python frame): 3 of 90 runs of the sparse fine-tuning worker here. The
    recipes' ending (``leave_process_group``: collect the freed trainers, then destroy the group) brought it to
    0 of 60; ``os._exit`` also skips the rest of finalisation, which is torch's, not ours, so a test cannot flake
    on it. The checks' files must be closed by then.
    """
    import sys

    from cram_hf.distributed import leave_process_group

    leave_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def torchrun(*args) -> list[str]:
    """``python -m torch.distributed.run --master_addr 127.0.0.1 ARGS...``: launches stay on the loopback."""
    import sys

    return [sys.executable, "-m", "torch.distributed.run", "--master_addr", "127.0.0.1", *map(str, args)]
