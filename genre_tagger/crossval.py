"""K-fold stratified cross-validation of train.py's recipe: how far to trust a single test number.

`python train.py --folds K` calls cross_validate after its data and model steps;
`python -m genre_tagger.crossval --folds K` (train.py's flags) runs the same on its own. Each fold is
tested once; validation is carved from the other folds. Each fold's model is calibrated on its own
validation rows (`--calibrate`), never on the rows it is tested on, and scored at train.py's default
decisions; the calibration figures are given per fold and for the out-of-fold probabilities of every
row pooled. Nothing is saved but `<output>-cv<K>.json`.
"""

import sys
from pathlib import Path

import numpy as np

from genre_tagger import UserError, distributed, save
from genre_tagger import data as gdata
from genre_tagger import metrics as gmetrics
from genre_tagger.baseline import baseline_probabilities, fit_baseline
from genre_tagger.common import write_json
from genre_tagger.settings import build_train_parser, train_settings_problem

SUMMARY_KEYS = ("macro_f1", "micro_f1", "macro_roc_auc", "hamming_loss")
CALIBRATION_KEYS = ("micro_ece", "macro_ece", "brier", "log_loss")


def cross_validate(args, movies, binarizer, base_path, base_model, tokenizer, exclude=None, relabel=None):
    """Train and test one model per fold, print mean ± std per metric and write `<output>-cv<K>.json`.

    `movies` are the rows as read; `exclude` and `relabel` (data.read_corrections) change each fold's own
    training rows only, as train.py's are: validation and test rows keep their labels.
    """
    from genre_tagger import calibration as gcal
    from genre_tagger.modeling import positive_weights, predict_logits
    from genre_tagger.training import train_model

    texts, labels = movies["text"].tolist(), list(binarizer.classes_)
    Y = gdata.encode_labels(binarizer, movies["labels"])
    fold_results = []
    out_of_fold = {"raw": np.zeros(Y.shape), "after": np.zeros(Y.shape), "rows": []}  # logits, every row once
    for fold, (rest, held_out) in enumerate(gdata.stratified_folds(Y, args.folds, args.split_seed)):
        inner_train, inner_val = gdata.stratified_split(Y[rest], args.val_fraction, args.split_seed)
        tr, va = rest[inner_train], rest[inner_val]
        Y_train, corrections = Y[tr], {}
        if exclude or relabel:
            corrected, tr, corrections = gdata.apply_corrections(movies, tr, exclude, relabel)
            Y_train = gdata.encode_labels(binarizer, corrected["labels"].iloc[tr])
        print(f"fold {fold + 1}/{args.folds}: train {len(tr)} | validation {len(va)} | test {len(held_out)}")
        checkpoints = save.start_checkpoints(
            Path(args.checkpoint_dir) / f"fold-{fold}", args, labels, base_model, distributed.world_size(),
            write=distributed.is_main_process(),
        )  # fmt: skip
        model, _ = train_model(
            args, base_path, labels, tokenizer, [texts[i] for i in tr], Y_train, [texts[i] for i in va], Y[va],
            checkpoints,
        )  # fmt: skip
        if not distributed.is_main_process():
            continue  # under torchrun the main process alone tests each fold and writes
        test_fold = [texts[i] for i in held_out]
        offsets = np.log(positive_weights(Y_train, args.pos_weight).astype(np.float64))
        raw_val = predict_logits(model, tokenizer, [texts[i] for i in va], args.max_length)
        raw_test = predict_logits(model, tokenizer, test_fold, args.max_length)
        calibration = gcal.fit(raw_val, Y[va], args.calibrate, offsets=offsets)
        out_of_fold["raw"][held_out], out_of_fold["after"][held_out] = raw_test, gcal.apply(raw_test, calibration)
        out_of_fold["rows"].extend(held_out)
        reports = gcal.before_and_after({"test": (Y[held_out], raw_test)}, calibration, labels)
        result = {
            "model": gmetrics.multilabel_metrics(
                Y[held_out],
                gcal.sigmoid(out_of_fold["after"][held_out]),
                gcal.map_threshold(args.threshold, calibration),
            ),
            "calibration": {
                stage: {k: reports[f"test_{stage}"][k] for k in CALIBRATION_KEYS} for stage in ("before", "after")
            },
        }
        if corrections:
            result["corrections"] = corrections
        baseline_fold = fit_baseline([texts[i] for i in tr], Y_train, args.seed)
        result["baseline"] = gmetrics.multilabel_metrics(
            Y[held_out], baseline_probabilities(baseline_fold, test_fold), args.threshold
        )
        fold_results.append(result)
        save.remove_checkpoints(checkpoints)
    distributed.leave_unless_main()
    summary = {}
    for who in ("model", "baseline"):
        summary[who] = {
            key: {
                "mean": float(np.mean([r[who][key] for r in fold_results])),
                "std": float(np.std([r[who][key] for r in fold_results])),
            }
            for key in SUMMARY_KEYS
        }
        print(who.ljust(9), "  ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f}" for k, v in summary[who].items()))
    rows = np.array(out_of_fold["rows"])
    # Each fold has its own map, so the pooled figures compare the logits before and the calibrated ones after.
    pooled = {
        "out_of_fold_before": gcal.calibration_report(Y[rows], gcal.sigmoid(out_of_fold["raw"][rows]), labels),
        "out_of_fold_after": gcal.calibration_report(Y[rows], gcal.sigmoid(out_of_fold["after"][rows]), labels),
    }
    summary["calibration_out_of_fold"] = {
        stage: {k: pooled[f"out_of_fold_{stage}"][k] for k in CALIBRATION_KEYS} for stage in ("before", "after")
    }
    print(f"calibration ({args.calibrate}), every row out-of-fold: {gcal.format_change(pooled, 'out_of_fold')}")
    cv_path = save.cross_validation_path(args)
    cv_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(
        cv_path,
        {
            "config": vars(args),
            "base_model": base_model,
            "threshold": args.threshold,
            "folds": fold_results,
            "summary": summary,
        },
        replace=False,  # checked before training (save.paths_problem); a file created since then is kept too
    )
    print(f"cross-validation results written to {cv_path}")
    return cv_path


