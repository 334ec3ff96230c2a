"""Atomic outputs: write a file or a folder under a temporary name next to its destination, then move it
into place, so a reader never sees half of it and an interrupted write leaves nothing behind."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
import uuid


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _remove(path: str) -> None:
    """Delete a file or a folder; finishes when interrupted once (Ctrl-C while a large folder is deleted)."""

    def remove():
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    try:
        remove()
    except BaseException:
        remove()
        raise


def _move_into_place(tmp: str, path: str) -> None:
    """Replace ``path`` by ``tmp`` with renames only (same parent, hence same filesystem). Whatever stops it
    (an error, Ctrl-C), ``path`` ends as the old or the new content and no ``.old-`` entry stays."""
    if not os.path.isdir(tmp):
        os.replace(tmp, path)  # atomic for files, old content included
        return
    # A name, not a folder (mkdtemp): a rename either happened or not, so the cleanup below knows the state.
    old = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.old-{uuid.uuid4().hex[:8]}")
    try:
        if os.path.lexists(path):
            os.rename(path, old)
        os.rename(tmp, path)
    except BaseException:
        if os.path.lexists(old) and not os.path.lexists(path):
            os.rename(old, path)
        raise
    finally:
        _remove(old)


@contextlib.contextmanager
def replacing(path, directory: bool = False):
    """Yield a temporary path next to ``path`` (a file, or with ``directory`` an empty folder); when the
    block ends normally it replaces ``path``, otherwise it is removed. The result gets the permissions a
    plain ``open`` / ``os.makedirs`` would give it (``mkstemp``/``mkdtemp`` make them private)."""
    path = os.path.abspath(os.fspath(path))
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(path)}.tmp-"
    if directory:
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, tmp = tempfile.mkstemp(prefix=prefix, dir=parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        _move_into_place(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def write_text(path, text: str) -> None:
    """``text`` at ``path``, written atomically."""
    with replacing(path) as tmp, os.fdopen(os.open(tmp, os.O_WRONLY | os.O_TRUNC), "w") as f:
        f.write(text)


def write_json(path, obj) -> None:
    """``obj`` as indented JSON at ``path``, written atomically."""
    write_text(path, json.dumps(obj, indent=2, default=float) + "\n")


def check_not_empty(path: str, name: str) -> None:
    """Refuse a data file with nothing but whitespace in it (``datasets`` fails on it with a traceback)."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        while chunk := f.read(1 << 16):
            if chunk.strip():
                return
    raise ValueError(f"{name}: {path!r} is empty; it needs at least one example.")


def check_not_replacing(output_dir, sources, name: str = "--output_dir") -> None:
    """Refuse an output folder that is one of the ``sources`` (folders the command reads) or holds one: it is
    replaced whole when the output is moved into place, which would delete what was read (a model pruned into
    its own folder). Hub ids and missing paths are not folders and pass."""
    out = os.path.realpath(os.fspath(output_dir))
    for source in sources:
        if source is None or not os.path.isdir(os.fspath(source)):
            continue
        src = os.path.realpath(os.fspath(source))
        if src == out or src.startswith(out.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"{name}: {os.fspath(output_dir)!r} {'is' if src == out else 'holds'} the input folder "
                f"{os.fspath(source)!r}, which writing the output replaces whole; give a new folder."
            )
