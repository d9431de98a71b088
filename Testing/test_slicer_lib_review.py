"""The review queue built from quality.csv, reviewed marks in review.json, and case file lookup."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "AnnotationEfficientSeg"))

from AnnotationEfficientSegLib.review import (  # noqa: E402
    DIVERGING_COLORS, FRACTION_COLORS, GREY_COLORS, OTHER_COLORS, REVIEW_SEGMENTS, ReviewQueue, case_files, map_display)

QUALITY = """case,method,score,flag,rank,lqss_score,aide_corrections,note
c3,aide,0.91,false,3,0.88,0,ok
c1,aide,0.12,true,1,0.10,12,bad
c5,aide,0.70,False,,0.71,1,
c2,aide,0.35,TRUE,2,0.33,7,
c4,aide,0.55,true,4,0.50,3,
"""


@pytest.fixture
def job(tmp_path):
    d = tmp_path / "job"
    d.mkdir()
    (d / "quality.csv").write_text(QUALITY)
    return d


def test_rows_sorted_by_rank_with_typed_method_columns(job):
    q = ReviewQueue.load(job)
    assert q.cases() == ["c1", "c2", "c3", "c4", "c5"]  # c5 has no rank: last
    assert q.columns() == ["rank", "case", "score", "flag", "reviewed", "lqss_score", "aide_corrections", "note"]
    c1 = q.row("c1")
    assert c1.flag is True and c1.rank == 1 and c1.score == pytest.approx(0.12) and c1.method == "aide"
    assert c1.extra == {"lqss_score": pytest.approx(0.10), "aide_corrections": 12, "note": "bad"}
    assert q.row("c2").flag is True and q.row("c5").flag is False and q.row("c5").rank is None
    assert q.row("c5").value("note") is None
    assert q.counts() == {"cases": 5, "flagged": 3, "reviewed": 0, "flagged_left": 3}


def test_next_flagged_follows_rank_wraps_and_skips_reviewed(job):
    q = ReviewQueue.load(job)
    assert q.next_flagged(None) == "c1"
    assert q.next_flagged("c1") == "c2"
    assert q.next_flagged("c2") == "c4"
    assert q.next_flagged("c4") == "c1"  # wraps round
    assert q.next_flagged("c3") == "c4"  # from an unflagged case
    q.mark_reviewed("c2")
    assert q.next_flagged("c1") == "c4"
    q.mark_reviewed("c1")
    q.mark_reviewed("c4")
    assert q.next_flagged("c4") is None
    assert q.next_flagged("c4", include_reviewed=True) == "c1"


def test_reviewed_marks_persist_atomically(job):
    q = ReviewQueue.load(job)
    q.mark_reviewed("c2", refined_path="/cohort/refined/c2.seg.nrrd")
    data = json.loads((job / "review.json").read_text())
    assert data["reviewed"]["c2"]["refined"] == "/cohort/refined/c2.seg.nrrd"
    assert data["reviewed"]["c2"]["at"].endswith("Z")
    assert not [p for p in job.iterdir() if p.name.startswith(".tmp")]
    (job / "review.json").chmod(0o644)  # a replaced review.json keeps its permissions
    q.mark_reviewed("c2", refined_path="/cohort/refined/c2.seg.nrrd")  # the same mark again
    assert (job / "review.json").stat().st_mode & 0o777 == 0o644

    again = ReviewQueue.load(job)  # as after restarting Slicer
    assert again.row("c2").reviewed and again.row("c2").refined_path.endswith("c2.seg.nrrd")
    assert again.counts()["reviewed"] == 1 and again.counts()["flagged_left"] == 2
    again.mark_reviewed("c2", reviewed=False)
    assert not ReviewQueue.load(job).row("c2").reviewed
    with pytest.raises(KeyError):
        again.mark_reviewed("nope")


def test_marks_survive_a_new_quality_table(job):
    ReviewQueue.load(job).mark_reviewed("c4")
    (job / "quality.csv").write_text("case,method,score,flag,rank\nc4,aide,0.1,true,1\nc9,aide,0.2,true,2\n")
    q = ReviewQueue.load(job)
    assert q.cases() == ["c4", "c9"] and q.row("c4").reviewed and q.extra_columns == []
    q.mark_reviewed("c9")
    assert set(json.loads((job / "review.json").read_text())["reviewed"]) == {"c4", "c9"}


def test_empty_and_broken_tables(tmp_path):
    assert len(ReviewQueue.load(tmp_path)) == 0
    assert ReviewQueue.load(tmp_path).next_flagged(None) is None
    (tmp_path / "quality.csv").write_text("name,score\na,1\n")
    with pytest.raises(ValueError, match="case"):
        ReviewQueue.load(tmp_path)


def test_case_files_from_folders_and_from_validation(tmp_path):
    cohort = tmp_path / "cohort"
    for sub, name in [("images", "c1.nii.gz"), ("noisy_labels", "c1.nrrd"), ("images", "c2.png"), ("labels", "c2.png")]:
        (cohort / sub).mkdir(parents=True, exist_ok=True)
        (cohort / sub / name).write_bytes(b"x")
    (cohort / "refined").mkdir()
    (cohort / "refined" / "c2.seg.nrrd").write_bytes(b"x")
    job = tmp_path / "job"
    (job / "pseudo_labels").mkdir(parents=True)
    (job / "pseudo_labels" / "c1.seg.nrrd").write_bytes(b"x")
    (job / "maps" / "c1").mkdir(parents=True)
    for m in ("weights.nrrd", "residuals.nrrd", ".tmp-x.nrrd"):
        (job / "maps" / "c1" / m).write_bytes(b"x")
    (job / "job.json").write_text(json.dumps({"method": "aide", "cohort": str(cohort)}))

    f1 = case_files(job, "c1")
    assert f1.image.endswith("images/c1.nii.gz") and f1.label.endswith("noisy_labels/c1.nrrd")
    assert f1.label_kind == "noisy" and f1.pseudo_label.endswith("c1.seg.nrrd") and f1.correction is None
    assert list(f1.maps) == ["residuals", "weights"] and f1.refined is None
    f2 = case_files(job, "c2")
    assert f2.label_kind == "clean" and f2.refined.endswith("refined/c2.seg.nrrd") and f2.pseudo_label is None

    # from aeseg validate's case list (relative paths are relative to the cohort)
    cases = [{"case": "c1", "image": "images/c1.nii.gz", "label": None, "label_kind": "none", "label_value": 2}]
    f = case_files(job, "c1", cohort_cases=cases)
    assert Path(f.image) == cohort / "images" / "c1.nii.gz" and f.label is None and f.label_value == 2


def test_review_segments_have_the_contract_names_and_distinct_colours():
    names = [n for n, _ in REVIEW_SEGMENTS]
    assert names == ["Given label", "Pseudo label", "Corrected"]
    colours = [c for _, c in REVIEW_SEGMENTS]
    for i in range(3):
        for j in range(i + 1, 3):
            assert sum(abs(a - b) for a, b in zip(colours[i], colours[j])) > 0.5


def test_map_display_per_kind_of_map():
    absence = map_display("absence", -0.4, 0.5)  # grey, so the opacity slider fades image and translation
    assert absence.colors == GREY_COLORS and absence.window is None
    residual = map_display("residual", -0.1, 0.3)  # diverging, centred on zero, to the largest magnitude
    assert residual.colors == DIVERGING_COLORS and (residual.window, residual.level) == (pytest.approx(0.6), 0.0)
    assert map_display("residual_ch1", -0.2, -0.05).window == pytest.approx(0.4)
    assert map_display("flat", -0.0, 0.0).colors == FRACTION_COLORS  # no negative value: not signed
    weights = map_display("meta_weight_label", 0.0, 0.8)
    assert weights.colors == FRACTION_COLORS and (weights.window, weights.level) == (1.0, 0.5)
    disc = map_display("discriminator", 0.5, 7.0)
    assert disc.colors == OTHER_COLORS and disc.window is None
    assert map_display("probability", float("nan"), float("nan")).colors == OTHER_COLORS


def test_map_kinds_rules_load_without_the_core_requirements():
    """The one rule set both displays use, importable where numpy is not (Slicer's side)."""
    import subprocess

    code = ("import sys; sys.modules['numpy'] = None; sys.modules['torch'] = None\n"
            "from aeseg.quality.map_kinds import map_kind\n"
            "print([map_kind(*a) for a in [('Absence_image', 5.0, 9.0), ('residual', -0.1, 0.3), "
            "('weights', 0.0, 1.0), ('discriminator', 0.5, 7.0), ('absence', float('nan'), 1.0), "
            "('probability', float('nan'), float('nan')), ('flat', -0.0, 0.0)]])")
    core = Path(__file__).resolve().parents[1] / "AnnotationEfficientSeg"
    out = subprocess.run([sys.executable, "-c", code], cwd=core, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == str(["grey", "diverging", "fraction", "other", "grey", "other", "fraction"])


def test_map_display_follows_the_reports_map_style():
    """Slicer and the job report show each kind of map the same way."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("matplotlib")
    from aeseg.report.overview import map_style

    rng = np.random.default_rng(0)
    kind = {"gray": GREY_COLORS, "RdBu_r": DIVERGING_COLORS}
    for name, values in [("absence", rng.normal(0, 0.2, (16, 16))), ("residual", rng.normal(0, 0.05, (16, 16))),
                         ("aide_confidence", rng.uniform(0.1, 0.9, (16, 16))),
                         ("discriminator", rng.uniform(1.0, 4.0, (16, 16)))]:
        cmap, lo, hi = map_style(name, values)
        shown = map_display(name, float(values.min()), float(values.max()))
        if cmap in kind:
            assert shown.colors == kind[cmap], name
        elif (lo, hi) == (0.0, 1.0):
            assert shown.colors == FRACTION_COLORS and (shown.window, shown.level) == (1.0, 0.5), name
        else:
            assert shown.colors == OTHER_COLORS and shown.window is None, name