def main(argv=None):
    """The same flags as train.py; --folds K (2 to 20) is required."""
    args = build_train_parser("K-fold cross-validation of train.py's recipe; saves no model.").parse_args(argv)
    if problem := train_settings_problem(args):
        raise UserError(problem)
    if not args.folds:
        raise UserError("give --folds K (2 to 20): the number of folds")
    if args.split_seed is None:
        args.split_seed = args.seed
    if problem := save.paths_problem(args):
        raise UserError(problem)
    for folder in save.checkpoint_folders(args):
        if problem := save.checkpoint_problem(folder):
            raise UserError(problem)
    if Path(args.data) == gdata.DEFAULT_DATA_PATH:
        gdata.ensure_dataset(args.data)
    movies, cleaning = gdata.load_labelled_csv(args.data, args.text_column, args.label_column)
    # As train.py: checked against every row read, before anything trains; applied to each fold's training rows.
    exclude = gdata.read_corrections(args.exclude_rows, movies, "--exclude-rows") if args.exclude_rows else None
    relabel = gdata.read_corrections(args.relabel, movies, "--relabel", with_genres=True) if args.relabel else None
    if args.limit:
        movies = movies.head(args.limit).reset_index(drop=True)
    if len(movies) < 50:
        raise UserError(f"{args.data} has {len(movies)} usable rows; cross-validation needs at least 50")
    distributed.setup(args.threads)  # torch loads here: wrong data or corrections were refused without it
    print(f"{args.data}: {cleaning}")
    binarizer = gdata.fit_binarizer(movies["labels"])

    from transformers import AutoTokenizer

    from genre_tagger.modeling import resolve_base_model

    base_path, base_model, fallback_note = resolve_base_model(args.model)
    if fallback_note:
        print(f"note: {fallback_note}")
    print(f"base model: {base_model}")
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    cross_validate(args, movies, binarizer, base_path, base_model, tokenizer, exclude, relabel)
    return 0


if __name__ == "__main__":
    from genre_tagger import cli

    sys.argv[0] = "python -m genre_tagger.crossval"
    cli.run_main(main)
