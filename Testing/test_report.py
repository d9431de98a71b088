"""Tests for aeseg.report: curves, overview grid and the HTML report."""

from __future__ import annotations

import math
import re

import matplotlib.image as mpimg
import numpy as np
import pytest

from aeseg.io.segmentation import SEGMENT_COLOURS
from aeseg.report import OverviewCase, plot_curves, plot_overview, write_report
from aeseg.report.curves import loss_series, val_dice_series
from aeseg.report.overview import map_style

HISTORY = [
    {"epoch": 0, "phase": "train", "losses": {"loss": 1.0, "seg": 0.8}},
    {"epoch": 1, "phase": "train", "losses": {"loss": 0.7, "seg": 0.6}, "val_dice": 0.41},
    {"epoch": 2, "phase": "train", "losses": {"loss": 0.5, "seg": math.nan}, "val_dice": None},
    {"epoch": 3, "phase": "train", "losses": {"loss": 0.4, "seg": 0.3}, "val_dice": 0.73},
]


def _png(path) -> np.ndarray:
    assert path.is_file() and path.stat().st_size > 1000
    return mpimg.imread(str(path))  # (H, W, 4) floats


def _varies(img: np.ndarray) -> bool:
    return float(img[..., :3].std()) > 0.01


def _colour_pixels(img: np.ndarray, colour, tol: float = 0.12) -> int:
    return int((np.abs(img[..., :3] - np.asarray(colour)).max(axis=-1) < tol).sum())


def _case(cid: str, given: bool = True, pseudo: bool = True, subtitle: str = "") -> OverviewCase:
    yy, xx = np.mgrid[:48, :64]
    image = np.sin(xx / 5.0) + yy / 48.0
    g = np.zeros((48, 64), bool)
    p = np.zeros((48, 64), bool)
    if given:
        g[10:30, 12:40] = True
    if pseudo:
        p[14:36, 20:50] = True
    return OverviewCase(cid, image, {"Given label": g, "Pseudo label": p}, subtitle)


def test_series_skip_missing_values():
    losses = loss_series(HISTORY)
    assert losses["loss"] == [(0, 1.0), (1, 0.7), (2, 0.5), (3, 0.4)]
    assert [e for e, _ in losses["seg"]] == [0, 1, 3]  # NaN skipped
    assert val_dice_series(HISTORY) == [(1, 0.41), (3, 0.73)]
    two_phases = HISTORY + [{"epoch": 0, "phase": "stage2", "losses": {"loss": 2.0}}]
    assert "stage2: loss" in loss_series(two_phases)


def test_plot_curves(tmp_path):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    path = plot_curves(HISTORY, tmp_path / "curves.png")
    img = _png(path)
    assert img.shape[:2] == (400, 1100)
    assert _varies(img)
    assert plt.get_fignums() == before  # no pyplot figures left open
    # an empty history still gives an image
    empty = _png(plot_curves([], tmp_path / "empty.png"))
    assert empty.shape[:2] == (400, 1100)


def test_plot_overview_grid_and_contours(tmp_path):
    one = _png(plot_overview([_case("c1")], tmp_path / "one.png", "One"))
    five = _png(plot_overview([_case(f"c{i}") for i in range(5)], tmp_path / "five.png", "Five"))
    assert _varies(one) and _varies(five)
    assert one.shape[1] == 300  # one column of 3 inches at 100 dpi
    assert five.shape[1] == 1200 and five.shape[0] > one.shape[0]  # 4 columns, 2 rows
    # Contours drawn in the segment colours: more coloured pixels than with empty masks
    # (the legend alone still shows both colours).
    empty = _png(plot_overview([_case("c1", given=False, pseudo=False)], tmp_path / "empty.png", "One"))
    assert empty.shape == one.shape
    for name in ("Given label", "Pseudo label"):
        colour = SEGMENT_COLOURS[name]
        assert _colour_pixels(one, colour) > _colour_pixels(empty, colour) + 50
    # a mask filling the whole image still gets drawn, and no cases at all still works
    full = _case("full")
    full.masks = {"Given label": np.ones((48, 64), bool)}
    assert _colour_pixels(_png(plot_overview([full], tmp_path / "full.png")), SEGMENT_COLOURS["Given label"]) > 100
    assert _varies(_png(plot_overview([], tmp_path / "none.png", "Nothing")))
    # a colour given by name replaces the segment colour of that mask
    red = (1.0, 0.0, 0.0)
    assert _colour_pixels(one, red) < 20
    recoloured = _png(plot_overview([_case("c1")], tmp_path / "red.png", "One", colours={"Given label": red}))
    assert _colour_pixels(recoloured, red) > 50
    assert _colour_pixels(recoloured, SEGMENT_COLOURS["Given label"]) < _colour_pixels(one, SEGMENT_COLOURS["Given label"]) - 50


