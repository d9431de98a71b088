"""The benchmark harness's own logic: gap covered, reuse of finished runs, derived cohorts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

harness = pytest.importorskip("harness")

from aeseg.cohort.manifest import load_cohort  # noqa: E402
from aeseg.cohort.reading import read_label  # noqa: E402
from aeseg.engine.config import resolve_config  # noqa: E402


def test_gap_covered_against_hand_computed_values():
    assert harness.gap(0.75, 0.70, 0.80) == pytest.approx(0.5)
    assert harness.gap(0.65, 0.70, 0.80) == pytest.approx(-0.5)
    assert harness.gap(0.9, 0.7, 0.7) is None  # no gap to cover


def _fake_finished_job(job: Path, cohort: Path, cfg, method: str = "supervised") -> None:
    job.mkdir(parents=True)
    (job / "pseudo_labels").mkdir()
    (job / "job.json").write_text(json.dumps({"method": method, "cohort": str(cohort), "seed": cfg.seed,
                                              "config": cfg.to_dict()}))
    events = [{"type": "start"}, {"type": "epoch", "epoch": 1}, {"type": "epoch", "epoch": 2},
              {"type": "done", "best_val_dice": 0.5, "wall_s": 12.0}]
    (job / "events.jsonl").write_text("\n".join(json.dumps(e) for e in events) + "\n")


@pytest.fixture
def finished(tmp_path):
    """(cohort, config, job folder) of a fake finished ``supervised`` run."""
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    cfg = resolve_config("supervised", {"engine.epochs": 2, "labels": "all"}, seed=0)
    job = tmp_path / "jobs" / "run"
    _fake_finished_job(job, cohort, cfg)
    return cohort, cfg, job


def test_reuse_only_a_finished_job_with_the_same_cohort_and_config(finished, tmp_path):
    cohort, cfg, job = finished

    done = harness._finished(job, "supervised", cohort, cfg)
    assert done == {"best_val_dice": 0.5, "wall_s": 12.0, "epochs": 2}
    # the CPU thread count changes the floating-point reductions and so the result: no match
    assert harness._finished(job, "supervised", cohort, resolve_config(
        "supervised", {"engine.epochs": 2, "labels": "all", "engine.threads": 1}, seed=0)) is None
    # anything that changes what is computed does not match
    assert harness._finished(job, "supervised", cohort, resolve_config(
        "supervised", {"engine.epochs": 3, "labels": "all"}, seed=0)) is None
    assert harness._finished(job, "supervised", cohort, resolve_config(
        "supervised", {"engine.epochs": 2, "labels": "all"}, seed=1)) is None
    assert harness._finished(job, "supervised", tmp_path / "other", cfg) is None
    assert harness._finished(job, "mean_teacher", cohort, cfg) is None
    # an unfinished job (no done event) is never reused
    lines = (job / "events.jsonl").read_text().splitlines()[:-1]
    (job / "events.jsonl").write_text("\n".join(lines) + "\n")
    assert harness._finished(job, "supervised", cohort, cfg) is None


def test_oracle_cohort_reads_the_truth_whatever_its_label_value(tmp_path):
    """lesion_pa stores lesions as 255 in PNG truth masks: the oracle cohort must not
    restrict its labels to value 1 (it would train on empty masks)."""
    bench = harness.Bench("supervised", "lesion_pa", workdir=tmp_path)
    bench.plan.phantom = {"size": 32, "n_train": 6, "n_val": 2, "n_test": 2}
    bench.build_cohort()
    oracle = load_cohort(bench.oracle_cohort())
    present = [c for c in oracle.cases if c.split == "train" and c.presence == "present"]
    assert present, "the phantom has present training images"
    for c in present:
        lab, _ = read_label(c.label, c.label_value)
        truth, _ = read_label(c.truth)
        assert np.count_nonzero(lab) == np.count_nonzero(truth) > 0


def test_a_relative_workdir_gives_derived_cohorts_a_truth_link_that_resolves(tmp_path, monkeypatch):
    """``run.py --workdir`` takes a relative path: the oracle cohort's ``truth`` link must
    point at the cohort's truth, also when a dangling link from an earlier run is there."""
    monkeypatch.chdir(tmp_path)
    bench = harness.Bench("supervised", "lesion_pa", workdir=Path("rel"))
    bench.plan.phantom = {"size": 32, "n_train": 4, "n_val": 2, "n_test": 2}
    bench.build_cohort()
    truth = bench.oracle_cohort() / "truth"
    assert sorted(p.name for p in truth.iterdir()) == sorted(p.name for p in (bench.workdir / "cohort" / "truth").iterdir())
    truth.unlink()
    truth.symlink_to(Path("rel") / "nowhere", target_is_directory=True)  # dangling
    assert any((bench.oracle_cohort() / "truth").iterdir())


