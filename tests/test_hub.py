"""Model card and Hub push, against a local HTTP server that plays the Hub and records what it receives.

huggingface_hub 2.4's ``create_repo`` + ``upload_folder`` make these calls (hf_xet installed or not, as long as
the server answers "regular" to the preupload): ``POST /api/repos/create``, ``POST /api/validate-yaml`` (when a
README.md is uploaded), ``POST /api/models/{repo}/preupload/main`` and ``POST /api/models/{repo}/commit/main``
(an ndjson body: a header line, then one base64 ``file`` line per file).
"""

import base64
import json
import os
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch
import yaml
from conftest import make_tiny_tokenizer, tiny_bert_config
from transformers import BertForMaskedLM

from cram_hf.checkpoint import save_sparse
from cram_hf.cli import main
from cram_hf.hub import HubError, model_card, push_to_hub
from cram_hf.pruning import prune

TOKEN = "hf_test_token"


class FakeHub:
    """Just enough of the Hub's HTTP API for create_repo + upload_folder; records every request."""

    def __init__(self, refuse_create=None):
        self.requests, self.repos, self.files, self.cards_validated = [], {}, {}, []
        hub_ = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, code, obj):
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                hub_.requests.append((self.command, self.path, dict(self.headers), body))
                parts = self.path.split("?")[0].strip("/").split("/")
                if parts == ["api", "repos", "create"]:
                    if refuse_create:
                        return self._reply(refuse_create, {"error": "You don't have the rights"})
                    payload = json.loads(body)
                    repo = f"{payload['organization']}/{payload['name']}"
                    hub_.repos[repo] = payload
                    return self._reply(200, {"url": f"{hub_.url}/{repo}"})
                if parts == ["api", "validate-yaml"]:
                    hub_.cards_validated.append(json.loads(body)["content"])
                    return self._reply(200, {"errors": [], "warnings": []})
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "preupload":
                    files = json.loads(body)["files"]
                    return self._reply(
                        200,
                        {
                            "files": [
                                {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                for f in files
                            ]
                        },
                    )
                if parts[:2] == ["api", "models"] and len(parts) == 6 and parts[4] == "commit":
                    repo = f"{parts[2]}/{parts[3]}"
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            content = base64.b64decode(item["value"]["content"])
                            hub_.files.setdefault(repo, {})[item["value"]["path"]] = content
                    return self._reply(
                        200, {"commitUrl": f"{hub_.url}/{repo}/commit/{'a' * 40}", "commitOid": "a" * 40}
                    )
                return self._reply(404, {"error": f"no route {self.path}"})

            do_GET = do_PUT = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; a push needs it off (only the local server is reached)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def fake_hub(online):
    import huggingface_hub

    if int(huggingface_hub.__version__.split(".")[0]) < 1:
        # The transformers 4.57 stack brings huggingface_hub 0.x, whose requests (visibility flags, commit
        # URLs parsed against the import-time endpoint) this recorder does not model.
        pytest.skip("the fake Hub records huggingface_hub >= 1.0 requests")
    server = FakeHub()
    yield server
    server.close()


def _checkpoint(tmp_path, level="2:4", base_model="google-bert/bert-base-uncased", **kwargs):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    report = prune(model, level)
    out = tmp_path / f"ckpt_{str(level).replace(':', '_')}"
    save_sparse(model, out, make_tiny_tokenizer(tmp_path / "tok"), report, base_model=base_model, **kwargs)
    return out


def _front_matter(card):
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def _listing(folder):
    return sorted((p, os.path.getmtime(os.path.join(folder, p))) for p in os.listdir(folder))


def test_model_card_for_an_nm_checkpoint(tmp_path):
    card = model_card(_checkpoint(tmp_path, "2:4"), repo_id="me/tiny-24")
    meta = _front_matter(card)
    assert meta["tags"] == ["cram", "sparse", "pruning", "semi-structured-sparsity", "2:4"]
    assert meta["base_model"] == "google-bert/bert-base-uncased"
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "fill-mask"
    assert "2:4 semi-structured sparsity" in card and "**50.00 %**" in card
    assert 'AutoModelForMaskedLM.from_pretrained("me/tiny-24")' in card
    assert "AutoTokenizer" in card
    assert "KeepSparsityCallback" in card and "cram_hf.sparse_finetune" in card
    assert "## Sparsity sweep" not in card
    # Which pruner to use with a CrAM model and when CrAM pays; the figures stay in the benchmarks.
    assert "## Choosing the pruner, and whether CrAM pays" in card and "benchmarks/README.md" in card
    assert not re.search(r"0\.9\d\d", card)


def test_model_card_for_magnitude_compact_local_base_with_sweep(tmp_path):
    base = tmp_path / "base_model_dir"
    base.mkdir()
    folder = _checkpoint(tmp_path, 0.7, base_model=str(base), compact=True)
    sweep = {
        "task": "mlm",
        "validation_file": "/data/valid.txt",
        "results": [
            {"model": "dense", "level": "0", "achieved_sparsity": 0.0, "accuracy": 0.51, "loss": 2.5},
            {"model": "dense", "level": "0.7", "achieved_sparsity": 0.7, "accuracy": 0.42, "loss": 3.25},
        ],
    }
    (folder / "sweep.json").write_text(json.dumps(sweep))
    card = model_card(folder)
    meta = _front_matter(card)
    assert "2:4" not in meta["tags"] and "unstructured-sparsity" in meta["tags"] and "cram" in meta["tags"]
    assert "base_model" not in meta  # a local path is not a Hub model
    # Nothing uploaded names a local path: the card and the record name the folder only.
    assert str(tmp_path) not in card and str(tmp_path) not in (folder / "sparsity_config.json").read_text()
    assert "`base_model_dir` pruned one shot" in card
    assert "magnitude pruning to 70 %" in card and "all target matrices together (global)" in card
    assert "load_sparse" in card and "plain `from_pretrained` cannot read it" in card
    assert "## Sparsity sweep" in card
    assert "| dense | 0.7 | 70.0 % | 0.42 | 3.25 |" in card


def test_model_card_names_a_calibrated_method_once_and_a_kept_mask_after_fine_tuning(tmp_path):
    from cram_hf.checkpoint import save_finetuned_sparsity_config

    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config())
    report = prune(model, 0.5)
    report.method = "sparsegpt"  # as a calibrated prune reports itself
    report.method_params = {"damping": 0.01, "block_size": 128, "calibration_file": str(tmp_path / "c.txt")}
    pruned = tmp_path / "pruned"
    save_sparse(model, pruned, make_tiny_tokenizer(tmp_path / "tok"), report)
    card = model_card(pruned)
    assert "**one-shot SparseGPT pruning to 50 %**: each matrix reconstructed" in card
    assert "with SparseGPT" not in card and "from `c.txt`" in card
    # Fine-tuned with the mask kept: the record keeps how it was pruned, with its parameters, and says so.
    tuned = tmp_path / "tuned"
    save_sparse(model, tuned, make_tiny_tokenizer(tmp_path / "tok"), report)
    config = save_finetuned_sparsity_config(model, tuned, report.targets, model_path=pruned)
    assert config["method"] == "sparsegpt" and config["method_params"]["damping"] == 0.01
    assert config["method_params"]["calibration_file"] == "c.txt" and config["base_model"] == "pruned"
    assert "Then fine-tuned with the mask kept" in model_card(tuned)


