"""The README's Python quickstart, executed on a tiny model so that it cannot rot; the README's size as a
front door; and every relative link (file and heading) in the README, CONTRIBUTING, docs/ and benchmarks/.

Only what cannot run offline in seconds is substituted in the quickstart: the Hub id becomes a tiny local BERT
with a real WordPiece tokenizer, 10,000 steps become 2, and ``train_dataset`` (which the README leaves to the
reader) is a handful of tokenized sentences."""

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


README_LIMIT = 16_384  # the README is the front door; guides, design and reference live in docs/
LINKED_DOCS = ["README.md", "CONTRIBUTING.md", "benchmarks/README.md"] + sorted(
    os.path.join("docs", name) for name in os.listdir(os.path.join(ROOT, "docs")) if name.endswith(".md")
)
LINK = re.compile(r"!?\[[^\]]*\]\(([^()\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)


def _prose(text: str) -> str:
    """The text without fenced code blocks and inline code, where brackets are code, not links."""
    return re.sub(r"`[^`\n]*`", "", FENCED.sub("", text))


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a file's headings: lower case, punctuation dropped, spaces to hyphens, and
    -1, -2, ... for repeats."""
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} +(.+?) *#*$", FENCED.sub("", text), re.M):
        heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(doc: str) -> list[str]:
    with open(os.path.join(ROOT, doc)) as f:
        text = f.read()
    broken = []
    for target in LINK.findall(_prose(text)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        full = (
            os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path))
            if path
            else os.path.join(ROOT, doc)
        )
        if not os.path.exists(full):
            broken.append(f"{doc}: {target} (no such file)")
        elif anchor and full.endswith(".md"):
            with open(full) as f:
                if anchor not in github_anchors(f.read()):
                    broken.append(f"{doc}: {target} (no such heading)")
    return broken


def test_readme_is_a_front_door():
    size = os.path.getsize(os.path.join(ROOT, "README.md"))
    assert size <= README_LIMIT, f"README.md is {size} bytes, over {README_LIMIT}: move the detail into docs/"


def test_github_anchors():
    text = "# Top\n## `CrAMConfig`\n## Choosing ρ, the levels\n```\n# not a heading\n```\n## Top\n"
    assert github_anchors(text) == {"top", "cramconfig", "choosing-ρ-the-levels", "top-1"}


def test_relative_links_resolve():
    broken = [line for doc in LINKED_DOCS for line in broken_links(doc)]
    assert not broken, "broken links:\n" + "\n".join(broken)
