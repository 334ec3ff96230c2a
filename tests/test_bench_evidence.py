"""The evidence benchmark's statistics and report (the training itself runs in benchmarks/, not here)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import bench_evidence as ev  # noqa: E402

LEVELS = ["0.7", "2:4"]


def _oneshot(dense, l7, nm, loss=None):
    rows = {"dense": dense, "0.7": l7, "2:4": nm}
    return {
        lv: {"accuracy": a, **({"loss": loss[i]} if loss else {}), "target_sparsity": 0.0}
        for i, (lv, a) in enumerate(rows.items())
    }


def fake_result():
    """Three seeds with hand-picked numbers: CrAM's 70 % accuracies are 0.9, 0.8, 0.7; AdamW's 0.5, 0.6, 0.4."""
    runs = []
    for seed, (c7, a7) in enumerate(((0.9, 0.5), (0.8, 0.6), (0.7, 0.4))):
        runs.append(
            {
                "seed": seed,
                "downstream": {
                    "adamw": {"oneshot": _oneshot(0.95, a7, 0.94)},
                    "cram": {"oneshot": _oneshot(0.96, c7, 0.95)},
                },
                "upstream": {
                    "adamw": {"oneshot": _oneshot(0.30, 0.10, 0.25, loss=[4.0, 6.0, 4.5])},
                    "cram": {"oneshot": _oneshot(0.29, 0.20, 0.27, loss=[4.1, 5.0, 4.3])},
                },
                "transfer": {
                    key: {
                        "dense": {"accuracy": 0.95},
                        "0.7": {"accuracy": 0.93 + 0.01 * seed},
                        "2:4": {"accuracy": 0.94},
                    }
                    for key in ("adamw", "cram")
                },
            }
        )
    config = vars(
        ev.parse_args(["--seeds", "0", "1", "2", "--levels", *LEVELS, "--finetune_levels", *LEVELS])
    )
    return {
        "kind": "evidence",
        "command": "python benchmarks/bench_evidence.py",
        "config": config,
        "data": {"bbc": {"train": 1781, "test": 444}, "austen": {"train_blocks": 10, "eval_blocks": 2}},
        "runs": runs,
        "seconds": 60.0,
        "timing": {"seconds": 60.0},
    }


def test_spread_is_mean_sample_std_min_max():
    s = ev.spread([0.9, 0.8, 0.7])
    assert s["mean"] == pytest.approx(0.8) and s["std"] == pytest.approx(0.1)
    assert (s["min"], s["max"], s["n"]) == (0.7, 0.9, 3)
    assert ev.spread([0.5])["std"] == 0.0


def test_aggregate_over_seeds_per_experiment_method_level():
    agg = ev.aggregate(fake_result())
    assert agg["downstream"]["cram"]["0.7"]["accuracy"]["mean"] == pytest.approx(0.8)
    assert agg["downstream"]["adamw"]["0.7"]["accuracy"]["min"] == pytest.approx(0.4)
    assert agg["upstream"]["cram"]["0.7"]["loss"]["mean"] == pytest.approx(5.0)
    assert agg["upstream"]["adamw"]["dense"]["accuracy"]["std"] == pytest.approx(0.0)
    assert agg["transfer"]["cram"]["0.7"]["accuracy"]["mean"] == pytest.approx(0.94)
    assert agg["transfer"]["adamw"]["0.7"]["accuracy"]["max"] == pytest.approx(0.95)


def test_differences_are_paired_seed_by_seed():
    # Seed by seed 0.4, 0.2, 0.3: mean 0.3, std 0.1 — not the difference of the two unpaired spreads.
    diffs = ev.paired_differences(fake_result(), "downstream", "0.7", "accuracy")
    assert diffs == pytest.approx([0.4, 0.2, 0.3])


def test_report_tables_and_plot_written_and_rebuilt_from_json(tmp_path):
    result = fake_result()
    table = ev.write_report(result, str(tmp_path))
    assert "| 0.7 | 0.500 ± 0.100 | 0.800 ± 0.100 | 30.0 ± 10.0 pts |" in table
    assert "| CrAM+ Multi | 0.950 ± 0.000 | 0.940 ± 0.010 | 0.940 ± 0.000 |" in table
    assert "| 0.7 | 6.00 ± 0.00 | 5.00 ± 0.00 |" in table
    assert (tmp_path / "evidence.png").stat().st_size > 10_000
    again = ev.main(["--from_json", str(tmp_path / "evidence.json"), "--output_dir", str(tmp_path / "re")])
    assert (tmp_path / "re" / "evidence.md").read_text() == table
    assert json.loads((tmp_path / "evidence.json").read_text())["runs"] == again["runs"]


def test_sweep_report(tmp_path):
    points = []
    for p in ev.sweep_points(ev.parse_args([])):
        points.append(
            {
                **p,
                "adamw": _oneshot(0.95, 0.6, 0.9),
                "cram": _oneshot(0.95, 0.9, 0.93),
                "seconds": {"adamw": 1.0, "cram": 2.0},
            }
        )
    config = vars(ev.parse_args(["--levels", *LEVELS]))
    result = {
        "kind": "sweep",
        "command": "c",
        "config": config,
        "seed": 0,
        "points": points,
        "seconds": 120.0,
    }
    table = ev.write_report(result, str(tmp_path))
    assert table.count("0.600 → 0.900") == len(points)
    assert {p["name"] for p in points} >= {"defaults", "lr 5e-5", "rho 0.2"}
    assert (tmp_path / "regime_sweep.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--levels", "0.7", "3:2"], "3:2"),
        (["--cram_rho", "-1"], "--cram_rho"),
        (["--train_steps", "0"], "--train_steps"),
    ],
)
def test_bad_arguments_refused_before_any_work(argv, message, capsys):
    with pytest.raises((SystemExit, ValueError)) as err:
        ev.parse_args(argv)
    assert message in str(err.value) + capsys.readouterr().err
