"""Word attributions (genre_tagger.explain): leave-one-word-out on a fake tagger whose genres hang on words."""

import json

import numpy as np
import pytest

from conftest import one_line_error, run_script
from genre_tagger.explain import compact, explain, format_explanation, html, without, word_spans

LABELS = ["Horror", "Comedy", "Drama"]
CUES = {"Horror": {"ghost": 0.5, "haunted": 0.3}, "Comedy": {"ghost": -0.2, "jokes": 0.6}, "Drama": {}}


class FakeTagger:
    """Genre probabilities from which cue words a text holds: 0.2 + the cues' weights (clipped)."""

    labels = LABELS

    def __init__(self, tokenizer=None):
        self.calls = []
        self.tokenizers = [tokenizer] if tokenizer is not None else []

    def probabilities(self, texts, batch_size=32):
        self.calls.append(len(texts))
        rows = []
        for text in texts:
            words = {w.lower() for w in text.replace(".", " ").replace(",", " ").split()}
            rows.append([0.2 + sum(v for w, v in CUES[g].items() if w in words) for g in LABELS])
        return np.clip(np.array(rows, dtype=np.float32), 0, 1)


def word_tokenizer(max_length):
    """A real `tokenizers` word-level tokenizer (no download), truncating at `max_length` tokens."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace

    tokenizer = Tokenizer(WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = Whitespace()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


TEXT = "A haunted house, a ghost and  some jokes."


def test_attributions_find_the_words_and_offsets_point_at_them():
    tagger = FakeTagger()
    (result,) = explain(tagger, [TEXT], 0.3)
    assert result["truncated"] is False
    by_genre = {g["genre"]: g for g in result["genres"]}
    assert list(by_genre) == ["Horror", "Comedy"]  # highest first; Drama (0.2) is under the threshold
    horror = by_genre["Horror"]
    assert horror["probability"] == pytest.approx(1.0)
    assert [(w["word"], w["score"]) for w in horror["up"]] == [("ghost", pytest.approx(0.5)), ("haunted", 0.3)]
    assert horror["down"] == []
    comedy = by_genre["Comedy"]
    assert [w["word"] for w in comedy["up"]] == ["jokes"] and [w["word"] for w in comedy["down"]] == ["ghost"]
    assert comedy["down"][0]["score"] == pytest.approx(-0.2)
    for genre in result["genres"]:
        for word in genre["up"] + genre["down"]:
            assert TEXT[word["start"] : word["end"]] == word["word"]
    assert tagger.calls == [1, 9]  # the plain tags, then the text and its 8 variants in one batch


def test_top_k_and_words_limit_what_is_explained():
    (result,) = explain(FakeTagger(), [TEXT], 0.3, top_k=1, words=1)
    assert [g["genre"] for g in result["genres"]] == ["Horror"]
    assert [w["word"] for w in result["genres"][0]["up"]] == ["ghost"]


def test_no_genre_above_the_threshold_explains_nothing_and_runs_no_variants():
    tagger = FakeTagger()
    assert explain(tagger, ["Nothing here."], 0.9) == [{"truncated": False, "genres": []}]
    assert tagger.calls == [1]


def test_a_text_past_the_token_limit_is_explained_on_what_the_model_saw():
    text = "jokes and more " + "filler " * 10 + "ghost haunted"
    tagger = FakeTagger(word_tokenizer(max_length=8))
    (result,) = explain(tagger, [text], 0.3)
    assert result["truncated"] is True
    for genre in result["genres"]:
        for word in genre["up"] + genre["down"]:
            assert word["end"] <= text.index("ghost")  # ghost and haunted were past what the model read
    comedy = next(g for g in result["genres"] if g["genre"] == "Comedy")
    assert comedy["up"][0]["word"] == "jokes"
    (short,) = explain(FakeTagger(word_tokenizer(max_length=64)), [text], 0.3)
    assert short["truncated"] is False


def test_words_keep_inner_apostrophes_and_hyphens_and_removal_keeps_single_spaces():
    text = "An ex-cop doesn't quit, ever."
    assert [text[s:e] for s, e in word_spans(text)] == ["An", "ex-cop", "doesn't", "quit", "ever"]
    assert without(text, 3, 9) == "An doesn't quit, ever."
    assert without(text, 0, 2) == " ex-cop doesn't quit, ever."
    assert without(text, 24, 28) == "An ex-cop doesn't quit, ."


def test_a_one_word_text_and_punctuation_only_text_are_explained_without_failing():
    (one,) = explain(FakeTagger(), ["ghost"], 0.3)
    assert one["genres"][0]["up"][0]["word"] == "ghost"
    (none,) = explain(FakeTagger(), ["!!!"], 0.1)
    assert all(g["up"] == [] and g["down"] == [] for g in none["genres"])


def test_the_same_text_gets_identical_attributions_every_time():
    tagger = FakeTagger()
    assert explain(tagger, [TEXT, TEXT], 0.3) == explain(tagger, [TEXT], 0.3) * 2


def test_formats_readable_lines_compact_json_and_html():
    (result,) = explain(FakeTagger(), [TEXT], 0.3)
    lines = format_explanation(result)
    assert "Horror 1.00" in lines and "ghost +0.500" in lines and "ghost -0.200" in lines
    assert json.loads(compact(result)) == result and " " not in compact(result).replace(TEXT, "")[:20]
    page = html(TEXT, result["genres"][1])
    assert "#b7f0b1" in page and "#f7b5b5" in page and ">jokes</span>" in page


class TinyBackend(FakeTagger):
    max_length = 16


def test_tagger_explain_checks_its_arguments():
    from genre_tagger.tagger import Tagger

    class FakeRun:
        labels, thresholds, max_length = LABELS, {}, 16

    tagger = Tagger(TinyBackend(), FakeRun(), "fake")
    (result,) = tagger.explain("a ghost", threshold=0.3)
    assert result["genres"][0]["up"][0]["word"] == "ghost"
    for kwargs, message in [
        ({"texts": [""]}, "empty"),
        ({"texts": [3]}, "not a str"),
        ({"texts": ["a ghost"], "top_k": 0}, "top_k"),
        ({"texts": ["a ghost"], "words": 0}, "words"),
        ({"texts": ["a ghost"], "words": True}, "words"),
        ({"texts": ["a ghost"], "threshold": 1.5}, "threshold"),
    ]:
        with pytest.raises(ValueError, match=message):
            tagger.explain(**kwargs)


# %% On a trained run: predict.py --explain

LONG = "A family moves into a farmhouse haunted by a malevolent presence. " * 60  # past the model's token limit


def test_predict_explain_json_offsets_point_at_words_of_the_input(trained):
    texts = ["A retired hitman seeks revenge on the gangsters who killed his dog.", LONG]
    result = run_script(
        "predict.py", "--model", trained["output"], "--explain", "--json", "--threshold", "0.05", *texts
    )
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record, text in zip(records, texts):
        explanation = record["explanations"]
        assert [g["genre"] for g in explanation["genres"]] == [g["genre"] for g in record["genres"]]
        assert any(g["up"] or g["down"] for g in explanation["genres"])
        for genre in explanation["genres"]:
            for word in genre["up"] + genre["down"]:
                assert text[word["start"] : word["end"]] == word["word"] and word["word"].isalnum()
            assert [w["score"] for w in genre["up"]] == sorted((w["score"] for w in genre["up"]), reverse=True)
            assert all(w["score"] > 0 for w in genre["up"]) and all(w["score"] < 0 for w in genre["down"])
    assert [r["explanations"]["truncated"] for r in records] == [False, True]
    last_seen = max(w["end"] for g in records[1]["explanations"]["genres"] for w in g["up"] + g["down"])
    assert last_seen < len(LONG) // 2  # only the words the model read are explained
    from_zip = run_script("predict.py", "--model", trained["zip"], "--explain", "--json", "--threshold", "0.05", *texts)
    assert from_zip.stdout == result.stdout  # stable: folder and zip, two calls


def test_predict_explain_readable_and_in_files(trained, tmp_path):
    readable = run_script("predict.py", "--model", trained["output"], "--explain", "--threshold", "0.05", "A dog.")
    assert readable.returncode == 0, readable.stderr
    assert "dog +" in readable.stdout or "dog -" in readable.stdout
    source = tmp_path / "in.txt"
    source.write_text("A retired hitman seeks revenge.\nTwo strangers fall in love.\n")
    for name in ("out.csv", "out.jsonl"):
        out = tmp_path / name
        result = run_script(
            "predict.py", "--model", trained["output"], "--explain", "--threshold", "0.05",
            "--input", source, "--output", out,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        if name.endswith(".csv"):
            import csv

            rows = list(csv.DictReader(out.open(encoding="utf-8")))
            explanations = [json.loads(row["explanations"]) for row in rows]
        else:
            explanations = [json.loads(line)["explanations"] for line in out.read_text().splitlines()]
        assert len(explanations) == 2 and all("genres" in e and "truncated" in e for e in explanations)
    one_line_error(run_script("predict.py", "--model", trained["output"], "--explain", "  "), "empty")
    one_line_error(run_script("predict.py", "--model", trained["output"], "--explain"), "give a description")
