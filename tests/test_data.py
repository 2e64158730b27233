import hashlib
import http.server
import io
import threading
from functools import partial

import numpy as np
import pytest

from genre_tagger import UserError
from genre_tagger import data as gdata


def write_csv(path, rows, header="Title,Genre,Description"):
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_clean_text_strips_scraped_tail_and_whitespace():
    raw = "A man   travels\tfar, and  together face tough choices ... See full summary »"
    assert gdata.clean_text(raw) == "A man travels far, and together face tough choices"
    assert gdata.clean_text("  Plain text.  ") == "Plain text."


def test_split_labels_trims_and_drops_empties_and_repeats():
    assert gdata.split_labels(" Action, Crime,,Drama ,Action") == ["Action", "Crime", "Drama"]


def test_load_labelled_csv_cleans_and_counts_duplicates(tmp_path):
    path = write_csv(
        tmp_path / "m.csv",
        [
            'A,"Action,Crime",A heist goes wrong ... See full summary »',
            'B,"Drama",A heist goes wrong',
            'C,"Comedy, Romance",Two  people meet.',
        ],
    )
    frame, report = gdata.load_labelled_csv(path)
    assert frame["text"].tolist() == ["A heist goes wrong", "Two people meet."]
    assert frame["labels"].tolist() == [["Action", "Crime"], ["Comedy", "Romance"]]
    assert frame["source_row"].tolist() == [2, 4]
    assert report["duplicates_dropped"] == 1
    assert report["scraped_tails_stripped"] == 1


def test_a_quoted_field_with_line_separators_that_are_not_newlines_is_one_row():
    """U+0085 and U+2028 end a line for str.splitlines, not in a CSV file: a field holding them is no merged row."""
    from genre_tagger.data import csv_rows

    text = 'Description,Genre\n"A heist\x85, a chase\u2028, a fall",Crime\n'
    rows = list(csv_rows(io.StringIO(text, newline=""), "in.csv"))
    assert rows[1:] == [(2, ["A heist\x85, a chase\u2028, a fall", "Crime"])]


def test_missing_column_is_named(tmp_path):
    path = write_csv(tmp_path / "m.csv", ["A,Drama,Text"], header="Title,Genres,Description")
    with pytest.raises(UserError, match="no column 'Genre'.*--label-column"):
        gdata.load_labelled_csv(path)


def test_empty_text_and_missing_labels_name_the_rows(tmp_path):
    path = write_csv(tmp_path / "m.csv", ['A,"Drama",Text one', 'B,"Drama",   ', 'C,"Comedy",Text three'])
    with pytest.raises(UserError, match="rows 3"):
        gdata.load_labelled_csv(path)
    path = write_csv(tmp_path / "n.csv", ['A,"Drama",Text one', 'B,"",Text two'])
    with pytest.raises(UserError, match="no labels.*rows 3"):
        gdata.load_labelled_csv(path)


def test_fewer_than_two_labels_is_refused(tmp_path):
    path = write_csv(tmp_path / "m.csv", ['A,"Drama",Text one', 'B,"Drama",Text two'])
    with pytest.raises(UserError, match="at least two"):
        gdata.load_labelled_csv(path)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        gdata.load_labelled_csv(tmp_path / "nope.csv")


def test_binarizer_encodes_float_multi_hot_and_ignores_unknown_labels():
    binarizer = gdata.fit_binarizer([["Drama", "Crime"], ["Comedy"]])
    assert list(binarizer.classes_) == ["Comedy", "Crime", "Drama"]
    encoded = gdata.encode_labels(binarizer, [["Drama", "Western"], ["Comedy", "Crime"]])
    assert encoded.dtype == np.float32
    assert encoded.tolist() == [[0, 0, 1], [1, 1, 0]]


def test_stratified_split_puts_rare_labels_on_both_sides(imdb_csv):
    frame, _ = gdata.load_labelled_csv(imdb_csv)
    matrix = gdata.encode_labels(gdata.fit_binarizer(frame["labels"]), frame["labels"])
    rest, held_out = gdata.stratified_split(matrix, 0.1, seed=0)
    assert len(set(rest) & set(held_out)) == 0 and len(rest) + len(held_out) == len(frame)
    assert 90 <= len(held_out) <= 110
    # Musical has 5 movies and Western 7: a random split often loses them; stratification must not.
    assert (matrix[held_out].sum(axis=0) > 0).all()
    assert (matrix[rest].sum(axis=0) > 0).all()


# --- download, against a local HTTP server on 127.0.0.1 -------------------------------------------


@pytest.fixture
def http_server(tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_saves_a_good_file(http_server, tmp_path):
    served, base = http_server
    body = b"Title,Genre,Description\r\nA,Drama,Text\r\n"
    (served / "good.csv").write_bytes(body)
    target = tmp_path / "data" / "movies.csv"
    gdata.ensure_dataset(target, url=f"{base}/good.csv", sha256=hashlib.sha256(body).hexdigest())
    assert target.read_bytes() == body
    assert list(target.parent.iterdir()) == [target]


def test_download_refuses_a_tampered_file_and_leaves_nothing(http_server, tmp_path):
    served, base = http_server
    (served / "bad.csv").write_bytes(b"Title,Genre,Description\r\nA,Drama,Tampered\r\n")
    target = tmp_path / "data" / "movies.csv"
    with pytest.raises(UserError, match="checksum mismatch"):
        gdata.ensure_dataset(target, url=f"{base}/bad.csv", sha256=gdata.DATA_SHA256)
    assert list(target.parent.iterdir()) == []


def test_failed_download_names_url_and_destination(http_server, tmp_path):
    _, base = http_server
    target = tmp_path / "data" / "movies.csv"
    with pytest.raises(UserError, match=r"could not download .*missing\.csv.*save it as .*movies\.csv"):
        gdata.ensure_dataset(target, url=f"{base}/missing.csv")
    assert list(target.parent.iterdir()) == []


def test_existing_file_is_not_downloaded_again(tmp_path):
    target = tmp_path / "movies.csv"
    target.write_text("kept")
    assert gdata.ensure_dataset(target, url="http://127.0.0.1:9/never") == target
    assert target.read_text() == "kept"


def test_repo_copy_of_the_dataset_matches_the_pinned_checksum(imdb_csv):
    assert gdata.sha256_of(imdb_csv) == gdata.DATA_SHA256


def test_split_csv_cells_are_spreadsheet_safe_and_read_back_exactly(tmp_path):
    import pandas as pd

    from genre_tagger.common import SPREADSHEET_FORMULA_STARTS, spreadsheet_safe
    from genre_tagger.data import read_split

    texts = ['=HYPERLINK("x")', "+1", "-2 days", "@cmd", "'quoted", "''twice", "plain plot"]
    frame = pd.DataFrame({"split": "train", "labels": ["=Drama,Action"] * len(texts), "text": texts})
    written = frame.copy()
    for column in ("labels", "text"):
        written[column] = written[column].map(spreadsheet_safe)
    written.to_csv(tmp_path / "split.csv", index=False)
    raw = pd.read_csv(tmp_path / "split.csv", keep_default_na=False, dtype=str)
    assert not any(cell.startswith(SPREADSHEET_FORMULA_STARTS) for cell in [*raw["text"], *raw["labels"]])
    back = read_split(tmp_path / "split.csv")
    assert back["text"].tolist() == texts and set(back["labels"]) == {"=Drama,Action"}