def test_ablation_rows_are_chosen_by_name_and_the_same_network_bounds_train_where_they_should(tmp_path):
    """presence_absence's seg_only rows: the codec with the segmentation loss alone, on the
    annotated images (the method's cohort) and on every true mask (the oracle cohort)."""
    from aeseg.methods.presence_absence import loss_weights

    bench = harness.Bench("presence_absence", "lesion_pa", workdir=tmp_path, setting="1pct")
    bench.plan.phantom = {"size": 32, "n_train": 4, "n_val": 2, "n_test": 2}
    cohort = bench.build_cohort()
    rows = bench.ablation_rows(("seg_only_all", "seg_only"), cohort)
    assert [r[0] for r in rows] == ["ablation_seg_only", "ablation_seg_only_all"]  # the plan's order
    assert rows[0][3] == cohort and rows[1][3] == bench.workdir / "cohort_oracle"
    for _, method, overrides, _ in rows:
        cfg = resolve_config(method, overrides)
        assert method == "presence_absence" and loss_weights(cfg.method_config) == {"seg": 1.0}
    assert [r[0] for r in bench.ablation_rows(True, cohort)] == [f"ablation_{v.name}" for v in bench.plan.ablations]
    assert bench.ablation_rows(False, cohort) == []
    with pytest.raises(SystemExit, match="no ablation row nope .*seg_only"):
        bench.ablation_rows(("nope",), cohort)


def test_reuse_accepts_a_field_added_since_at_its_default_only(finished):
    cohort, cfg, job = finished
    meta = json.loads((job / "job.json").read_text())
    del meta["config"]["method"]["labels"]  # as if the field did not exist when the job ran
    (job / "job.json").write_text(json.dumps(meta))
    default_labels = resolve_config("supervised", {}).method_config.labels
    same = resolve_config("supervised", {"engine.epochs": 2, "labels": default_labels}, seed=0)
    other = resolve_config("supervised", {"engine.epochs": 2, "labels": "clean" if default_labels != "clean" else "all"},
                           seed=0)
    assert harness._finished(job, "supervised", cohort, same) is not None
    assert harness._finished(job, "supervised", cohort, other) is None


def test_a_phantom_recorded_before_a_setting_existed_is_reused_only_while_it_is_unset():
    recorded = {"task": "ellipse_us", "seed": 0, "size": 64}  # written before us_omit existed
    assert harness._same_phantom(recorded, {**recorded, "us_omit": None})
    assert not harness._same_phantom(recorded, {**recorded, "us_omit": "fluid"})
    assert not harness._same_phantom(recorded, {**recorded, "size": 48, "us_omit": None})
    assert harness._same_phantom({**recorded, "us_omit": "fluid"}, {**recorded, "us_omit": "fluid"})
    assert not harness._same_phantom({**recorded, "us_omit": "fluid"}, {**recorded, "us_omit": None})


