"""``aeseg``: the command line (also what the Slicer module launches).

A user error prints one line, ``aeseg: error: …``, and exits with status 2;
``--debug`` shows the traceback instead. ``validate`` exits 1 when the cohort has problems.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .errors import AesegError


def _add_train(sub):
    p = sub.add_parser("train", help="train a method on a cohort → job folder (or --resume JOB)")
    p.add_argument("cohort", nargs="?", help="cohort folder")
    p.add_argument("--method", "-m", default="supervised", help="method name (see: aeseg methods)")
    p.add_argument("--out", "-o", help="new job folder")
    p.add_argument("--config", help="JSON file with method/engine/data settings")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one setting (repeatable)")
    p.add_argument("--labels", choices=["clean", "all"], help="shortcut for --set labels=… (supervised)")
    p.add_argument("--epochs", type=int, help="shortcut for --set engine.epochs=N")
    p.add_argument("--device", default="auto", help="auto (GPU when present), cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", metavar="JOB", help="resume the job in this folder from its last checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aeseg", description="Annotation-efficient segmentation (AnnotationEfficientSeg core).")
    ap.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check a cohort folder; print a summary and every problem")
    p.add_argument("cohort")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    _add_train(sub)

    p = sub.add_parser("status", help="where a job stands: progress, ETA, best validation Dice, notes")
    p.add_argument("job", nargs="+", help="job folder (several: one line each)")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("predict", help="apply a trained model to images")
    p.add_argument("--model", required=True, help="job folder (or its model/ folder)")
    p.add_argument("images", nargs="+", help="image files or DICOM folders")
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--format", default="seg.nrrd", choices=["seg.nrrd", "nii.gz", "nrrd", "mha"])
    p.add_argument("--device", default="auto")

    p = sub.add_parser("evaluate", help="predictions vs reference labels: Dice, HD95, ASSD, RAVD")
    p.add_argument("predictions", help="folder of predicted labels")
    p.add_argument("references", help="folder of reference labels")
    p.add_argument("--label-value", type=int, default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument("--csv", help="write per-case rows to this CSV")

    p = sub.add_parser("export", help="labels of a job or a cohort's refined/ → NIfTI, .seg.nrrd or nnU-Net dataset")
    p.add_argument("source", help="job folder or cohort folder")
    p.add_argument("--out", "-o", required=True)
    p.add_argument("--format", default="nifti", choices=["nifti", "seg.nrrd", "nnunet"])
    p.add_argument("--labels", choices=["refined", "pseudo_labels", "corrections"], help="which labels (default: refined for a cohort, corrections or pseudo_labels for a job)")
    p.add_argument("--cases", help="comma-separated case ids (default: all)")
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("methods", help="list methods and what each needs")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("devices", help="list compute devices")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("demo", help="build a phantom cohort, train a short run, write a job folder",
                       description="Build a seeded noisy_organ phantom cohort (3D volumes, a few clean labels, "
                                   "noisy labels at mean Dice 0.62), train a short run and write a job folder.")
    p.add_argument("--out", "-o", default="demo", help="folder for the demo cohort and job")
    p.add_argument("--method", default="mean_teacher")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--steps-per-epoch", type=int, default=15)
    p.add_argument("--device", default="auto")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        return int(COMMANDS[args.command](args) or 0)
    except AesegError as e:
        if args.debug:
            raise
        print(f"aeseg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("aeseg: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped early (``aeseg status JOB | head``)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 1


def cmd_status(args) -> int:
    from .engine.status import format_status, format_status_table, job_status

    if len(args.job) == 1:
        s = job_status(args.job[0])
        print(json.dumps(s, indent=2) if args.json else format_status(s))
        return 0
    rows: list = []
    for j in args.job:  # a folder that is not a job is one row, not the end of the listing
        try:
            rows.append((j, job_status(j)))
        except AesegError as e:
            rows.append((j, str(e)))
    if args.json:
        print(json.dumps([s if isinstance(s, dict) else {"job": j, "error": s} for j, s in rows], indent=2))
    else:
        print(format_status_table(rows))
    return 2 if any(isinstance(s, str) for _, s in rows) else 0


def cmd_validate(args) -> int:
    from .cohort.validation import format_report, validate_cohort

    rep = validate_cohort(args.cohort)
    if args.json:
        print(json.dumps(rep.to_dict(), indent=2, default=str))
    else:
        print(format_report(rep))
    return 0 if rep.ok else 1


def _train_config(args):
    from .engine.config import parse_sets, read_config_file, resolve_config

    values = read_config_file(args.config) if args.config else {}
    flat = dict(values)
    flat.update(parse_sets(args.set))
    if args.labels:
        flat["labels"] = args.labels
    if args.epochs is not None:
        flat["engine.epochs"] = args.epochs
    return resolve_config(args.method, flat, seed=args.seed, device=args.device)


def print_note(event: dict) -> None:
    """Print a job's ``note`` events (task standardization, rounds skipped, figures not
    drawn) on stderr as they happen, above a running progress bar."""
    if event.get("type") != "note":
        return
    from tqdm import tqdm

    tqdm.write(f"aeseg: note: {event.get('message', '')}", file=sys.stderr)


def cmd_train(args) -> int:
    from .engine.loop import create_job, run_job

    progress = False if args.no_progress else None
    if args.resume:
        res = run_job(args.resume, resume=True, progress_bar=progress, device=None if args.device == "auto" else args.device,
                      echo=print_note)
    else:
        if not args.cohort or not args.out:
            raise AesegError("train needs a cohort folder and --out JOB (or --resume JOB)")
        cfg = _train_config(args)
        job = create_job(args.out, args.cohort, cfg, command=["aeseg", *sys.argv[1:]])
        res = run_job(job.root, progress_bar=progress, echo=print_note)
    vd = f", best validation Dice {res.best_val_dice:.3f}" if res.best_val_dice is not None else ""
    if int(os.environ.get("RANK", "0")) == 0:
            print(f"{res.status}: {res.job} ({res.epochs_run} epochs{vd}, {res.wall_s:.0f} s)")
    return 0 if res.status == "done" else 3


def cmd_predict(args) -> int:
    from .engine.predict import predict_images

    def written(p):  # each output as it is written, so an interrupted run leaves a list
        print(p, flush=True)

    predict_images(args.model, args.images, args.out, args.format, args.device, on_written=written)
    return 0


def cmd_evaluate(args) -> int:
    from .quality.evaluate import evaluate_folders

    rows, summary = evaluate_folders(args.predictions, args.references, label_value=args.label_value)
    if args.csv:
        import csv
        import io

        from .io.atomic import write_text

        buf = io.StringIO()
        keys = list(rows[0].keys()) if rows else ["case"]
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        write_text(args.csv, buf.getvalue())
    if args.json:
        print(json.dumps({"cases": rows, "summary": summary}, indent=2, default=str))
        return 0
    metrics = ("dice", "hd95", "assd", "ravd")
    print(f"{'case':<24}" + "".join(f"{m:>10}" for m in metrics))
    for r in rows:
        print(f"{r['case']:<24}" + "".join(f"{r[m]:>10.4f}" for m in metrics))
    print(f"{'mean':<24}" + "".join(f"{_mean(summary, m):>10.4f}" for m in metrics))
    return 0


def _mean(summary: dict, m: str) -> float:
    v = summary.get(m)
    if isinstance(v, dict):
        return float(v.get("mean", float("nan")))
    return float(summary.get(f"{m}_mean", float("nan")))


def cmd_export(args) -> int:
    from .io.export import export_labels
    from .io.sources import export_items

    items = export_items(args.source, args.labels, args.cases.split(",") if args.cases else None,
                         need_images=args.format == "nnunet")
    written = export_labels(items, args.out, args.format, overwrite=args.overwrite)
    print(f"exported {len(items)} case(s) to {args.out} ({len(written)} files)")
    return 0


def cmd_methods(args) -> int:
    from .methods.registry import all_methods, config_schema

    methods = all_methods()
    if args.json:
        print(json.dumps([{"name": n, "title": c.title, "description": c.description, "needs": c.needs,
                           "config": config_schema(c.Config)} for n, c in methods.items()], indent=2, default=str))
        return 0
    for n, c in methods.items():
        print(f"{n:<18} {c.title}\n{'':<18} {c.description}\n{'':<18} needs: {c.needs}")
    return 0


def cmd_devices(args) -> int:
    from .engine.device import devices_info

    info = devices_info()
    print(json.dumps(info) if args.json else f"devices: {', '.join(info['devices'])} (default {info['default']})")
    return 0


def cmd_demo(args) -> int:
    from .data.phantoms import PhantomConfig, make_phantom_cohort
    from .engine.config import resolve_config
    from .engine.loop import create_job, run_job

    t0 = time.time()
    out = Path(args.out).resolve()
    cohort = out / "cohort"
    job_dir = out / f"job_{args.method}"
    if job_dir.exists() and any(job_dir.iterdir()):
        raise AesegError(f"{job_dir} exists; remove it or choose another --out")
    if not (cohort / "cohort.csv").exists():
        info = make_phantom_cohort(cohort, PhantomConfig(task="noisy_organ", setting="noisy", noise=0.62, seed=0))
        print(f"phantom cohort: {cohort} (noisy labels at mean Dice {info.noisy_mean_dice:.2f})")
    cfg = resolve_config(args.method, {"engine.epochs": args.epochs, "engine.steps_per_epoch": args.steps_per_epoch},
                         seed=0, device=args.device)
    job = create_job(job_dir, cohort, cfg, command=["aeseg", "demo"])
    res = run_job(job.root, echo=print_note)
    print(f"job folder: {res.job}")
    print(f"  quality.csv, pseudo_labels/, maps/, report/report.html; best validation Dice "
          f"{res.best_val_dice if res.best_val_dice is not None else float('nan'):.3f}; wall time {time.time() - t0:.0f} s")
    return 0


COMMANDS = {"validate": cmd_validate, "train": cmd_train, "predict": cmd_predict, "evaluate": cmd_evaluate,
            "export": cmd_export, "methods": cmd_methods, "devices": cmd_devices, "demo": cmd_demo,
            "status": cmd_status}
