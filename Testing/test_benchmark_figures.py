"""``benchmarks/figures.py``: rows, targets and the PNG of one benchmark result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import figures  # noqa: E402


def _result(method="aide", ablations=None, ref="noisy_baseline", task="noisy_organ", setting=None, noise="mid") -> dict:
    td = {"clean_only": {"mean": 0.55, "sd": 0.1, "n": 10}, "noisy_baseline": {"mean": 0.6, "sd": 0.1, "n": 10},
          "oracle": {"mean": 0.8, "sd": 0.05, "n": 10}, "method": {"mean": 0.7, "sd": 0.08, "n": 10}}
    return {"method": method, "task": task, "setting": setting, "noise": noise, "profile": "quick",
            "train_seeds": [0, 1], "test_dice": td, "gap_reference": ref, "gap_covered": 0.5,
            "ablations": ablations or {}, "runs": {"method": {"seed_means": [0.68, 0.72]}}}


def test_rows_run_from_the_baselines_through_the_method_and_ablations_to_the_oracle():
    result = _result(ablations={"one_network": {"mean": 0.65, "sd": 0.1, "n": 10}, "skipped": {"mean": None}})
    rows = figures.rows_of(result)
    assert [(r.name, r.kind) for r in rows] == [
        ("noisy baseline", "baseline"), ("supervised-only", "baseline"), ("aide", "method"),
        ("↳ one_network", "ablation"), ("oracle", "oracle")]
    assert rows[2].seed_means == [0.68, 0.72] and rows[0].seed_means == [] and rows[3].seed_means == []
    # an ablation row's seeds come from ablation_runs (result files before session 15 have none)
    result["ablation_runs"] = {"one_network": {"seed_means": [0.6, 0.7]}}
    assert figures.rows_of(result)[3].seed_means == [0.6, 0.7]


def test_targets_against_hand_computed_values():
    # 60 % of the gap from the noisy baseline (0.6) to the oracle (0.8): 0.6 + 0.6 * 0.2
    assert figures.target_dice(_result("aide")) == pytest.approx(0.72)
    # presence_absence: 50 % of the gap from supervised-only (0.55) to the oracle: 0.675
    pa = _result("presence_absence", ref="clean_only", task="lesion_pa", setting="1pct", noise=None)
    assert figures.target_dice(pa) == pytest.approx(0.675)
    # shape_prior_gan: within 0.05 of the oracle
    spg = _result("shape_prior_gan", ref="oracle", task="ellipse_us", noise=None)
    assert figures.target_dice(spg) == pytest.approx(0.75)
    assert figures.target_dice(_result("supervised")) is None
    assert "target ≥ 60 %" in figures.headline(_result("aide"))
    assert figures.headline(spg).startswith("oracle − method 0.100 (target ≤ 0.05)")
    pa["extra"] = {"gap_covered_same_network": {"method": 0.625}}
    assert figures.headline(pa) == "gap covered 50 %, 62 % between the codec's own bounds (target ≥ 50 %)"


def test_a_target_is_drawn_only_where_the_issue_sets_it():
    """AIDE's and MLB-Seg's 60 % is at the middle noise level, presence/absence's 50 % at 1 %,
    shape_prior_gan's at ellipse_us: elsewhere no target line and no target in the title."""
    for result in (_result("aide", noise="high"), _result("aide", setting="semi", noise=None),
                   _result("meta_reweight", noise="low"), _result("presence_absence", ref="clean_only",
                                                                   task="lesion_pa", setting="5pct", noise=None),
                   _result("shape_prior_gan", ref="oracle", task="organ_ct", noise=None)):
        assert figures.target_dice(result) is None
        assert "target" not in figures.headline(result) and figures.headline(result)
    assert figures.headline(_result("aide", noise="high")) == "gap covered 50 %"
    organ = _result("shape_prior_gan", ref="oracle", task="organ_ct", noise=None)
    assert figures.headline(organ) == "oracle − method 0.100"  # the distance still, with no target
    assert figures.target_dice(_result("meta_reweight")) == pytest.approx(0.72)


def test_draw_writes_a_png_that_grows_with_the_rows(tmp_path):
    few = Image.open(figures.draw(_result(), tmp_path / "few.png"))
    many = Image.open(figures.draw(_result(ablations={f"a{i}": {"mean": 0.5, "sd": 0.1} for i in range(4)}),
                                   tmp_path / "many.png"))
    assert few.format == "PNG" and many.height > few.height and few.width == many.width
    assert np.asarray(few.convert("L")).std() > 0  # something was drawn
    with pytest.raises(ValueError, match="no test Dice rows"):
        figures.draw({"method": "x", "test_dice": {}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_main_draws_every_result_file_and_says_when_there_is_none(tmp_path, capsys):
    (tmp_path / "res").mkdir()
    assert figures.main([str(tmp_path / "res"), "--out", str(tmp_path / "figs")]) == 1
    assert "no result files" in capsys.readouterr().err
    (tmp_path / "res" / "aide_noisy_organ_mid.json").write_text(json.dumps(_result()))
    (tmp_path / "res" / "notes.json").write_text("{}")  # not a result: skipped
    assert figures.main([str(tmp_path / "res"), "--out", str(tmp_path / "figs")]) == 0
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["aide_noisy_organ_mid.png"]


def test_the_title_names_every_setting_beyond_the_plans():
    result = _result("aide", setting="semi", noise=None)
    result.update(train_seeds=[0, 1, 2], seed=1, phantom_sets={"n_clean": 4}, sets={"views": 4},
                  sets_all={"train_rotation": 60})
    assert figures.title_of(result) == ("aide on noisy_organ\nsemi (3 seeds), phantom seed 1, phantom n_clean=4, "
                                        "train_rotation=60, views=4")
    # a long setting (a note) is wrapped to lines of at most the given width, no word lost
    result["note"] = "a note that runs on " * 12
    lines = figures.title_of(result, width=60).split("\n")[1:]
    assert len(lines) > 2 and max(map(len, lines)) <= 60
    from table import setting_text

    assert " ".join(lines).split() == setting_text(result).split()