def test_prefetch_trains_every_seed_side_by_side_and_run_picks_the_jobs_up(tmp_path):
    bench = harness.Bench("supervised", "noisy_organ", workdir=tmp_path, train_seeds=(0, 1), jobs=2)
    bench.plan.phantom = {"size": 32, "n_slices": 4, "n_train": 4, "n_val": 1, "n_test": 1}
    bench.build_cohort()
    tiny = {"engine.epochs": 1, "engine.steps_per_epoch": 1, "engine.batch_size": 2, "data.size": 16,
            "engine.threads": 1, "labels": "all"}
    bench.prefetch([("row", "supervised", tiny, None)])
    jobs = bench.workdir / "jobs"
    assert bench._fresh == {jobs / "row", jobs / "row_s1"}
    for j in bench._fresh:
        assert json.loads((j / "job.json").read_text())["seed"] == (0 if j.name == "row" else 1)
    r = bench.run("row", "supervised", tiny)
    assert not r.reused and len(r.seed_means) == 2  # trained in this invocation, one mean per seed
    assert all((j / "pseudo_labels").is_dir() for j in bench._fresh)


def test_job_reference_overrides_resolve_to_the_same_seeds_job(tmp_path):
    bench = harness.Bench("supervised", "noisy_organ", workdir=tmp_path, train_seeds=(3, 4))
    jobs = bench.workdir / "jobs"
    assert bench._values({"stage1_from": "@job:method"}, 3)["stage1_from"] == str(jobs / "method")
    assert bench._values({"stage1_from": "@job:method"}, 4)["stage1_from"] == str(jobs / "method_s4")
    assert bench._values({"stage1_from": "/elsewhere"}, 4)["stage1_from"] == "/elsewhere"


def test_set_values_go_to_the_method_and_its_ablations_only():
    import run as run_script

    plan = harness.Plan(overrides={"rounds": 4}, ablations=[harness.Variant("a", {"dgcc": False}),
                                                            harness.Variant("b", {"x": 1}, method="supervised")])
    sets = {k: run_script._value(v) for k, v in {"history_pool": "50", "lr": "0.5", "flag": "true", "name": "abc"}.items()}
    assert sets == {"history_pool": 50, "lr": 0.5, "flag": True, "name": "abc"}
    harness.apply_sets(plan, "shape_prior_gan", {"history_pool": 50})
    assert plan.overrides == {"rounds": 4, "history_pool": 50}
    assert plan.ablations[0].overrides == {"dgcc": False, "history_pool": 50}
    assert plan.ablations[1].overrides == {"x": 1}  # another method's row keeps its settings


def test_epochs_go_to_every_row():
    plan = harness.Plan(overrides={"engine.epochs": 90}, baseline_overrides={"data.size": 48},
                        ablations=[harness.Variant("a", {"x": 1}), harness.Variant("b", {}, method="mean_teacher")])
    harness.apply_epochs(plan, 540)
    rows = [plan.overrides, plan.baseline_overrides] + [v.overrides for v in plan.ablations]
    assert [r["engine.epochs"] for r in rows] == [540] * 4
    assert plan.baseline_overrides["data.size"] == 48 and plan.ablations[0].overrides["x"] == 1


def test_set_all_goes_to_every_row_baselines_included():
    plan = harness.Plan(overrides={"views": 2}, baseline_overrides={"data.size": 48},
                        ablations=[harness.Variant("a", {"x": 1}), harness.Variant("b", {}, method="mean_teacher")])
    harness.apply_sets_all(plan, {"train_rotation": 60})
    rows = [plan.overrides, plan.baseline_overrides] + [v.overrides for v in plan.ablations]
    assert [r["train_rotation"] for r in rows] == [60] * 4
    assert plan.overrides["views"] == 2 and plan.baseline_overrides["data.size"] == 48


def test_supervised_reference_step_is_timed_where_there_are_labels(tmp_path):
    """A task without training labels (ellipse_us) times the supervised reference on the
    oracle cohort: on its own cohort every supervised batch is empty and the step returns
    at once, which made steptime.py report a GAN step 961× a supervised one."""
    bench = harness.Bench("shape_prior_gan", "ellipse_us", workdir=tmp_path)
    bench.plan.phantom = {"size": 32, "n_train": 4, "n_val": 1, "n_test": 1}
    bench.build_cohort()
    assert bench.reference_cohort() == bench.oracle_cohort()
    ref = load_cohort(bench.reference_cohort())
    assert any(c.split == "train" and c.label_kind == "clean" for c in ref.cases)
    labelled = harness.Bench("supervised", "noisy_organ", workdir=tmp_path / "organ")
    labelled.plan.phantom = {"size": 32, "n_slices": 4, "n_train": 4, "n_val": 1, "n_test": 1}
    labelled.build_cohort()
    assert labelled.reference_cohort() == labelled.cohort_dir


