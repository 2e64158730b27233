"""Average the probabilities of several runs trained on the same split, saved as one run:

python -m genre_tagger.ensemble models/mpnet-frozen models/genre-classifier --output models/ensemble

The members must tag the same genres in the same order and must have been trained on exactly the same
split (identical split.csv rows): a member that trained on another member's test rows would make the
ensemble's test score dishonest. The new run folder holds, for each member, only what predicting
needs (members/<i>/: config.json, tokenizer.json, thresholds.json, train_config.json, onnx.json and the
member's default ONNX model, with their own manifest.json), ensemble.json (members, weights and the
calibration of the averaged probabilities), the labels (config.json), thresholds.json (the default
decisions, 0.3 on the averaged uncalibrated probabilities kept per genre on the calibrated scale, and the
tuned ones; calibration and thresholds come from the members' shared validation rows, never the test
rows), metrics.json (the shared test rows, scored from the averaged
probabilities predict.py computes), the shared split.csv, manifest.json, and a zip beside it.
predict.py, load_tagger and serve.py open it like any run; Hugging Face's auto classes refuse it.
"""

import platform
import shutil
import time
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from genre_tagger import UserError
from genre_tagger import calibration as gcal
from genre_tagger.calibration import DEFAULT_METHOD, METHODS
from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.common import note, write_json
from genre_tagger.data import read_split
from genre_tagger.metrics import (
    DEFAULT_THRESHOLD,
    multilabel_metrics,
    parse_goals,
    per_label_report,
    tune_thresholds,
    unreached_goals_note,
)
from genre_tagger.run import (
    CALIBRATION_FILE,
    ENSEMBLE_FILE,
    ENSEMBLE_MODEL_TYPE,
    ZIP_LEFT_OUT,
    Run,
    zip_path_of,
)
from genre_tagger.save import (
    publish_folder,
    remove_own,
    replace_problem,
    staging_folder,
    write_manifest,
    zip_folder,
    zip_replace_problem,
)
from genre_tagger.settings import MAX_ENSEMBLE_WEIGHT, bounded_float, goals_problem, probability

MEMBER_FILES = ("config.json", "tokenizer.json", "thresholds.json", "train_config.json", CALIBRATION_FILE)
SPLIT_COLUMNS = ["split", "labels", "text"]


