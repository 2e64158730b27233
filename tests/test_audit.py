"""The label audit (genre_tagger/audit.py) and train.py's row corrections, on synthetic data: no model loads."""

import numpy as np
import pandas as pd
import pytest

from conftest import one_line_error, run_script
from genre_tagger import UserError, audit
from genre_tagger import data as gdata


def synthetic(seed, rows=400, genres=5, dims=12):
    """Vectors that carry their genres (genre j in dimension j), as a frozen encoder's would, and the labels."""
    rng = np.random.default_rng(seed)
    Y = (rng.random((rows, genres)) < 0.3).astype(np.int64)
    Y[Y.sum(axis=1) == 0, 0] = 1
    X = rng.normal(0, 0.5, (rows, dims))
    X[:, :genres] += 2.0 * Y
    return X, Y


def test_the_ranking_finds_injected_flips_on_synthetic_data():
    X, Y = synthetic(0)
    noisy, flips = audit.inject_noise(Y, 0.05, seed=1)
    flipped = np.zeros(len(Y), dtype=bool)
    flipped[[i for i, _, _ in flips]] = True
    P = audit.out_of_fold_probabilities(X, noisy, folds=5, seed=0)
    result = audit.recovery(audit.label_quality_scores(noisy, P), flipped, [len(flips), 50])
    assert result["flipped_rows"] == 20
    assert result["auprc"] > 0.8 and result["precision@20"] >= 0.8 and result["recall@50"] == 1.0


def test_inject_noise_changes_one_genre_in_the_chosen_rows_both_ways_and_never_empties_a_row():
    _, Y = synthetic(2, rows=200)
    noisy, flips = audit.inject_noise(Y, 0.1, seed=3)
    assert len(flips) == 20 and len({i for i, _, _ in flips}) == 20
    assert {kind for _, _, kind in flips} == {"added", "removed"}
    changed = np.argwhere(noisy != Y)
    assert sorted(map(tuple, changed.tolist())) == sorted((i, j) for i, j, _ in flips)
    for i, j, kind in flips:
        assert noisy[i, j] == (1 if kind == "added" else 0)
    assert noisy.sum(axis=1).min() >= 1
    again, _ = audit.inject_noise(Y, 0.1, seed=3)
    assert (again == noisy).all()


def test_label_quality_is_cleanlabs_self_confidence_with_exponential_moving_average():
    Y = np.array([[1, 0, 0], [0, 1, 1]])
    P = np.array([[0.9, 0.2, 0.4], [0.5, 0.1, 0.7]])
    # row 0: confidences 0.9, 0.8, 0.6 (sorted high to low) -> 0.8*0.8+0.2*0.9 = 0.82 -> 0.8*0.6+0.2*0.82
    # row 1: 0.5, 0.1, 0.7 -> 0.7, 0.5, 0.1 -> 0.8*0.5+0.2*0.7 = 0.54 -> 0.8*0.1+0.2*0.54
    assert audit.label_quality_scores(Y, P) == pytest.approx([0.8 * 0.6 + 0.2 * 0.82, 0.8 * 0.1 + 0.2 * 0.54])
    rank = pytest.importorskip("cleanlab.multilabel_classification.rank")
    X, Y = synthetic(4, rows=60)
    P = np.random.default_rng(5).random(Y.shape)
    expected = rank.get_label_quality_scores([list(np.flatnonzero(row)) for row in Y], P)
    assert audit.label_quality_scores(Y, P) == pytest.approx(expected)


def test_the_table_ranks_rows_names_suspects_and_is_written_spreadsheet_safe(tmp_path):
    labels = ["Action", "Comedy", "Drama"]
    Y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1]])
    P = np.array([[0.9, 0.1, 0.1], [0.1, 0.2, 0.95], [0.8, 0.1, 0.7]])
    table = audit.audit_table([2, 3, 5], ["=HYPERLINK(1)", "B", "C"], ["a", "b", "c"], Y, P, labels)
    assert table["row"].tolist() == [3, 5, 2]
    assert table.loc[0, "suspected_missing"] == "Drama (0.95)"
    assert table.loc[0, "suspected_extra"] == "Comedy (0.20)"
    assert table.loc[0, "genres"] == "Comedy"
    summary = audit.genre_summary(Y, P, labels)
    assert summary.set_index("genre").loc["Drama", "suspected_missing"] == 1
    assert summary.set_index("genre").loc["Comedy", "suspected_extra"] == 1
    top = audit.genre_summary(Y, P, labels, top=1).set_index("genre")  # row 3 alone
    assert top.loc["Drama", "suspected_missing"] == 1 and top["suspects"].sum() == 2
    audit.write_csv(table, tmp_path / "a.csv")
    written = pd.read_csv(tmp_path / "a.csv", dtype=str, keep_default_na=False)
    assert written.loc[written["row"] == "2", "title"].item() == "'=HYPERLINK(1)"
    audit.plot_audit(summary, audit.label_quality_scores(Y, P), tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0


def movies_csv(tmp_path, rows=6):
    genres = ["Action", "Comedy", "Drama,Action", "Comedy,Drama", "Action", "Drama"]
    lines = ["Title,Genre,Description"] + [f'M{i},"{genres[i % 6]}",Plot number {i}.' for i in range(rows)]
    path = tmp_path / "movies.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda d: ["--data", d / "movies.csv", "--label-column", "Genres"], "no column 'Genres'"),
        (lambda d: ["--data", d / "movies.csv", "--folds", "7"], "fewer than --folds 7"),
        (lambda d: ["--data", d / "movies.csv", "--output", d / "movies.csv"], "is the --data file"),
        (lambda d: ["--data", d / "nothere.csv"], "does not exist"),
        (lambda d: ["--data", d / "movies.csv", "--folds", "1"], "--folds must be a whole number between 2 and 20"),
        (lambda d: ["--data", d / "movies.csv", "--output", d / "no" / "a.csv"], "does not exist; create it"),
    ],
)
def test_audit_bad_input_is_one_line_exit_2_and_the_input_is_untouched(tmp_path, make, fragment):
    data = movies_csv(tmp_path)
    before = data.read_bytes()
    args = [str(a) for a in make(tmp_path)]
    if "--output" not in args:
        args += ["--output", str(tmp_path / "audit.csv")]
    one_line_error(run_script("-m", "genre_tagger.audit", *args, timeout=120), fragment)
    assert data.read_bytes() == before
    assert not (tmp_path / "audit.csv").exists()


