"""recipes/run_glue.py and recipes/run_qa.py end to end on tiny local data, plus QA features/post-processing."""

import csv
import importlib.util
import json
import os
import random
import sys

import numpy as np
import pytest
import torch
from conftest import WORDS, make_tiny_tokenizer, tiny_bert_config
from transformers import (
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertForMaskedLM,
    ByT5Tokenizer,
)

import task_metrics as T
from cram_hf import metrics as M
from cram_hf.pruning import prune
from cram_hf.targets import target_names
from utils_qa import postprocess_qa_predictions, prepare_train_features, read_squad_records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_recipe(name):
    spec = importlib.util.spec_from_file_location(
        f"recipes_{name}", os.path.join(ROOT, "recipes", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


run_glue = load_recipe("run_glue")
run_qa = load_recipe("run_qa")


@pytest.fixture(scope="module")
def sparse_model(tmp_path_factory):
    """A tiny BERT MLM checkpoint pruned to 70 % (no sparsity_config.json: detected from its zeros)."""
    d = tmp_path_factory.mktemp("sparse_model")
    tok = make_tiny_tokenizer(d)
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_bert_config(vocab_size=len(tok), max_position_embeddings=64))
    prune(model, 0.7)
    model.save_pretrained(d)
    zeros = {n: p.detach() == 0 for n, p in model.named_parameters() if n in set(target_names(model))}
    return str(d), zeros


def common_args(out, cache):
    return [
        "--output_dir",
        str(out),
        "--cache_dir",
        str(cache),
        "--report_to",
        "none",
        "--save_strategy",
        "no",
        "--use_cpu",
        "--log_level",
        "warning",
        "--disable_tqdm",
        "true",
        "--seed",
        "0",
    ]


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_pairs_csv(path, n, seed):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["idx", "sentence1", "sentence2", "label"])
        for i in range(n):
            s1, s2 = sentence(rng, 6), sentence(rng, 5)
            w.writerow([i, s1, s2, "yes" if "cat" in (s1 + " " + s2).split() else "no"])


def assert_same_zeros(model, zeros):
    params = dict(model.named_parameters())
    for n, z in zeros.items():
        assert torch.equal(params[n].detach() == 0, z), f"{n}: pruned pattern not kept"


# --- GLUE-style classification -----------------------------------------------------------------------------