@pytest.mark.parametrize("method,task", [("aide", "noisy_organ"), ("meta_reweight", "noisy_organ"),
                                         ("presence_absence", "lesion_pa"), ("mean_teacher", "noisy_organ"),
                                         ("shape_prior_gan", "ellipse_us"), ("shape_prior_gan", "organ_ct")])
def test_every_plan_has_every_profile(method, task):
    """``run.py --profile`` accepts each harness profile for each plan (the shape_prior_gan
    plan once had sizes for quick and full only, and ``--profile long`` died of a KeyError)."""
    for profile in harness.PROFILES:
        plan = harness.load_plan(method, profile, task, None)
        assert isinstance(plan, harness.Plan)
        if method == "shape_prior_gan":
            assert plan.overrides["gan_epochs"] > 0 and plan.overrides["round_epochs"] > 0


def test_phantom_settings_go_on_top_of_the_plans_and_unknown_ones_are_refused(tmp_path, capsys):
    import run as run_script

    bench = harness.Bench("aide", "noisy_organ", setting="semi", workdir=tmp_path)
    assert bench.plan.phantom == {"n_clean": 1}  # the plan's semi setting
    harness.apply_phantom(bench.plan, {"n_clean": 4, "n_train": 30})
    kw = bench._phantom_kwargs()
    assert kw["n_clean"] == 4 and kw["n_train"] == 30 and kw["setting"] == "semi"
    for bad in ("bogus=1", "setting=noisy", "seed=3"):
        with pytest.raises(SystemExit) as e:
            run_script.main(["--method", "aide", "--task", "noisy_organ", "--phantom", bad, "--out", str(tmp_path / "r")])
        assert e.value.code == 2
        assert f"--phantom {bad.split('=')[0]}: not one of" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_triage_is_measured_for_every_training_seed(tmp_path):
    """Spearman of each seed's scores against the true Dice of the given labels, and their mean."""
    from aeseg.quality.metrics import dice

    bench = harness.Bench("aide", "noisy_organ", noise="mid", workdir=tmp_path, train_seeds=(0, 1, 2))
    bench.plan.phantom = {**bench.plan.phantom, "size": 32, "n_slices": 2, "n_train": 8, "n_val": 1, "n_test": 1}
    bench.build_cohort()
    cases = [c for c in load_cohort(bench.cohort_dir).cases if c.split == "train" and c.label_kind == "noisy"]
    assert len(cases) >= 3
    truth = {c.case_id: dice(read_label(c.label, c.label_value)[0] > 0, read_label(c.truth)[0] > 0) for c in cases}
    jobs = bench.workdir / "jobs"
    for seed, sign in ((0, 1.0), (1, -1.0)):  # seed 2 has no quality.csv (a job that failed)
        job = jobs / bench.job_name("method", seed)
        job.mkdir(parents=True)
        rows = ["case,method,score,flag,rank"] + [f"{c},aide,{sign * d},false,{i + 1}"
                                                   for i, (c, d) in enumerate(truth.items())]
        (job / "quality.csv").write_text("\n".join(rows) + "\n")
    run = harness.RunResult("method", "aide", jobs / "method", {}, {}, None, 0.0, 1)
    tri = bench.triage(run)
    assert tri["n"] == len(cases) and tri["spearman"] == pytest.approx(1.0)
    assert tri["spearman_seeds"] == [pytest.approx(1.0), pytest.approx(-1.0), None]
    assert tri["spearman_mean"] == pytest.approx(0.0)