def test_plot_overview_rejects_mismatched_mask(tmp_path):
    case = _case("bad")
    case.masks["Given label"] = np.zeros((10, 10), bool)
    with pytest.raises(ValueError, match="bad.*Given label"):
        plot_overview([case], tmp_path / "bad.png")


def test_map_style_per_kind_of_map():
    rng = np.random.default_rng(0)
    texture = rng.normal(0.2, 0.1, (32, 32))
    cmap, lo, hi = map_style("absence", texture)  # image-like: grey over its percentiles
    assert cmap == "gray" and (lo, hi) == pytest.approx(tuple(np.percentile(texture, [1, 99])))
    residual = rng.normal(0.0, 0.02, (32, 32))
    residual[10:14, 10:14] = 0.4  # a bright lesion the translation removed
    cmap, lo, hi = map_style("residual", residual)  # signed: diverging, centred on zero, to the largest value
    assert cmap == "RdBu_r" and hi == pytest.approx(0.4) and lo == -hi
    assert map_style("aide_confidence", rng.uniform(0.2, 0.9, (8, 8))) == ("viridis", 0.0, 1.0)
    disc = rng.uniform(2.0, 5.0, (16, 16))
    cmap, lo, hi = map_style("discriminator", disc)
    assert cmap == "viridis" and (lo, hi) == pytest.approx(tuple(np.percentile(disc, [1, 99])))
    assert map_style("constant", np.full((4, 4), 3.0))[1:] == (3.0, 4.0)  # never an empty range
    assert map_style("empty", np.full((4, 4), np.nan)) == ("viridis", 0.0, 1.0)


def test_plot_overview_draws_each_cases_maps_beside_it(tmp_path):
    residual = np.zeros((48, 64))
    residual[20:30, 20:30] = 0.5  # red on the diverging scale
    residual[0, 0] = -0.5
    cases = [_case("a"), _case("b")]
    for c in cases:
        c.maps = {"absence": c.image_2d * 0.5, "residual": residual}
    two = _png(plot_overview(cases, tmp_path / "maps.png", "Maps"))
    plain = _png(plot_overview([_case("a"), _case("b")], tmp_path / "plain.png", "Plain"))
    assert two.shape[1] == 900  # image + two maps per row
    assert plain.shape[1] == 600 and two.shape[0] > plain.shape[0]  # one case per row instead of two per row
    red = (0.6, 0.0, 0.12)  # the dark end of RdBu_r
    assert _colour_pixels(two, red, tol=0.15) > 100 and _colour_pixels(plain, red, tol=0.15) == 0
    # a case without maps beside one with maps: its map panels stay empty; more maps than
    # MAX_MAPS are cut; a map of the wrong shape is an error naming the case and the map
    cases[1].maps = {}
    cases[0].maps = {f"m{i}": residual for i in range(5)}
    assert _png(plot_overview(cases, tmp_path / "cut.png")).shape[1] == 1200
    cases[0].maps = {"residual": np.zeros((10, 10))}
    with pytest.raises(ValueError, match="a.*residual"):
        plot_overview(cases, tmp_path / "bad.png")