@pytest.mark.parametrize("existing", ["mine.csv", "mine-summary.csv", "mine.png"])
def test_audit_refuses_to_replace_any_file_it_would_write_before_any_work(tmp_path, existing):
    data = movies_csv(tmp_path)
    mine = tmp_path / existing
    mine.write_bytes(b"my own work")
    result = run_script("-m", "genre_tagger.audit", "--data", data, "--output", tmp_path / "mine.csv", timeout=120)
    one_line_error(result, "--output would replace", str(mine))
    assert mine.read_bytes() == b"my own work"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({"movies.csv", existing})


def test_audit_refuses_to_replace_the_noise_report_only_when_it_would_write_one(tmp_path):
    (tmp_path / "mine-noise.json").write_text("{}")
    paths = audit.output_paths(tmp_path / "mine.csv")
    args = audit.build_parser().parse_args(["--output", str(paths[0]), "--data", str(movies_csv(tmp_path))])
    assert audit._check_outputs(args) == paths
    args.inject_noise = 0.1
    with pytest.raises(UserError, match="would replace .*mine-noise.json"):
        audit._check_outputs(args)


def corrections_file(tmp_path, text):
    path = tmp_path / "fix.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, with_genres, fragment",
    [
        ("title\nx\n", False, "no column 'row'"),
        ("row\n2\n", True, "no column 'genres'"),
        ("row\n99\n", False, "line 2: 'row' must be a whole number between 2 and 7, not 99"),
        ("row\nabc\n", False, "line 2: 'row' must be a whole number between 2 and 7, not abc"),
        ("row\n2\n-1\n", False, "line 3: 'row' must be a whole number between 2 and 7, not -1"),
        ("row\n1e3\n", False, "not 1e3"),
        ("row\n²\n", False, "not ²"),
        ("row\n" + "9" * 5000 + "\n", False, r"not 9{100}\.\.\. \(5000 characters\)$"),
        ("row\n2\n2\n", False, "a second time"),
        ('row,genres\n2,"Action,Westernish"\n', True, "genres the data does not have: Westernish"),
        ("row,genres\n2,\n", True, "no genres"),
    ],
)
def test_corrections_naming_rows_or_genres_that_do_not_exist_are_refused(tmp_path, text, with_genres, fragment):
    movies, _ = gdata.load_labelled_csv(movies_csv(tmp_path))
    with pytest.raises(UserError, match=fragment):
        gdata.read_corrections(corrections_file(tmp_path, text), movies, "--relabel", with_genres)


def test_corrections_change_only_training_rows_and_are_recorded(tmp_path):
    movies, _ = gdata.load_labelled_csv(movies_csv(tmp_path))  # rows 2..7 at positions 0..5
    exclude = gdata.read_corrections(corrections_file(tmp_path, "row,title\n2,x\n7,y\n"), movies, "--exclude-rows")
    relabel_path = tmp_path / "relabel.csv"
    relabel_path.write_text('row,genres\n3,"Drama, Comedy"\n6,Action\n')
    relabel = gdata.read_corrections(relabel_path, movies, "--relabel", with_genres=True)
    train_idx = np.array([0, 1, 2, 3])  # rows 2-5 train; rows 6, 7 are validation/test
    corrected, train_after, record = gdata.apply_corrections(movies, train_idx, exclude, relabel)
    assert train_after.tolist() == [1, 2, 3]  # row 2 left out; row 7 is not a training row
    assert corrected["labels"].tolist()[1] == ["Drama", "Comedy"]
    assert corrected["labels"].tolist()[4] == ["Action"]  # row 6: a validation/test row, unchanged (was Action)
    assert movies["labels"].tolist()[1] == ["Comedy"]  # the caller's frame is not changed
    assert record["exclude_rows"]["rows_named"] == 2 and record["exclude_rows"]["applied_to_training_rows"] == 1
    assert record["relabel"]["applied_to_training_rows"] == 1
    assert len(record["relabel"]["sha256"]) == 64