def test_gap_interval_is_paired_over_seeds_and_needs_three():
    table = pytest.importorskip("table")

    def result(method, noisy, oracle):
        return {"gap_reference": "noisy_baseline", "gap_covered": 0.5,
                "runs": {"method": {"seed_means": method}, "noisy_baseline": {"seed_means": noisy},
                         "oracle": {"seed_means": oracle}}}

    # every seed covers exactly half its own gap, though the seeds differ a lot: paired draws
    # keep each seed's rows together, so every draw gives 0.5
    lo, hi = table.gap_interval(result([0.75, 0.55, 0.65], [0.7, 0.5, 0.6], [0.8, 0.6, 0.7]))
    assert lo == pytest.approx(0.5) and hi == pytest.approx(0.5)
    # seeds that disagree (0 % and 100 %) give an interval around the pooled 50 %
    lo, hi = table.gap_interval(result([0.7, 0.8, 0.7, 0.8], [0.7, 0.7, 0.7, 0.7], [0.8, 0.8, 0.8, 0.8]))
    assert lo < 0.5 < hi and lo >= 0.0 and hi <= 1.0
    assert table.gap_interval(result([0.7, 0.8], [0.7, 0.7], [0.8, 0.8])) is None  # two seeds: no interval
    assert "(" not in table.gap_cell({**result([0.7, 0.8], [0.7, 0.7], [0.8, 0.8]),
                                      "test_dice": {"noisy_baseline": {"mean": 0.7}, "oracle": {"mean": 0.8}}})


def test_compare_pairs_two_settings_seed_by_seed_and_refuses_unpaired_results(tmp_path, capsys):
    compare = pytest.importorskip("compare")

    def result(method, **extra):
        return {"task": "noisy_organ", "setting": "noisy", "noise": "mid", "profile": "quick", "seed": 0,
                "train_seeds": list(range(len(method))), "phantom_sets": {},
                "runs": {"method": {"test_dice": {"mean": sum(method) / len(method)}, "seed_means": method}},
                "ablation_runs": {"one_network": {"test_dice": {"mean": 0.5}, "seed_means": [0.5] * len(method)}},
                **extra}

    a, b = result([0.70, 0.60, 0.80, 0.75]), result([0.72, 0.62, 0.81, 0.74])
    d = compare.paired_difference(a, b)
    assert d["diff"] == pytest.approx([0.02, 0.02, 0.01, -0.01]) and d["mean"] == pytest.approx(0.01)
    assert d["b_wins"] == 3 and -0.01 - 1e-9 <= d["interval"][0] < 0.01 < d["interval"][1] <= 0.02 + 1e-9
    assert compare.paired_difference(a, b, row="ablation_one_network")["mean"] == pytest.approx(0.0)
    within = compare.paired_difference(a, a, row="method", against="ablation_one_network")  # two rows of one file
    assert within["diff"] == pytest.approx([0.2, 0.1, 0.3, 0.25]) and within["b_wins"] == 4
    assert within["row"] == "method against ablation_one_network"
    older = {k: v for k, v in b.items() if k != "phantom_sets"}  # files from before --phantom pair too
    assert compare.paired_difference(a, older)["seeds"] == [0, 1, 2, 3]
    for other, says in ((result([0.7] * 4, noise="high"), "differ in 'noise'"),
                        (result([0.7] * 4, host_note="another host"), "differ in 'host_note'"),
                        ({**result([0.7] * 4), "train_seeds": [7, 8, 9, 10]}, "share no training seed")):
        with pytest.raises(compare.CompareError, match=says):
            compare.paired_difference(a, other)
    with pytest.raises(compare.CompareError, match="no row 'oracle'"):
        compare.paired_difference(a, b, row="oracle")
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    assert compare.main([str(pa), str(pb)]) == 0
    assert "mean +0.010" in capsys.readouterr().out
    assert compare.main([str(pa), str(tmp_path / "missing.json")]) == 2
    assert compare.main([str(pa), "--against", "ablation_one_network"]) == 0
    assert "mean +0.212" in capsys.readouterr().out


