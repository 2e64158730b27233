"""Every numeric flag of every command parses through settings.Bounded: one line naming the flag and the range.

The parsers are walked, not listed, so a flag added with type=int (or a Bounded one left out) is caught here.
"""

import argparse
import importlib.util
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, one_line_error, run_script
from genre_tagger import UserError, audit, batch, convert, ensemble, export, review
from genre_tagger.settings import MAX_SEED, Bounded, bounded_float, bounded_int, build_train_parser, probability, seed

BOUNDED = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def script_parser(name):
    spec = importlib.util.spec_from_file_location(f"{name}_script", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # predict.py and serve.py run nothing on import
    return module.build_parser()


PARSERS = {
    "train.py": build_train_parser,
    "predict.py": lambda: script_parser("predict"),
    "serve.py": lambda: script_parser("serve"),
    "audit": audit.build_parser,
    "batch": batch.build_parser,
    "convert": convert.build_parser,
    "ensemble": ensemble.build_parser,
    "export": export.build_parser,
    "review": review.build_parser,
}


def actions(parser, prefix=()):
    """(argv prefix that reaches the parser, action) for every action, subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from actions(subparser, (*prefix, name))
        else:
            yield prefix, action


ALL_ACTIONS = [(command, prefix, action) for command, build in PARSERS.items() for prefix, action in actions(build())]
FLAGS = [
    pytest.param(command, prefix, action, id=f"{command} {' '.join(prefix)} {action.dest}")
    for command, prefix, action in ALL_ACTIONS
    if isinstance(action.type, Bounded)
]


def test_no_flag_parses_numbers_around_bounded():
    plain = [(command, action.dest) for command, _, action in ALL_ACTIONS if action.type in (int, float)]
    assert plain == []
    commands = {command for command, _, action in ALL_ACTIONS if isinstance(action.type, Bounded)}
    assert commands == {"train.py", "predict.py", "serve.py", "audit", "batch", "ensemble", "review"}
    assert len(FLAGS) >= 40


def outside(bounded):
    """Values just outside the range of `bounded`, as text."""
    if bounded.kind is int:
        below, above = bounded.low - 1, bounded.high + 1
    else:
        below = bounded.low if bounded.low_open else math.nextafter(bounded.low, -math.inf)
        above = bounded.high if bounded.high_open else math.nextafter(bounded.high, math.inf)
    if bounded.zero_means and below == 0:
        return [repr(above)]
    return [repr(below), repr(above)]


@pytest.mark.parametrize(("command", "prefix", "action"), FLAGS)
def test_every_numeric_flag_refuses_what_is_not_a_number_in_its_range(command, prefix, action):
    flag = next(option for option in action.option_strings if option.startswith("--"))
    parser = PARSERS[command]()
    hostile = ["9" * 400, "-" + "9" * 400, "²", "١", "nan", "inf", "-1e308", "1e308", "", "1_0", *outside(action.type)]
    for text in hostile:
        with pytest.raises(UserError) as refused:
            parser.parse_args([*prefix, f"{flag}={text}"])  # "=": argparse takes "-1e308" alone for an option
        message = str(refused.value)
        assert message.startswith(f"{flag} must be ") and "between" in message, message
        assert "\n" not in message and len(message) < 300, message
    if action.default is not None:  # the default is itself in range
        assert action.type.allows(action.default), (flag, action.default)


def test_the_message_names_the_flag_and_the_range():
    with pytest.raises(UserError, match=r"^--seed must be a whole number between 0 and 4294967295, not 8589934592$"):
        build_train_parser().parse_args(["--seed", "8589934592"])
    with pytest.raises(UserError, match=r"^--max-genres must be a whole number between 1 and 1000000, not 0$"):
        script_parser("predict").parse_args(["--top-k", "0"])
    with pytest.raises(UserError, match=r"^--folds must be 0 \(off\) or a whole number between 2 and 20, not 1$"):
        build_train_parser().parse_args(["--folds", "1"])
    with pytest.raises(UserError, match=r"^--threshold must be a number between 0 and 1 \(exclusive\), not 1$"):
        build_train_parser().parse_args(["--threshold", "1"])
    parsed = build_train_parser().parse_args(
        ["--folds", "0", "--seed", str(MAX_SEED), "--lr", " 1e-5 ", "--limit", "+7"]
    )
    assert (parsed.folds, parsed.seed, parsed.lr, parsed.limit) == (0, MAX_SEED, 1e-5, 7)


def test_predicts_threshold_choice_is_shown_cut_too():
    from genre_tagger.run import parse_threshold

    with pytest.raises(UserError, match=r"^--threshold must be between 0 and 1 \(exclusive\), not 9{100}\.\.\."):
        parse_threshold("9" * 5000)
    with pytest.raises(UserError, match=r"not '²'$"):
        parse_threshold("²")


SHAPES = st.one_of(
    st.tuples(st.integers(-(10**6), 10**6), st.integers(0, 10**12)).map(lambda t: bounded_int(t[0], t[0] + t[1])),
    st.tuples(st.floats(-1e6, 1e6), st.floats(0, 1e6), st.booleans(), st.booleans()).map(
        lambda t: bounded_float(t[0], t[0] + t[1], low_open=t[2], high_open=t[3])
    ),
    st.sampled_from([probability(), seed(), bounded_int(2, 20, zero_means="off")]),
)


@BOUNDED
@given(bounded=SHAPES, value=st.one_of(st.integers(-(10**15), 10**15), st.floats()))
def test_a_number_round_trips_exactly_when_it_is_in_range(bounded, value):
    if bounded.kind is int and isinstance(value, float):
        value = str(value)  # a float's text is never a whole number
        expected = None
    else:
        expected = value if bounded.kind is int or math.isfinite(value) else None
        expected = expected if expected is not None and bounded.allows(expected) else None
        value = repr(value)
    try:
        parsed = bounded.parse(value, "--flag")
    except UserError as err:
        assert expected is None, err
        assert str(err).startswith("--flag must be ") and "\n" not in str(err)
        return
    assert parsed == expected and type(parsed) is bounded.kind


@BOUNDED
@given(bounded=SHAPES, text=st.text(max_size=40) | st.from_regex(r"[+-]?[0-9٠-٩²_.eE]{1,30}", fullmatch=True))
def test_any_text_is_a_number_in_range_or_one_line_naming_the_flag(bounded, text):
    try:
        value = bounded.parse(text, "--flag")
    except UserError as err:
        message = str(err)
        assert message.startswith("--flag must be ") and "\n" not in message and len(message) < 300
        return
    assert text.strip().isascii() and bounded.allows(value)
    assert not isinstance(value, float) or math.isfinite(value)


# --- end to end: refused before any data or model is read ----------------------------------------


def test_audit_refuses_a_seed_past_numpys_range(tmp_path):
    result = run_script("-m", "genre_tagger.audit", "--output", tmp_path / "a.csv", "--seed", "8589934592", timeout=120)
    one_line_error(result, "--seed must be a whole number between 0 and 4294967295, not 8589934592")
    assert list(tmp_path.iterdir()) == []


def test_ensemble_refuses_a_weight_that_would_turn_every_probability_to_0(tmp_path):
    result = run_script(
        "-m", "genre_tagger.ensemble", tmp_path / "a", tmp_path / "b", "--output", tmp_path / "e",
        "--weights", "1e308", "1", timeout=120,
    )  # fmt: skip
    one_line_error(result, "--weights must be a number between 0 and 1000 (0 excluded), not 1e308")


def test_ensemble_refuses_a_400_digit_weight_shown_cut(tmp_path):
    huge = "9" * 400
    result = run_script(
        "-m", "genre_tagger.ensemble", tmp_path / "a", tmp_path / "b", "--output", tmp_path / "e",
        "--weights", "1", huge, timeout=120,
    )  # fmt: skip
    line = one_line_error(result, "--weights must be a number between 0 and 1000 (0 excluded), not 999")
    assert "(400 characters)" in line and huge not in line
    assert list(tmp_path.iterdir()) == []


def movies_csv(folder, rows=60):
    lines = ["Title,Genre,Description"] + [
        f"M{i},{'Drama' if i % 2 else 'Comedy'},Plot number {i}." for i in range(rows)
    ]
    path = folder / "movies.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.slow  # train.py imports torch before its data step
@pytest.mark.parametrize(("row", "shown"), [("9" * 5000, "not " + "9" * 100 + "... (5000 characters)"), ("²", "not ²")])
def test_train_refuses_an_exclude_rows_id_that_is_no_row_number(tmp_path, row, shown):
    fix = tmp_path / "fix.csv"
    fix.write_text(f"row\n2\n{row}\n")
    result = run_script(
        "train.py", "--data", movies_csv(tmp_path), "--exclude-rows", fix, "--model", "minilm",
        "--output", tmp_path / "run", "--checkpoint-dir", tmp_path / "ck", timeout=300,
    )  # fmt: skip
    line = one_line_error(result, f"--exclude-rows {fix}, line 3: 'row' must be a whole number between 2 and 61", shown)
    assert len(line) < 300
    assert not (tmp_path / "run").exists()
