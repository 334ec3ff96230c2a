"""A save stopped by a full disk (ENOSPC) or Ctrl-C (KeyboardInterrupt) leaves the previous content in place
and no ``.tmp-*`` / ``.old-*`` entries: save_sparse and the atomic writes of cram_hf.files."""

import errno
import json
import os
import shutil

import pytest
import torch
from conftest import tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf import files
from cram_hf.checkpoint import SPARSITY_CONFIG, save_sparse
from cram_hf.pruning import prune


def disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


STOPS = {"ENOSPC": (disk_full, OSError), "KeyboardInterrupt": (ctrl_c, KeyboardInterrupt)}


@pytest.fixture
def saved(tmp_path):
    """A pruned tiny model and a first checkpoint of it at 50 %; the save under test replaces it."""
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    report = prune(model, 0.5)
    out = tmp_path / "out"
    save_sparse(model, out, report=report)
    return model, out, sorted(os.listdir(out)), (out / SPARSITY_CONFIG).read_text()


@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("compact", [False, True])
def test_a_save_stopped_while_writing_keeps_the_old_checkpoint(saved, tmp_path, monkeypatch, stop, compact):
    import safetensors.torch

    model, out, files, config = saved
    raise_, exc = STOPS[stop]
    # The weights file is the big write, where a disk fills up or a user presses Ctrl-C.
    monkeypatch.setattr(safetensors.torch, "save_file", raise_)
    monkeypatch.setattr(BertForMaskedLM, "save_pretrained", raise_)
    with pytest.raises(exc):
        save_sparse(model, out, report=prune(model, 0.7), overwrite=True, compact=compact)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(out)) == files and (out / SPARSITY_CONFIG).read_text() == config


def test_ctrl_c_while_the_replaced_checkpoint_is_deleted_leaves_no_old_folder(saved, tmp_path, monkeypatch):
    # The new checkpoint is in place; deleting the old one (long for a large model) is interrupted. (A full
    # disk cannot strike here: deleting needs no space, and rmtree(ignore_errors=True) swallows OSError.)
    model, out, _, _ = saved
    real_rmtree, stopped = shutil.rmtree, []

    def rmtree(path, *args, **kwargs):
        if ".old-" in os.fspath(path) and not stopped:
            stopped.append(path)
            os.remove(os.path.join(path, "model.safetensors"))  # half-way through
            raise KeyboardInterrupt
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(shutil, "rmtree", rmtree)
    with pytest.raises(KeyboardInterrupt):
        save_sparse(model, out, report=prune(model, 0.7), overwrite=True)
    assert stopped
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert json.loads((out / SPARSITY_CONFIG).read_text())["level"] == "0.7"


@pytest.mark.parametrize("stop", STOPS)
@pytest.mark.parametrize("where", ["write", "replace"])
def test_atomic_writes_stopped_keep_the_old_file_and_leave_no_temporary(tmp_path, monkeypatch, stop, where):
    raise_, exc = STOPS[stop]
    path = tmp_path / "eval_sparsities.json"
    files.write_json(str(path), {"old": 1})
    if where == "write":
        real_fdopen = os.fdopen

        class FullDisk:
            """The temporary file, whose writes fail."""

            def __init__(self, fd, *args, **kwargs):
                self.file = real_fdopen(fd, *args, **kwargs)

            def __enter__(self):
                return self

            def __exit__(self, *exc_info):
                self.file.close()

            def write(self, text):
                self.file.write(text[: len(text) // 2])
                raise_()

        monkeypatch.setattr(os, "fdopen", FullDisk)
    else:
        monkeypatch.setattr(os, "replace", raise_)
    writes = (lambda: files.write_json(str(path), {"new": 2}), lambda: files.write_text(str(path), "x"))
    for write in writes:
        with pytest.raises(exc):
            write()
        assert os.listdir(tmp_path) == ["eval_sparsities.json"]
        assert json.loads(path.read_text()) == {"old": 1}