def test_write_report(tmp_path):
    rows = [
        {"case": "case_b", "method": "meta", "score": 0.9, "flag": False, "rank": 3},
        {"case": "case<script>&", "method": "meta", "score": 0.12, "flag": True, "rank": 1},
        {"case": "case_c", "method": "meta", "score": 0.3, "flag": "true", "rank": "2"},
        {"case": "case_a", "method": "meta", "score": 0.95, "flag": "false", "rank": 4},
    ]
    summary = {"method": "meta_weighting", "cohort": "/data/cohort", "epochs": 4, "wall_time_s": 3725,
               "device": "cpu", "seed": 7}
    cases = [_case(r["case"], subtitle=f"score {r['score']}") for r in rows[:2]]
    out = tmp_path / "report"
    paths = write_report(out, summary, HISTORY, cases, rows)
    assert sorted(p.name for p in paths) == ["loss_curves.png", "overview.png", "report.html"]
    assert sorted(p.name for p in out.iterdir()) == ["loss_curves.png", "overview.png", "report.html"]  # no temps
    for name in ("loss_curves.png", "overview.png"):
        assert _varies(_png(out / name))
    html = (out / "report.html").read_text(encoding="utf-8")

    # images by relative path
    assert 'src="loss_curves.png"' in html and 'src="overview.png"' in html
    # job summary: values, best val Dice from the history, wall time formatted
    for text in ("meta_weighting", "/data/cohort", "cpu", "0.73", "1:02:05", "seed"):
        assert text in html
    # escaping
    assert "case&lt;script&gt;&amp;" in html
    assert "<script>" not in html
    # rank order, flagged rows highlighted
    order = [html.index(c) for c in ("case&lt;script&gt;&amp;", "case_c", "case_b", "case_a")]
    assert order == sorted(order)
    flagged = re.findall(r'<tr class="flagged">(.*?)</tr>', html)
    assert len(flagged) == 2
    assert "case&lt;script&gt;&amp;" in flagged[0] and "case_c" in flagged[1]
    assert "2 flagged" in html


def test_report_summary_key_spellings(tmp_path):
    """The engine's spellings map onto the standard rows; nested values are shown as JSON."""
    summary = {"method": "supervised", "best val Dice": "0.8125", "training time (s)": "125.4",
               "device": "cpu", "config": {"lr": 0.001, "note": "<b>"}}
    write_report(tmp_path, summary, HISTORY, [_case("c1")], [])
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    rows = dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", html))
    assert rows["Best validation Dice"] == "0.8125"  # given value wins over the history's 0.73
    assert rows["Wall time"] == "0:02:05"
    assert rows["Cohort"] == "n/a" and rows["Epochs"] == "n/a"
    assert rows["config"] == "{&quot;lr&quot;: 0.001, &quot;note&quot;: &quot;&lt;b&gt;&quot;}"
    assert "training time (s)" not in rows and "best val Dice" not in rows
    assert "No quality table" in html


def test_correction_points_place_each_correction_on_its_case_row_and_network():
    from aeseg.report import CaseCorrections
    from aeseg.report.corrections import correction_points

    cases = [CaseCorrections("b", flagged=True, dice_change=0.4), CaseCorrections("a", dice_change=0.1)]
    history = [  # as read back from corrections.csv: strings
        {"case": "a", "epoch": "20", "network": "1", "dice_new_vs_given": "0.8"},
        {"case": "b", "epoch": "20", "network": "2", "dice_new_vs_given": "0.55"},
        {"case": "b", "epoch": 30, "network": 1, "dice_new_vs_given": ""},  # unknown Dice: NaN (grey)
        {"case": "c", "epoch": 30, "network": 1, "dice_new_vs_given": 0.9},  # not among the cases
        {"case": "a", "epoch": None, "network": 1, "dice_new_vs_given": 0.9},  # no epoch
    ]
    pts = correction_points(history, cases)
    assert pts[2] == [(20.0, 0, 0.55)]
    assert pts[1][0] == (20.0, 1, 0.8) and pts[1][1][:2] == (30.0, 0) and math.isnan(pts[1][1][2])
    assert len(pts[1]) == 2