def test_aide_corrections_quality_scores_the_final_corrected_labels_against_the_truth(tmp_path):
    """The AIDE plan's ``corrections``: mean Dice with the truth of the given and of the
    corrected labels, and the corrected area ÷ the true area, over the noisy cases a job
    wrote a correction for."""
    from aeseg.io.segmentation import Segment, write_seg_nrrd
    from aeseg.quality.metrics import dice

    aide_plan = pytest.importorskip("plans.aide")
    bench = harness.Bench("aide", "noisy_organ", noise="mid", workdir=tmp_path, train_seeds=(0, 1))
    bench.plan.phantom = {**bench.plan.phantom, "size": 32, "n_slices": 2, "n_train": 8, "n_val": 1, "n_test": 1}
    bench.build_cohort()
    cases = [c for c in load_cohort(bench.cohort_dir).cases if c.split == "train" and c.label_kind == "noisy"]
    assert len(cases) >= 3
    perfect, copied, dilated = (tmp_path / name / "corrections" for name in ("perfect", "copied", "dilated"))
    for d in (perfect, copied, dilated):
        d.mkdir(parents=True)
    given = []
    for c in cases:
        truth, geo = read_label(c.truth)
        label = read_label(c.label, c.label_value)[0]
        given.append(dice(label > 0, truth > 0))
        write_seg_nrrd(perfect / f"{c.case_id}.seg.nrrd", [Segment("Corrected", truth > 0)], geo)
        write_seg_nrrd(copied / f"{c.case_id}.seg.nrrd", [Segment("Corrected", label > 0)], geo)
    q = aide_plan.corrections_quality(bench, perfect.parent)
    assert q["n"] == len(cases) and q["given_dice"] == pytest.approx(np.mean(given), abs=1e-4)
    assert q["corrected_dice"] == pytest.approx(1.0) and q["area_ratio"] == pytest.approx(1.0)
    q = aide_plan.corrections_quality(bench, copied.parent)
    assert q["corrected_dice"] == pytest.approx(q["given_dice"], abs=1e-4) and q["corrected_dice"] < 1.0
    # one case only, corrected to twice its true area (the truth plus as many outside pixels)
    c = cases[0]
    truth, geo = read_label(c.truth)
    grown = truth > 0
    outside = np.flatnonzero(~grown)[: int(grown.sum())]
    grown.flat[outside] = True
    write_seg_nrrd(dilated / f"{c.case_id}.seg.nrrd", [Segment("Corrected", grown)], geo)
    q = aide_plan.corrections_quality(bench, dilated.parent)
    assert q["n"] == 1 and q["area_ratio"] == pytest.approx(2.0) and q["corrected_dice"] == pytest.approx(2 / 3, abs=1e-4)
    assert aide_plan.corrections_quality(bench, tmp_path / "nothing") is None


def test_aide_paired_average_dice_averages_model_i_with_model_i_plus_one():
    """The AIDE plan's ensemble measure: two models' probabilities averaged, then > 0.5;
    model i pairs with model i + 1 and the last with the first."""
    aide_plan = pytest.importorskip("plans.aide")
    truth = {"a": np.zeros((1, 4, 4), bool)}
    truth["a"][0, :2, :2] = True  # 4 pixels
    inside = truth["a"].astype(float)
    extra = np.zeros((1, 4, 4))
    extra[0, 3, :] = 1.0  # 4 pixels outside the truth
    probs = [{"a": 0.9 * inside + 0.8 * extra},  # alone: 8 pixels marked, Dice 2·4/12
             {"a": 0.9 * inside + 0.1 * extra},  # alone: exact
             {"a": 0.3 * inside}]  # alone: nothing marked
    # (0, 1): extra at 0.45 -> dropped, truth at 0.9 -> exact; (1, 2): truth at 0.6 -> exact;
    # (2, 0): truth at 0.6 kept, extra at 0.4 dropped -> exact
    assert aide_plan.paired_average_dice(probs, truth) == pytest.approx([1.0, 1.0, 1.0])
    probs[1] = {"a": 0.9 * inside + 0.4 * extra}  # (0, 1): extra at 0.6 -> kept, Dice 2·4/12
    got = aide_plan.paired_average_dice(probs, truth)
    assert got == pytest.approx([2 * 4 / 12, 1.0, 1.0])