def test_push_creates_the_repo_and_uploads_files_and_card(tmp_path, fake_hub):
    folder = _checkpoint(tmp_path)
    before = _listing(folder)

    url = push_to_hub(folder, "me/tiny-24", private=True, token=TOKEN, endpoint=fake_hub.url)

    assert url == f"{fake_hub.url}/me/tiny-24"
    assert fake_hub.repos["me/tiny-24"]["visibility"] == "private"
    sent = fake_hub.files["me/tiny-24"]
    assert sorted(sent) == sorted(os.listdir(folder) + ["README.md"])
    for name in os.listdir(folder):  # the files themselves, byte for byte
        assert sent[name] == (folder / name).read_bytes(), name
    card = sent["README.md"].decode()
    assert _front_matter(card)["tags"][-1] == "2:4" and "KeepSparsityCallback" in card
    assert fake_hub.cards_validated and "cram" in fake_hub.cards_validated[0]
    assert all(r[2].get("authorization") == f"Bearer {TOKEN}" for r in fake_hub.requests)
    assert _listing(folder) == before  # no README.md written into the user's folder


def test_push_without_token_fails_before_any_request(tmp_path, fake_hub, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    folder = _checkpoint(tmp_path)
    before = _listing(folder)
    with pytest.raises(HubError, match="No Hugging Face token"):
        push_to_hub(folder, "me/tiny", endpoint=fake_hub.url)
    assert fake_hub.requests == [] and _listing(folder) == before


def test_push_in_offline_mode_is_refused_clearly(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE"):
        push_to_hub(_checkpoint(tmp_path), "me/tiny", token=TOKEN, endpoint="http://127.0.0.1:9")


def test_offline_without_a_token_names_offline_mode_not_the_token(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    folder = _checkpoint(tmp_path)
    with pytest.raises(HubError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(folder, "me/tiny", endpoint="http://127.0.0.1:9")
    assert main(["push", str(folder), "--repo_id", "me/tiny"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set" in err and "token" not in err.lower()


def test_unreachable_endpoint_gives_a_clear_error_and_changes_nothing(tmp_path, online):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    folder = _checkpoint(tmp_path)
    before = _listing(folder)
    with pytest.raises(HubError, match="Could not reach the Hub"):
        push_to_hub(folder, "me/tiny", token=TOKEN, endpoint=f"http://127.0.0.1:{port}")
    assert _listing(folder) == before


def test_server_refusal_is_reported_with_a_hint(tmp_path, online):
    server = FakeHub(refuse_create=403)
    try:
        with pytest.raises(HubError, match="HTTP 403.*write access"):
            push_to_hub(_checkpoint(tmp_path), "other/tiny", token=TOKEN, endpoint=server.url)
        assert "other/tiny" not in server.files
    finally:
        server.close()


def test_push_refuses_a_folder_that_is_not_a_sparse_checkpoint(tmp_path, fake_hub):
    (tmp_path / "plain").mkdir()
    with pytest.raises(FileNotFoundError, match="sparsity_config.json"):
        push_to_hub(tmp_path / "plain", "me/tiny", token=TOKEN, endpoint=fake_hub.url)
    with pytest.raises(ValueError, match="ORG/NAME"):
        push_to_hub(_checkpoint(tmp_path), "not a repo id", token=TOKEN, endpoint=fake_hub.url)
    assert fake_hub.requests == []


def test_cli_push_and_prune_with_push_to_hub(tmp_path, fake_hub, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    folder = _checkpoint(tmp_path)
    sweep = tmp_path / "elsewhere" / "sweep.json"
    sweep.parent.mkdir()
    sweep.write_text(
        json.dumps(
            {
                "task": "classification",
                "validation_file": "dev.csv",
                "results": [
                    {"model": "cram", "level": "2:4", "achieved_sparsity": 0.5, "accuracy": 0.875, "f1": 0.75}
                ],
            }
        )
    )
    assert (
        main(["push", str(folder), "--repo_id", "me/pushed", "--token", TOKEN, "--sweep_file", str(sweep)])
        == 0
    )
    sent = fake_hub.files["me/pushed"]
    assert "| cram | 2:4 | 50.0 % | 0.875 | 0.75 |" in sent["README.md"].decode()
    assert sent["sweep.json"] == sweep.read_bytes()
    assert "visibility" not in fake_hub.repos["me/pushed"]  # no --private: the namespace default
    assert "me/pushed" in capsys.readouterr().out
    assert not (folder / "sweep.json").exists()

    model_dir = tmp_path / "dense"
    torch.manual_seed(1)
    BertForMaskedLM(tiny_bert_config()).save_pretrained(model_dir)
    make_tiny_tokenizer(model_dir)
    rc = main(
        [
            "prune",
            str(model_dir),
            "--sparsity",
            "0.5",
            "--output_dir",
            str(tmp_path / "p"),
            "--push_to_hub",
            "me/pruned",
            "--private",
            "--token",
            TOKEN,
        ]
    )
    assert rc == 0
    sent = fake_hub.files["me/pruned"]
    assert {"config.json", "model.safetensors", "sparsity_config.json", "README.md"} <= set(sent)
    assert json.loads(sent["sparsity_config.json"])["level"] == "0.5"
    assert fake_hub.repos["me/pruned"]["visibility"] == "private"


def test_cli_prune_with_push_but_no_token_fails_before_loading(tmp_path, online, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    model_dir = tmp_path / "dense"
    BertForMaskedLM(tiny_bert_config()).save_pretrained(model_dir)
    rc = main(
        [
            "prune",
            str(model_dir),
            "--sparsity",
            "0.5",
            "--output_dir",
            str(tmp_path / "p"),
            "--push_to_hub",
            "me/pruned",
        ]
    )
    assert rc == 2 and "No Hugging Face token" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