@pytest.mark.slow  # starts train.py's data step (torch imports)
def test_train_refuses_a_corrections_file_naming_a_missing_row_in_one_line(tmp_path):
    data = movies_csv(tmp_path)
    fix = corrections_file(tmp_path, "row\n500\n")
    result = run_script(
        "train.py", "--data", data, "--exclude-rows", fix, "--model", "minilm", "--output", tmp_path / "run",
        "--checkpoint-dir", tmp_path / "ck", timeout=300,
    )  # fmt: skip
    one_line_error(result, "--exclude-rows", "line 2: 'row' must be a whole number between 2 and 7, not 500")


def plots_csv(tmp_path, rows=60):
    """`rows` movies (CSV rows 2..rows+1), Comedy and Drama taking turns, one plot each."""
    lines = ["Title,Genre,Description"] + [
        f"M{i},{'Drama' if i % 2 else 'Comedy'},Plot number {i}." for i in range(rows)
    ]
    path = tmp_path / "plots.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("flag", ["--exclude-rows", "--relabel"])
def test_cross_validation_refuses_a_missing_corrections_file_before_training(tmp_path, flag):
    result = run_script(
        "-m", "genre_tagger.crossval", "--folds", "2", "--data", plots_csv(tmp_path), flag, tmp_path / "gone.csv",
        "--model", "minilm", "--output", tmp_path / "X", "--checkpoint-dir", tmp_path / "ck", timeout=120,
    )  # fmt: skip
    one_line_error(result, "gone.csv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots.csv"]


@pytest.mark.parametrize(("row", "shown"), [("9" * 5000, "not " + "9" * 100 + "... (5000 characters)"), ("²", "not ²")])
def test_cross_validation_refuses_an_exclude_rows_id_that_is_no_row_number(tmp_path, row, shown):
    fix = corrections_file(tmp_path, f"row\n2\n{row}\n")
    result = run_script(
        "-m", "genre_tagger.crossval", "--folds", "2", "--data", plots_csv(tmp_path), "--exclude-rows", fix,
        "--model", "minilm", "--output", tmp_path / "X", "--checkpoint-dir", tmp_path / "ck", timeout=120,
    )  # fmt: skip
    line = one_line_error(result, f"--exclude-rows {fix}, line 3: 'row' must be a whole number between 2 and 61", shown)
    assert len(line) < 300 and not (tmp_path / "ck").exists()


def test_cross_validation_corrects_each_folds_training_rows_only_and_records_it(tmp_path, monkeypatch):
    import json

    from genre_tagger import crossval, modeling, training
    from genre_tagger.settings import build_train_parser

    trained_on = []

    def fake_train(args, base_path, labels, tokenizer, texts, Y, val_texts, Y_val, checkpoints):
        trained_on.append(dict(zip(texts, map(tuple, Y.tolist()))))
        return None, []

    monkeypatch.setattr(training, "train_model", fake_train)
    monkeypatch.setattr(modeling, "predict_logits", lambda model, tok, texts, length: np.zeros((len(texts), 2)))
    movies, _ = gdata.load_labelled_csv(plots_csv(tmp_path))
    exclude = gdata.read_corrections(corrections_file(tmp_path, "row\n2\n3\n"), movies, "--exclude-rows")
    relabel_path = tmp_path / "relabel.csv"
    relabel_path.write_text("row,genres\n4,Drama\n")  # row 4 is plot 2, a Comedy
    relabel = gdata.read_corrections(relabel_path, movies, "--relabel", with_genres=True)
    args = build_train_parser().parse_args(
        [
            "--folds",
            "2",
            "--calibrate",
            "none",
            "--output",
            str(tmp_path / "X"),
            "--checkpoint-dir",
            str(tmp_path / "ck"),
        ]
    )
    args.split_seed = args.seed
    binarizer = gdata.fit_binarizer(movies["labels"])  # classes: Comedy, Drama
    written = crossval.cross_validate(args, movies, binarizer, "base", "base", None, exclude, relabel)
    assert len(trained_on) == 2
    for fold in trained_on:
        assert "Plot number 0." not in fold and "Plot number 1." not in fold  # rows 2 and 3 left out
        assert fold.get("Plot number 2.", (0.0, 1.0)) == (0.0, 1.0)  # Drama where it trains, not Comedy
        assert fold.get("Plot number 4.", (1.0, 0.0)) == (1.0, 0.0)  # an uncorrected row keeps its genre
    assert sum("Plot number 2." in fold for fold in trained_on) == 1  # trained on once, tested once as given
    results = json.loads(written.read_text())
    records = [fold["corrections"] for fold in results["folds"]]
    assert [r["exclude_rows"]["rows_named"] for r in records] == [2, 2]
    assert sum(r["relabel"]["applied_to_training_rows"] for r in records) == 1
    assert all(len(r["relabel"]["sha256"]) == 64 for r in records)
