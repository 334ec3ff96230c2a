"""The README's Python quickstart, executed on a tiny model so that it cannot rot.

Only what cannot run offline in seconds is substituted: the Hub id becomes a tiny local BERT with a real
WordPiece tokenizer, 10,000 steps become 2, and ``train_dataset`` (which the README leaves to the reader)
is a handful of tokenized sentences."""

import os
import re

from conftest import WORDS, make_tiny_tokenizer, tiny_bert_config
from transformers import BertForMaskedLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def quickstart_block() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text[text.index("## Quickstart") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_runs(tmp_path, monkeypatch):
    code = quickstart_block()
    for needed in ('"bert-base-uncased"', "max_steps=10_000", "train_dataset=train_dataset"):
        assert needed in code, f"the README quickstart no longer contains {needed}; update this test"
    model_dir = tmp_path / "tiny-bert"
    tokenizer = make_tiny_tokenizer(model_dir)
    BertForMaskedLM(tiny_bert_config(vocab_size=len(tokenizer), max_position_embeddings=64)).save_pretrained(
        model_dir
    )
    code = code.replace('"bert-base-uncased"', repr(str(model_dir))).replace(
        "max_steps=10_000", "max_steps=2"
    )
    sentences = [" ".join(WORDS[i : i + 12]) for i in range(0, 48, 4)]
    train_dataset = [tokenizer(s, truncation=True, max_length=16) for s in sentences]
    monkeypatch.chdir(tmp_path)
    namespace = {"train_dataset": train_dataset}
    exec(compile(code, "README.md quickstart", "exec"), namespace)

    assert namespace["trainer"].state.global_step == 2
    assert abs(namespace["report"].target_sparsity - 0.8) < 1e-3
    saved = tmp_path / "out" / "bert-cram-80"
    assert (saved / "model.safetensors").is_file() and (saved / "sparsity_config.json").is_file()