def test_report_shows_a_methods_own_figure_and_refuses_a_missing_one(tmp_path):
    from aeseg.report import CaseCorrections, ReportFigure, plot_corrections

    out = tmp_path / "report"
    out.mkdir()
    cases = [CaseCorrections(f"case_{i}", flagged=i < 2, dice_change=0.1 * i) for i in range(6)]
    history = [{"case": f"case_{i}", "epoch": e, "network": 1 + (e % 2), "dice_new_vs_given": 0.9 - 0.1 * i}
               for i in range(4) for e in (20, 21, 30)]
    small = _png(plot_corrections(history, cases[:2], tmp_path / "small.png"))
    png = _png(plot_corrections(history, cases, out / "corrections.png"))
    assert _varies(png) and png.shape[0] > small.shape[0]  # one row per case
    assert _varies(_png(plot_corrections([], cases, tmp_path / "none.png")))  # "no corrections"
    fig = ReportFigure("Label corrections", "corrections.png", "corrections <by epoch>")
    paths = write_report(out, {"method": "aide"}, HISTORY, [_case("c1")], [], figures=[fig])
    assert [p.name for p in paths] == ["loss_curves.png", "overview.png", "corrections.png", "report.html"]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert '<h2>Label corrections</h2>\n<img src="corrections.png" alt="corrections &lt;by epoch&gt;">' in html
    assert html.index("overview.png") < html.index("corrections.png") < html.index("<h2>Quality</h2>")
    before = (out / "report.html").read_text(encoding="utf-8")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    with pytest.raises(FileNotFoundError, match="gone.png"):
        write_report(out, {"method": "aide"}, HISTORY, [_case("c1")], [],
                     figures=[ReportFigure("Gone", "gone.png")])
    assert (out / "report.html").read_text(encoding="utf-8") == before  # nothing was rewritten
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_lqss_figure_splits_kept_and_rejected_scores_and_draws_the_rounds(tmp_path):
    from aeseg.report import RoundStat, plot_lqss
    from aeseg.report.lqss import score_bins

    assert np.allclose(score_bins([0.2, 0.4, float("nan")], n=2), [0.2, 0.3, 0.4])  # NaN left out
    assert np.allclose(score_bins([0.5, 0.5], n=1), [0.0, 1.0])  # all equal: one bin around them
    scores = [0.1, 0.2, 0.5, 0.6, 0.7, 0.8]
    rounds = [RoundStat(0, 0.6), RoundStat(1, 0.7, 0.8), RoundStat(2, None, 0.95)]
    full = _png(plot_lqss(scores, [s >= 0.5 for s in scores], 0.5, rounds, tmp_path / "lqss.png"))
    bare = _png(plot_lqss(scores, [True] * 6, None, [], tmp_path / "bare.png"))
    assert _varies(full) and full.shape == bare.shape and not np.array_equal(full, bare)
    with pytest.raises(ValueError, match="6 scores but 5"):
        plot_lqss(scores, [True] * 5, 0.5, rounds, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_case_scatter_keeps_finite_points_and_marks_the_flagged(tmp_path):
    from aeseg.report import CasePoint, plot_case_scatter
    from aeseg.report.case_scatter import finite_points

    pts = [CasePoint("a", 1.2, 0.8, 0.9), CasePoint("b", 0.4, 1.6, 0.3, flagged=True),
           CasePoint("never", math.nan, 1.0, None), CasePoint("c", 1.0, 1.0, None)]
    assert [p.case for p in finite_points(pts)] == ["a", "b", "c"]
    marked = _png(plot_case_scatter(pts, tmp_path / "w.png", "label", "pseudo", "Weights"))
    plain = _png(plot_case_scatter([CasePoint(p.case, p.x, p.y, p.score) for p in pts], tmp_path / "p.png",
                                   "label", "pseudo", "Weights"))
    assert _varies(marked) and marked.shape == plain.shape and not np.array_equal(marked, plain)
    red = (marked[..., 0] > 0.75) & (marked[..., 1] < 0.3) & (marked[..., 2] < 0.3)
    assert red.sum() > red.size * 1e-4 and not ((plain[..., 0] > 0.75) & (plain[..., 1] < 0.3)
                                                 & (plain[..., 2] < 0.3)).any()  # the ring and the name
    assert _varies(_png(plot_case_scatter([], tmp_path / "none.png", "x", "y", "Weights")))