def test_glue_sparse_finetune_with_cram_and_one_shot_table(sparse_model, tmp_path):
    model_dir, zeros = sparse_model
    write_pairs_csv(tmp_path / "train.csv", 40, 0)
    write_pairs_csv(tmp_path / "dev.csv", 16, 1)
    out = tmp_path / "out"
    trainer = run_glue.main(
        [
            "--model_name_or_path",
            model_dir,
            "--train_file",
            str(tmp_path / "train.csv"),
            "--validation_file",
            str(tmp_path / "dev.csv"),
            "--do_train",
            "--do_eval",
            "--max_steps",
            "4",
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "1e-2",
            "--weight_decay",
            "0.1",
            "--gradient_accumulation_steps",
            "2",
            "--max_seq_length",
            "32",
            "--pad_to_max_length",
            "false",
            "--cram_rho",
            "0.05",
            "--cram_sparsities",
            "0.5",
            "2:4",
            "--eval_sparsities",
            "0.8",
            "2:4",
            *common_args(out, tmp_path / "cache"),
        ]
    )
    assert trainer.cram.active  # CrAM during fine-tuning when asked
    saved = AutoModelForSequenceClassification.from_pretrained(out)
    assert_same_zeros(saved, zeros)  # the MLM names (bert.encoder...) are the classifier's names too
    moved = [
        not torch.equal(p, q)
        for (n, p), (_, q) in zip(
            saved.named_parameters(), BertForMaskedLM.from_pretrained(model_dir).named_parameters()
        )
        if n in zeros
    ]
    assert all(moved), "the kept weights should have trained"

    # Reported accuracy/F1 equal an independent computation from the saved model.
    results = json.loads((out / "eval_results.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "dev.csv")))
    enc = trainer.processing_class(
        [r["sentence1"] for r in rows],
        [r["sentence2"] for r in rows],
        padding=True,
        truncation=True,
        max_length=32,
        return_tensors="pt",
    )
    with torch.no_grad():
        preds = saved.eval()(**enc).logits.argmax(-1).numpy()
    labels = np.array([["no", "yes"].index(r["label"]) for r in rows])  # sorted label list
    assert saved.config.label2id == {"no": 0, "yes": 1}
    assert results["eval_accuracy"] == pytest.approx(M.accuracy(preds, labels))
    assert results["eval_f1"] == pytest.approx(M.f1(preds, labels))

    table = json.loads((out / "eval_sparsities.json").read_text())
    assert [r["level"] for r in table["levels"]] == ["0.8", "2:4"]
    assert table["levels"][0]["achieved_sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert table["levels"][1]["achieved_sparsity"] >= 0.7  # 2:4 on top of the kept 70 % mask
    assert "eval_accuracy" in table["levels"][0] and "eval_samples" not in table["dense"]
    assert table["levels"][0]["eval_loss"] != table["dense"]["eval_loss"]  # evaluated pruned
    # One-shot pruning was undone: the live model is still the fine-tuned one.
    assert_same_zeros(trainer.model, zeros)
    for (n, p), (_, q) in zip(trainer.model.named_parameters(), saved.named_parameters()):
        assert torch.equal(p.detach().cpu(), q), n
    config = json.loads((out / "sparsity_config.json").read_text())
    assert set(config["targets"]) == set(zeros)
    assert config["achieved"]["target_sparsity"] == pytest.approx(0.7, abs=1e-3)


def test_glue_json_config_regression_plain_finetune_keep_sparsity_off(sparse_model, tmp_path):
    model_dir, zeros = sparse_model
    rng = random.Random(2)
    for split, n in (("train", 24), ("dev", 12)):
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                text = sentence(rng, 7)
                f.write(json.dumps({"id": 1, "text": text, "score": float(text.count("the"))}) + "\n")
    out = tmp_path / "out"
    config = {
        "model_name_or_path": model_dir,
        "train_file": str(tmp_path / "train.jsonl"),
        "validation_file": str(tmp_path / "dev.jsonl"),
        "label_column_name": "score",
        "do_train": True,
        "do_eval": True,
        "max_steps": 3,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-2,
        "max_seq_length": 16,
        "keep_sparsity": False,
        "output_dir": str(out),
        "cache_dir": str(tmp_path / "c"),
        "report_to": "none",
        "save_strategy": "no",
        "use_cpu": True,
        "log_level": "warning",
    }
    (tmp_path / "args.json").write_text(json.dumps(config))
    trainer = run_glue.main([str(tmp_path / "args.json"), "--max_steps", "2"])  # flags override the file
    assert trainer.state.global_step == 2
    assert not trainer.cram.active  # fine-tuning default: CrAM off
    assert trainer.model.config.num_labels == 1  # float labels -> regression
    results = json.loads((out / "eval_results.json").read_text())
    assert {"eval_mse", "eval_pearson", "eval_spearmanr"} <= set(results)
    params = dict(trainer.model.named_parameters())
    assert not all(torch.equal(params[n].detach() == 0, z) for n, z in zeros.items())  # mask not kept
    assert not (out / "sparsity_config.json").exists()


@pytest.mark.parametrize(
    "flags, rho, levels",
    [
        ([], 0.0, []),  # plain fine-tuning by default
        (["--cram_rho", "0.1"], 0.1, ["0.5", "0.6", "0.7", "0.8"]),  # rho alone: CrAMConfig's default levels
        (["--cram_sparsities", "0.5", "2:4"], 0.05, ["0.5", "2:4"]),  # levels alone: CrAMConfig's default rho
        (["--cram_sparsities", "none"], 0.0, []),
    ],
)
def test_finetune_config_turns_cram_on_only_when_asked(tmp_path, flags, rho, levels):
    from transformers import HfArgumentParser

    from command_line import parse_args
    from recipe_arguments import FinetuneConfig

    (config,) = parse_args(HfArgumentParser(FinetuneConfig), ["--output_dir", str(tmp_path), *flags])
    assert (config.cram_rho, config.cram_sparsities, config.cram_enabled) == (
        rho,
        levels,
        bool(levels) or rho > 0,
    )


def unloadable_model(directory):
    """A folder that passes the model-path check (config.json, a weights file) but that loading would fail on
    (OSError, not ValueError): errors raised instead come before the model loads."""
    BertForMaskedLM(tiny_bert_config()).config.save_pretrained(directory)
    (directory / "model.safetensors").write_text("not safetensors")
    return str(directory)


def test_glue_one_shot_levels_below_the_kept_sparsity(sparse_model, tmp_path, caplog):
    from transformers import AutoTokenizer

    from cram_hf import save_sparse, sparsity_report

    model_dir, _ = sparse_model
    write_pairs_csv(tmp_path / "train.csv", 16, 0)
    write_pairs_csv(tmp_path / "dev.csv", 8, 1)
    data = ["--train_file", str(tmp_path / "train.csv"), "--validation_file", str(tmp_path / "dev.csv")]
    run = ["--do_train", "--do_eval", "--max_steps", "1", "--max_seq_length", "16", "--eval_sparsities"]
    # A 70 % checkpoint with no sparsity_config.json: 0.5 is found unreachable after training, skipped, stated.
    out = tmp_path / "out"
    run_glue.main(
        ["--model_name_or_path", model_dir, *data, *run, "0.5", "0.8", *common_args(out, tmp_path / "c")]
    )
    table = json.loads((out / "eval_sparsities.json").read_text())
    assert [r["level"] for r in table["levels"]] == ["0.8"]
    assert "eval_sparsities: 0.5 skipped, below the sparsity the fine-tuned model has (0.7000)" in caplog.text
    # With its record, the same is refused before any data or weights are read, and nothing is written.
    recorded = tmp_path / "recorded"
    model = BertForMaskedLM.from_pretrained(model_dir)
    save_sparse(
        model, recorded, tokenizer=AutoTokenizer.from_pretrained(model_dir), report=sparsity_report(model)
    )
    with pytest.raises(ValueError, match=r"^eval_sparsities: 0.5 below the sparsity model .* \(0.7000"):
        run_glue.main(
            [
                "--model_name_or_path",
                str(recorded),
                *data,
                *run,
                "0.5",
                *common_args(tmp_path / "o2", tmp_path / "c"),
            ]
        )
    assert not (tmp_path / "o2").exists()


def test_glue_bad_inputs_fail_before_the_model_loads(tmp_path):
    missing_model = unloadable_model(tmp_path / "unloadable-model")
    base = common_args(tmp_path / "out", tmp_path / "cache")
    with pytest.raises(ValueError, match="unknown task 'sst3'"):
        run_glue.main(["--model_name_or_path", missing_model, "--task_name", "sst3", "--do_eval", *base])
    with open(tmp_path / "numbers.csv", "w") as f:
        f.write("idx,label\n1,0\n2,1\n")
    with pytest.raises(ValueError, match="No text column"):
        run_glue.main(
            [
                "--model_name_or_path",
                missing_model,
                "--train_file",
                str(tmp_path / "numbers.csv"),
                "--do_train",
                *base,
            ]
        )
    write_pairs_csv(tmp_path / "pairs.csv", 4, 0)
    with pytest.raises(ValueError, match=r"column\(s\) \['premise'\] missing"):
        run_glue.main(
            [
                "--model_name_or_path",
                missing_model,
                "--train_file",
                str(tmp_path / "pairs.csv"),
                "--text_column_names",
                "premise",
                "--do_train",
                *base,
            ]
        )
    with pytest.raises(ValueError, match="no column 'target'"):
        run_glue.main(
            [
                "--model_name_or_path",
                missing_model,
                "--train_file",
                str(tmp_path / "pairs.csv"),
                "--label_column_name",
                "target",
                "--do_train",
                *base,
            ]
        )


# --- SQuAD-style question answering ------------------------------------------------------------------------


def squad_examples(n, seed, unanswerable=0):
    """Contexts of ~30 words (several windows at max_seq_length 32); the answer is a 2-word span."""
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        words = [rng.choice(WORDS) for _ in range(30)]
        k = rng.randrange(0, 28)
        context = " ".join(words)
        answer = " ".join(words[k : k + 2])
        start = len(" ".join(words[:k])) + (1 if k else 0)
        assert context[start : start + len(answer)] == answer
        has = i >= unanswerable
        examples.append(
            {
                "id": f"q{seed}-{i}",
                "title": "t",
                "context": context,
                "question": f"what is after {words[k - 1] if k else 'nothing'} ?",
                "answers": {"text": [answer] if has else [], "answer_start": [start] if has else []},
            }
        )
    return examples


def write_nested_squad(path, examples):
    """The original SQuAD layout, one paragraph per example."""
    data = [
        {
            "title": "t",
            "paragraphs": [
                {
                    "context": e["context"],
                    "qas": [
                        {
                            "id": e["id"],
                            "question": e["question"],
                            "is_impossible": not e["answers"]["text"],
                            "answers": [
                                {"text": t, "answer_start": s}
                                for t, s in zip(e["answers"]["text"], e["answers"]["answer_start"])
                            ],
                        }
                    ],
                }
            ],
        }
        for e in examples
    ]
    path.write_text(json.dumps({"version": "1.1", "data": data}))


def test_squad_file_formats_agree(tmp_path):
    examples = squad_examples(3, 0, unanswerable=1)
    write_nested_squad(tmp_path / "nested.json", examples)
    (tmp_path / "flat.json").write_text(json.dumps({"data": examples}))
    (tmp_path / "flat.jsonl").write_text("\n".join(json.dumps(e) for e in examples))
    nested = read_squad_records(str(tmp_path / "nested.json"))
    assert (
        nested
        == read_squad_records(str(tmp_path / "flat.json"))
        == read_squad_records(str(tmp_path / "flat.jsonl"))
    )
    assert nested[0]["answers"] == {"text": [], "answer_start": []}


def test_qa_v1_end_to_end_keeps_sparsity(sparse_model, tmp_path):
    model_dir, zeros = sparse_model
    write_nested_squad(tmp_path / "train.json", squad_examples(16, 0))
    dev = squad_examples(8, 1)
    (tmp_path / "dev.json").write_text(json.dumps({"data": dev}))
    out = tmp_path / "out"
    trainer = run_qa.main(
        [
            "--model_name_or_path",
            model_dir,
            "--train_file",
            str(tmp_path / "train.json"),
            "--validation_file",
            str(tmp_path / "dev.json"),
            "--do_train",
            "--do_eval",
            "--max_steps",
            "3",
            "--per_device_train_batch_size",
            "8",
            "--learning_rate",
            "1e-2",
            "--weight_decay",
            "0.1",
            "--max_seq_length",
            "32",
            "--doc_stride",
            "12",
            "--pad_to_max_length",
            "false",
            "--n_best_size",
            "5",
            "--max_answer_length",
            "4",
            "--eval_sparsities",
            "0.9",
            *common_args(out, tmp_path / "cache"),
        ]
    )
    assert len(trainer.eval_dataset) > len(dev)  # long contexts were split into several windows
    assert_same_zeros(AutoModelForQuestionAnswering.from_pretrained(out), zeros)
    results = json.loads((out / "eval_results.json").read_text())
    predictions = json.loads((out / "eval_predictions.json").read_text())
    assert set(predictions) == {e["id"] for e in dev}
    for e in dev:  # every answer is a span of its context, at most 4 tokens (= words here)
        assert predictions[e["id"]] in e["context"] and 1 <= len(predictions[e["id"]].split()) <= 4
    expected = T.squad_metrics(predictions, {e["id"]: e["answers"] for e in dev})
    assert results["eval_exact_match"] == pytest.approx(expected["exact_match"])
    assert results["eval_f1"] == pytest.approx(expected["f1"])
    table = json.loads((out / "eval_sparsities.json").read_text())
    assert table["levels"][0]["achieved_sparsity"] == pytest.approx(0.9, abs=1e-3)
    assert "eval_f1" in table["levels"][0]


def test_qa_v2_reports_has_and_no_answer_split(sparse_model, tmp_path):
    model_dir, _ = sparse_model
    train = squad_examples(12, 0, unanswerable=4)
    dev = squad_examples(6, 1, unanswerable=2)
    (tmp_path / "train.jsonl").write_text("\n".join(json.dumps(e) for e in train))
    write_nested_squad(tmp_path / "dev.json", dev)
    out = tmp_path / "out"
    run_qa.main(
        [
            "--model_name_or_path",
            model_dir,
            "--train_file",
            str(tmp_path / "train.jsonl"),
            "--validation_file",
            str(tmp_path / "dev.json"),
            "--do_train",
            "--do_eval",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--max_seq_length",
            "32",
            "--doc_stride",
            "12",
            "--version_2_with_negative",
            "--null_score_diff_threshold",
            "0.0",
            *common_args(out, tmp_path / "cache"),
        ]
    )
    results = json.loads((out / "eval_results.json").read_text())
    assert (
        results["eval_HasAns_total"] == 4 and results["eval_NoAns_total"] == 2 and results["eval_total"] == 6
    )
    odds = json.loads((out / "eval_null_odds.json").read_text())
    predictions = json.loads((out / "eval_predictions.json").read_text())
    for qid, diff in odds.items():  # "" exactly when the null score wins by more than the threshold
        assert (predictions[qid] == "") == (diff > 0.0)
    # The model was sparse: its mask was kept (auto) and a sparsity_config.json written.
    assert json.loads((out / "sparsity_config.json").read_text())["fine_tuned_with_mask_kept"] is True


def test_qa_slow_tokenizer_is_a_clear_error(tmp_path):
    ByT5Tokenizer().save_pretrained(tmp_path / "slow")
    (tmp_path / "dev.json").write_text(json.dumps({"data": squad_examples(2, 0)}))
    with pytest.raises(ValueError, match="fast tokenizer"):
        run_qa.main(
            [
                "--model_name_or_path",
                unloadable_model(tmp_path / "unloadable"),
                "--tokenizer_name",
                str(tmp_path / "slow"),
                "--validation_file",
                str(tmp_path / "dev.json"),
                "--do_eval",
                *common_args(tmp_path / "out", tmp_path / "cache"),
            ]
        )
    with pytest.raises(ValueError, match="do_train needs train data"):
        run_qa.main(
            [
                "--model_name_or_path",
                str(tmp_path / "unloadable"),  # its config reads: the data check comes next
                "--validation_file",
                str(tmp_path / "dev.json"),
                "--do_train",
                *common_args(tmp_path / "out", tmp_path / "cache"),
            ]
        )


def test_train_features_point_at_the_answer(tmp_path):
    tok = make_tiny_tokenizer(tmp_path / "tok")
    examples = squad_examples(6, 3, unanswerable=1)
    batch = {k: [e[k] for e in examples] for k in examples[0]}
    enc = prepare_train_features(batch, tok, max_seq_length=24, doc_stride=8)
    mapping = enc["overflow_to_sample_mapping"] if "overflow_to_sample_mapping" in enc else None
    assert mapping is None  # popped by the function
    found = 0
    for ids, s, e in zip(enc["input_ids"], enc["start_positions"], enc["end_positions"]):
        if s == 0:
            assert e == 0  # [CLS]: answer not in this window or no answer
            continue
        found += 1
        text = tok.decode(ids[s : e + 1])
        assert any(
            T.normalize_answer(text) == T.normalize_answer(ex["answers"]["text"][0])
            for ex in examples
            if ex["answers"]["text"]
        )
    assert found >= 5  # every answerable question is found in at least one window


def test_postprocess_picks_best_valid_span_across_windows_and_null_threshold():
    from datasets import Dataset

    context = "the cat sat on the mat"
    examples = [{"id": "a", "context": context}]
    # Two windows; offsets None outside the context (position 0 is [CLS]).
    features = Dataset.from_list(
        [
            {"example_id": "a", "offset_mapping": [None, [0, 3], [4, 7], [8, 11], None]},
            {"example_id": "a", "offset_mapping": [None, [12, 14], [15, 18], [19, 22], None]},
        ]
    )
    start = np.array([[0.0, 1.0, 0.0, 0.0, 9.0], [0.5, 0.0, 0.0, 4.0, 0.0]])
    end = np.array([[0.0, 0.0, 2.0, 0.0, 9.0], [0.5, 0.0, 0.0, 3.0, 0.0]])
    preds, nbest, _ = postprocess_qa_predictions(
        examples, features, start, end, n_best_size=3, max_answer_length=3
    )
    # Position 4 (high logits) lies outside the context and is ignored; best = window 2 "mat" (4 + 3).
    assert preds == {"a": "mat"}
    assert nbest["a"][0]["text"] == "mat" and sum(p["probability"] for p in nbest["a"]) == pytest.approx(1.0)
    # Span "the cat sat" would score 1 + 2 = 3 in window 1 but spans > max_answer_length are cut.
    preds, _, _ = postprocess_qa_predictions(
        examples, features, start, end, n_best_size=3, max_answer_length=1
    )
    assert preds == {"a": "mat"}
    # One window whose single best start (position 3, "sat") comes after its single best end (position 1,
    # "the"): with n_best_size 1 no pair is valid, so the best valid span of all is used, not "no answer".
    one = Dataset.from_list([{"example_id": "a", "offset_mapping": [None, [0, 3], [4, 7], [8, 11], None]}])
    s1, e1 = np.array([[0.0, 1.0, 0.0, 4.5, 0.0]]), np.array([[0.0, 4.0, 0.0, 0.0, 0.0]])
    preds, _, _ = postprocess_qa_predictions(examples, one, s1, e1, n_best_size=1, max_answer_length=3)
    assert preds == {"a": "the"}  # (1, 1) scores 5, beating (3, 3) at 4.5
    # v2: null score = min over windows of start[0] + end[0] = 0; best span 7 -> diff -7 -> answer.
    preds, _, diffs = postprocess_qa_predictions(examples, features, start, end, version_2_with_negative=True)
    assert preds == {"a": "mat"} and diffs["a"] == pytest.approx(-7.0)
    start2, end2 = start.copy(), end.copy()
    start2[:, 0] = end2[:, 0] = 10.0  # null score 20 beats 7 by 13
    preds, _, diffs = postprocess_qa_predictions(
        examples, features, start2, end2, version_2_with_negative=True
    )
    assert preds == {"a": ""} and diffs["a"] == pytest.approx(13.0)
    preds, _, _ = postprocess_qa_predictions(
        examples, features, start2, end2, version_2_with_negative=True, null_score_diff_threshold=20.0
    )
    assert preds == {"a": "mat"}