def build_parser():
    p = ArgumentParser(
        prog="python -m genre_tagger.ensemble",
        description="Average the probabilities of runs trained on the same split; save the ensemble as one run.",
        epilog="predict.py --model NAME (or NAME.zip) then runs every member on its ONNX export and averages.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="two or more run folders or .zip files written by train.py")
    p.add_argument("--output", required=True, help="ensemble run folder to write; a .zip of it is written beside")
    p.add_argument(
        "--weights",
        type=bounded_float(0, MAX_ENSEMBLE_WEIGHT, low_open=True),
        nargs="+",
        default=None,
        help=f"one weight per run, above 0 and at most {MAX_ENSEMBLE_WEIGHT}, in the same order; normalised to sum to 1 "
        "(default: equal weights)",
    )
    p.add_argument(
        "--threshold",
        type=probability(),
        default=DEFAULT_THRESHOLD,
        help="default decision point on the averaged uncalibrated probabilities, 0-1 exclusive; kept per genre on "
        "the calibrated scale in thresholds.json (default: %(default)s)",
    )
    p.add_argument(
        "--calibrate",
        choices=METHODS,
        default=DEFAULT_METHOD,
        help="calibration of the averaged probabilities, fitted on the members' shared validation rows "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--threshold-goal",
        nargs="+",
        default=["f1"],
        metavar="GOAL",
        help="what the per-genre tuned thresholds aim for, as train.py's --threshold-goal (default: f1)",
    )
    return p


def settings_problem(args):
    if len(args.runs) < 2:
        return "give at least two runs to average"
    if args.weights is not None and len(args.weights) != len(args.runs):
        return f"--weights needs one weight per run ({len(args.runs)}), not {len(args.weights)}"
    if problem := goals_problem(args.threshold_goal):
        return f"--threshold-goal: {problem}"
    output = Path(args.output)
    if output.name in ("", ".", ".."):
        return f"--output must name a run folder, not {args.output!r}"
    if any(Path(run).resolve() in (output.resolve(), zip_path_of(output).resolve()) for run in args.runs):
        return "--output must not be one of the runs being averaged"
    if len({Path(run).resolve() for run in args.runs}) < len(args.runs):
        return "the same run is given twice; give each run once (use --weights to weigh one more)"
    if any(output.resolve().is_relative_to(Path(run).resolve()) for run in args.runs if Path(run).is_dir()):
        return "--output must not be inside one of the runs being averaged"
    if problem := replace_problem(output):
        return f"--output: {problem}; choose another folder so nothing of yours is replaced"
    if problem := zip_replace_problem(zip_path_of(output)):
        return f"--output: {problem}; move it or choose another --output so it is not overwritten"
    return None


def split_rows(run):
    """The run's split.csv as a sorted frame of (split, labels, text): what must be identical across members."""
    if not run.has("split.csv"):
        raise UserError(
            f"{run.origin} has no split.csv, so its training rows cannot be checked; re-create it with train.py"
        )
    split = read_split(run.read("split.csv"))
    if not set(SPLIT_COLUMNS) <= set(split.columns):
        raise UserError(
            f"{run.origin}: split.csv lacks the columns {', '.join(SPLIT_COLUMNS)}; re-create it with train.py"
        )
    return split[SPLIT_COLUMNS].sort_values(SPLIT_COLUMNS).reset_index(drop=True)


def check_members(opened):
    """Labels, split and ONNX export of every member against the first; a UserError naming what differs."""
    first = opened[0]
    split = split_rows(first)
    models = {}
    for run in opened:
        if run.is_ensemble:
            raise UserError(f"{run.origin} is itself an ensemble; give the runs it was built from instead")
        if run.onnx is None:
            raise UserError(
                f"{run.origin} has no ONNX export, which the ensemble runs; add one: python -m genre_tagger.export RUN"
            )
        model_sha256 = run.sha256(run.onnx_file()[1])
        if model_sha256 in models:
            raise UserError(
                f"{run.origin} and {models[model_sha256]} are the same run; give each run once "
                "(use --weights to weigh one more)"
            )
        models[model_sha256] = run.origin
        if run is first:
            continue
        if run.labels != first.labels:
            raise UserError(
                f"{run.origin} tags other genres (or the same in another order) than {first.origin}; "
                "train every member on the same data"
            )
        if not split_rows(run).equals(split):
            raise UserError(
                f"{run.origin} was trained on another split than {first.origin} (split.csv differs): a member that "
                "saw another's test rows would make the test score dishonest; train every member with the same "
                "--data, --test-data, fractions and --seed (or --split-seed)"
            )
    return first.labels


def copy_member(run, target):
    """Copy what predicting needs from a verified member into `target`, with its own manifest."""
    variant, model_file = run.onnx_file()
    source = run.verified_path(model_file)
    target.mkdir(parents=True)
    for name in MEMBER_FILES:
        if run.has(name):  # a run saved before calibration has no calibration.json
            (target / name).write_bytes(run.read(name))
    shutil.copyfile(source, target / model_file)
    kept = {key: value for key, value in run.onnx.items() if key not in ("files", ZIP_LEFT_OUT)}
    write_json(target / "onnx.json", {**kept, "files": {variant: model_file}})
    write_manifest(target)
    return model_file


def truth_of(rows, labels):
    return np.array([[label in row.split(",") for label in labels] for row in rows["labels"]], dtype=np.int64)


def main(argv=None):
    args = build_parser().parse_args(argv)
    if problem := settings_problem(args):
        raise UserError(problem)
    weights = args.weights or [1.0] * len(args.runs)
    weights = [w / sum(weights) for w in weights]
    output = Path(args.output)
    started = time.time()
    with ExitStack() as stack:
        opened = [stack.enter_context(Run.open(run)) for run in args.runs]
        labels = check_members(opened)  # before anything is written
        if problem := goals_problem(args.threshold_goal, labels):
            raise UserError(problem)
        staged = staging_folder(output)
        stack.callback(remove_own, staged)
        members = []
        for i, (run, weight) in enumerate(zip(opened, weights)):
            model_file = copy_member(run, staged / "members" / str(i))
            train_config = run.train_config
            members.append(
                {
                    "folder": f"members/{i}",
                    "weight": weight,
                    "source": str(args.runs[i]),
                    "base_model": train_config.get("base_model"),
                    "onnx_model": model_file,
                    "settings": train_config.get("settings"),
                }
            )
        (staged / "split.csv").write_bytes(opened[0].read("split.csv"))
        write_json(staged / ENSEMBLE_FILE, {"format": 1, "members": members})
        write_json(
            staged / "config.json",
            {
                "model_type": ENSEMBLE_MODEL_TYPE,
                "id2label": dict(enumerate(labels)),
                "label2id": {label: i for i, label in enumerate(labels)},
                "problem_type": "multi_label_classification",
                "members": len(members),
            },
        )
        # Placeholder thresholds so the staged folder opens; the tuned ones are added below.
        write_json(staged / "thresholds.json", {"default": args.threshold})
        settings = {
            "threshold": args.threshold,
            "calibrate": args.calibrate,
            "threshold_goal": args.threshold_goal,
            "weights": weights,
            "runs": [str(r) for r in args.runs],
        }
        train_config = {
            "settings": settings,
            "base_model": "ensemble: " + " + ".join(str(m["base_model"]) for m in members),
            "labels": labels,
            "ensemble": True,
            "versions": {"python": platform.python_version()},
        }
        write_json(staged / "train_config.json", train_config)
        write_manifest(staged)

        from genre_tagger.tagger import EnsembleTagger

        tagger = EnsembleTagger(stack.enter_context(Run.open(staged)))
        split = read_split(staged / "split.csv")
        validation, test = split[split["split"] == "validation"], split[split["split"] == "test"]
        if validation.empty or test.empty:
            raise UserError(f"{args.runs[0]}: split.csv has no validation or no test rows to score the ensemble on")
        Y_val, Y_test = truth_of(validation, labels), truth_of(test, labels)
        raw_val = tagger.uncalibrated_probabilities(validation["text"].tolist())
        raw_test = tagger.uncalibrated_probabilities(test["text"].tolist())
        offsets = sum(
            weight * np.log([run.train_config.get("pos_weight", {}).get(g, 1.0) for g in labels])
            for run, weight in zip(opened, weights)
        )
        calibration = gcal.fit(gcal.logits_of(raw_val), Y_val, args.calibrate, offsets=offsets)
        P_val, P_test = (gcal.apply_to_probabilities(raw, calibration) for raw in (raw_val, raw_test))
        default_thresholds = gcal.map_threshold(args.threshold, calibration)
        goals = parse_goals(args.threshold_goal)
        tuned = tune_thresholds(Y_val, P_val, labels, goals=goals, fallback=default_thresholds)
        if message := unreached_goals_note(tuned, len(validation)):
            note(message)
        member_test = [  # each member alone, at its own default decisions
            multilabel_metrics(Y_test, member.probabilities(test["text"].tolist()), run.thresholds_for("default"))
            for member, run in zip(tagger.members, opened)
        ]
        evaluation = {
            "validation": multilabel_metrics(Y_val, P_val, default_thresholds),
            "test": multilabel_metrics(Y_test, P_test, default_thresholds),
            "test_tuned_global": multilabel_metrics(Y_test, P_test, tuned["global"]),
            "test_tuned_per_genre": multilabel_metrics(Y_test, P_test, [tuned["per_label"][g] for g in labels]),
        }
        spec = {
            "format": 1,
            "members": members,
            "calibration": {**calibration, "fitted_on": f"validation rows ({len(validation)})"},
        }
        write_json(staged / ENSEMBLE_FILE, spec)
        write_json(
            staged / "thresholds.json",
            {
                "default": args.threshold,
                "default_per_label": dict(zip(labels, map(float, default_thresholds))),
                "scale": f"calibrated ({args.calibrate})" if args.calibrate != "none" else "uncalibrated",
                **tuned,
                "tuned_on": f"the members' shared validation rows ({len(validation)}), ensemble probabilities",
            },
        )
        write_json(
            staged / "metrics.json",
            {
                "threshold": args.threshold,
                "tuned_thresholds": tuned,
                "calibration": {
                    "method": args.calibrate,
                    **gcal.before_and_after(
                        {"validation": (Y_val, gcal.logits_of(raw_val)), "test": (Y_test, gcal.logits_of(raw_test))},
                        calibration,
                        labels,
                    ),
                },
                "base_model": train_config["base_model"],
                "scored_with": "predict.py's probabilities: each member's default ONNX model, weighted mean, calibrated",
                **evaluation,
                "members_test": member_test,
                "per_genre_test": per_label_report(Y_test, P_test, labels, default_thresholds),
            },
        )
        train_config["split_sizes"] = {"validation": len(validation), "test": len(test)}
        train_config["seconds"] = {"until_save": round(time.time() - started, 1)}
        write_json(staged / "train_config.json", train_config)
        write_manifest(staged)
        publish_folder(staged, output)
    zip_path = zip_folder(output, zip_path_of(output))
    scores = evaluation["test"]
    print(
        f"ensemble of {len(members)} runs (weights {', '.join(f'{w:.3g}' for w in weights)}) on {len(test)} test rows, "
        f"default decisions ({args.threshold} uncalibrated): macro-F1 {scores['macro_f1']:.4f}, micro-F1 {scores['micro_f1']:.4f}, "
        f"ROC-AUC {scores['macro_roc_auc']:.4f} (members' macro-F1: "
        + ", ".join(f"{m['macro_f1']:.4f}" for m in member_test)
        + ")"
    )
    print(f"saved {output}/ and {zip_path}")


if __name__ == "__main__":
    run_main(main)