def test_reuse_resumes_an_interrupted_job_instead_of_starting_again(tiny_cohort, tmp_path):
    """With ``--reuse`` a job of the same configuration that was stopped before its end goes
    on from its checkpoint (no epoch lost or repeated); a folder holding another
    configuration is trained afresh."""
    from aeseg.engine.loop import create_job, run_job

    values = {"engine.epochs": 3, "engine.steps_per_epoch": 2, "engine.batch_size": 2, "engine.progress_interval": 0,
              "data.size": 32, "features": 8, "depth": 3, "labels": "all"}
    cfg = resolve_config("supervised", values, seed=0, device="auto")
    job = tmp_path / "jobs" / "run"
    create_job(job, tiny_cohort, cfg)

    def stop_after_epoch_1(event):
        if event.get("type") == "epoch" and event.get("epoch") == 1:
            (job / "cancel").touch()

    assert run_job(job, progress_bar=False, echo=stop_after_epoch_1).status == "cancelled"
    assert harness._finished(job, "supervised", tiny_cohort, cfg) is None
    (job / "marker").touch()  # stands for everything the first part wrote
    wall, best, epochs = harness._train_job(job, tiny_cohort, "supervised", values, 0, resume=True)
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2, 3]
    assert (job / "marker").exists() and harness._finished(job, "supervised", tiny_cohort, cfg) is not None
    assert best == pytest.approx(max(e["val_dice"] for e in events if e["type"] == "epoch"), abs=1e-5)
    # another configuration in the folder: trained afresh even with resume
    harness._train_job(job, tiny_cohort, "supervised", {**values, "engine.epochs": 2}, 0, resume=True)
    events = [json.loads(line) for line in (job / "events.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in events if e["type"] == "epoch"] == [1, 2] and not (job / "marker").exists()


_PARENT = '''
import sys
import harness, probe_task
with harness.worker_pool(1) as ex:  # the pool Bench.prefetch trains in
    ex.submit(probe_task.run, sys.argv[1]).result()
'''
_TASK = '''
import os, signal, sys, time
from pathlib import Path
import harness
def run(folder):
    with harness.job_running():
        _run(folder)
def _run(folder):
    folder = Path(folder)
    def cancel(signum, frame):
        (folder / "cancelled").write_text(str(os.getpid()))
        sys.exit(0)
    signal.signal(signal.SIGTERM, cancel)
    (folder / "started").write_text(str(os.getpid()))
    time.sleep(120)
'''


def _until(cond, timeout: float) -> bool:
    """Whether ``cond()`` becomes true within ``timeout`` s (polled every 0.1 s)."""
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def _gone(pid: int) -> bool:
    """Whether process ``pid`` has exited (a zombie counts as exited)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals, /proc")
def test_prefetch_workers_cancel_their_job_when_the_harness_is_killed(tmp_path):
    """A worker of the parallel harness gets SIGTERM (the engine's cancellation) once its
    parent dies, instead of training on as an orphan."""
    import os
    import signal
    import subprocess

    (tmp_path / "probe_task.py").write_text(_TASK)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(harness.__file__).parent),
                                                         os.environ.get("PYTHONPATH", "")])}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path)], env=env)
    try:
        assert _until((tmp_path / "started").exists, 120), "the worker never started"
        assert not (tmp_path / "cancelled").exists()
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        assert _until((tmp_path / "cancelled").exists, 20), "the orphaned worker was not cancelled"
        worker = int((tmp_path / "started").read_text())
        assert int((tmp_path / "cancelled").read_text()) == worker
        assert _until(lambda: _gone(worker), 20), "the orphaned worker did not exit after its job"
    finally:
        if parent.poll() is None:
            parent.kill()
