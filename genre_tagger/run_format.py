"""The declared format of a run: every file and field that predicting reads, as plain data, and one validator.

`FILES` describes each JSON file of a run (config.json, train_config.json, thresholds.json, calibration.json,
onnx.json, ensemble.json, manifest.json) field by field: its kind, its range, whether it is required, which keys
an object may hold, and the genre maps and per-genre lists that must fit the run's own genres. `check_file`
walks that description over a parsed file and raises a one-line UserError at the first violation:

    RUN: thresholds.json: per_label.Drama is 1e+400, not a probability in (0, 1) or null; re-create the run (train.py)

Run.open checks every file with it before anything reads the file's values, so no other part of genre-tagger
re-checks what is declared here. `render_markdown` writes docs/RUN_FORMAT.md from the same description (a test
keeps the committed file equal to it).

Plain dicts and one walker, not pydantic: predict.py starts in about 0.3 s and importing pydantic would cost a
good share of that on every call, and requirements.txt does not carry it.
"""

import math
import re

from genre_tagger import UserError
from genre_tagger.common import printable

# The run format this genre-tagger writes (manifest.json's format_version). 1: runs written before the field
# existed, which read the same; a run of a newer format is refused by name rather than misread.
FORMAT_VERSION = 2
OLDEST_FORMAT_VERSION = 1
# Integers beyond this lose their exact value in a float (and in most JSON readers): no count in a run gets near.
LARGEST_INTEGER = 2**53
MAX_TOKENS = 4096  # a generous bound on a run's token limit (BERT-family encoders stop at 512)
# The int8 recipes of an ONNX export, in the order export tries them (genre_tagger.modeling imports this).
INT8_RECIPES = ("rowwise", "blockwise", "dynamic")
TRAIN_PY = "train.py"
ENSEMBLE_TOOL = "python -m genre_tagger.ensemble"

# %% The shapes shared by several files

PROBABILITY = {"kind": "number", "above": 0, "below": 1}
FRACTION = {"kind": "number", "min": 0, "max": 1}
TOKEN_LIMIT = {"kind": "integer", "min": 1, "max": MAX_TOKENS}
TEXT = {"kind": "string"}
ONNX_FILE_NAME = {"kind": "string", "pattern": r"[^/\\]+\.onnx", "shown": "a file name of the run ending in .onnx"}
# Figures of an ONNX graph measured against PyTorch when it was exported (onnx.json's check).
ONNX_FIGURES = {
    "kind": "object",
    "fields": {
        "max_abs_probability_difference_vs_torch": FRACTION,
        "mean_abs_probability_difference_vs_torch": FRACTION,
        "p99_abs_probability_difference_vs_torch": FRACTION,
        "decision_agreement_vs_torch": FRACTION,
        "macro_f1": FRACTION,
        "max_abs_probability_difference_batch_of_1_vs_batched": FRACTION,
    },
}
CALIBRATION = {
    "kind": "object",
    "about": "calibrated logit = scale * logit + shift, per genre",
    "fields": {
        "method": {**TEXT, "required": True, "about": "how it was fitted"},
        "scale": {
            "kind": "list",
            "length": "genres",
            "of": {"kind": "number", "above": 0, "below": 1e6},
            "required": True,
        },
        "shift": {
            "kind": "list",
            "length": "genres",
            "of": {"kind": "number", "above": -1e6, "below": 1e6},
            "required": True,
        },
        "offsets": {"kind": "list", "length": "genres", "of": {"kind": "number"}, "about": "prior-temperature's"},
        "rows": {"kind": "integer", "min": 0},
        "fitted_on": TEXT,
        "applied": TEXT,
    },
}

# %% The files

FILES = {
    "config.json": {
        "kind": "object",
        "about": "the model's config (Hugging Face); its other fields are the encoder's, read by transformers",
        "fields": {
            "id2label": {
                "kind": "id2label",
                "required": True,
                "about": "the run's genres, in the order of the model's outputs: the genres every other file must fit",
            },
            "label2id": {"kind": "label2id"},
            "problem_type": {"kind": "string", "choices": ["multi_label_classification"]},
            "model_type": TEXT,
            "pooling": {"kind": "string", "choices": ["mean", "cls"]},
            "max_position_embeddings": {
                "kind": "integer",
                "min": 1,
                "about": "a run saved before the PreTrainedModel change: the encoder's position limit",
            },
            "encoder": {
                "kind": "object",
                "fields": {"max_position_embeddings": {"kind": "integer", "min": 1, "about": "the position limit"}},
            },
            "members": {"kind": "integer", "min": 2, "about": "an ensemble's number of members"},
        },
    },
    "train_config.json": {
        "kind": "object",
        "about": "every setting of the run; its other fields (data, timings, versions) are a record, not read",
        "fields": {
            "labels": {"kind": "genres", "about": "the genres the run was trained on"},
            "settings": {
                "kind": "object",
                "required": True,
                "about": "train.py's flags",
                "fields": {"max_length": {**TOKEN_LIMIT, "about": "tokens the model reads (without onnx.json)"}},
            },
        },
    },
    "thresholds.json": {
        "kind": "object",
        "about": "the decisions: a genre is tagged when its probability reaches its threshold",
        "fields": {
            "default": {**PROBABILITY, "required": True, "about": "--threshold default (train.py's --threshold)"},
            "default_per_label": {
                "kind": "genre map",
                "of": PROBABILITY,
                "about": "the default threshold on a calibrated run's scale, per genre",
            },
            "global": {**PROBABILITY, "about": "--threshold tuned-global"},
            "per_label": {
                "kind": "genre map",
                "of": {**PROBABILITY, "nullable": True},
                "about": "--threshold tuned; null: no threshold reached the genre's goal, never tagged",
            },
            "scale": TEXT,
            "min_positives": {"kind": "integer", "min": 0},
            "goals": {
                "kind": "genre map",
                "about": "what tuning each genre's threshold aimed at and reached",
                "of": {
                    "kind": "object",
                    "fields": {
                        "goal": TEXT,
                        "threshold": {**PROBABILITY, "nullable": True},
                        "reached": {"kind": "boolean"},
                        "positives": {"kind": "integer", "min": 0},
                        "precision": {**FRACTION, "nullable": True},
                        "recall": {**FRACTION, "nullable": True},
                    },
                },
            },
            "tuned_on": TEXT,
        },
    },
    "calibration.json": {**CALIBRATION, "about": "optional; " + CALIBRATION["about"] + " (folded into the model)"},
    "onnx.json": {
        "kind": "object",
        "about": "optional; the ONNX export predict.py runs by default",
        "fields": {
            "files": {
                "kind": "object",
                "required": True,
                "min_keys": 1,
                "other_keys": "refused",
                "fields": {"fp32": ONNX_FILE_NAME, "int8": ONNX_FILE_NAME},
                "about": "the ONNX graph of each variant",
            },
            "default": {"kind": "string", "key_of": "files", "about": "the variant predict.py runs (else fp32)"},
            "max_length": {**TOKEN_LIMIT, "required": True, "about": "tokens the exported model reads"},
            "inputs": {"kind": "list", "of": TEXT},
            "output": TEXT,
            "int8_recipe": {"kind": "string", "choices": list(INT8_RECIPES), "about": "how the int8 graph was made"},
            "check": {
                "kind": "object",
                "about": "the export measured against PyTorch",
                "fields": {
                    "torch_macro_f1": FRACTION,
                    "macro_f1_rows": TEXT,
                    "fp32": ONNX_FIGURES,
                    "int8": ONNX_FIGURES,
                    "int8_rule": TEXT,
                    "int8_recipes": {
                        "kind": "object",
                        "about": "every recipe tried, by its name",
                        "keys": {"kind": "string", "choices": list(INT8_RECIPES)},
                        "values": {
                            **ONNX_FIGURES,
                            "fields": {**ONNX_FIGURES["fields"], "what": TEXT, "passed": {"kind": "boolean"}},
                        },
                    },
                },
            },
            "left_out_of_zip": {
                "kind": "object",
                "other_keys": "refused",
                "fields": {"fp32": ONNX_FILE_NAME, "int8": ONNX_FILE_NAME},
                "about": "in a zip: the variants its folder has and the zip does not",
            },
        },
    },
    "ensemble.json": {
        "kind": "object",
        "about": "an ensemble run's members (each a run of its own in members/<i>/) and their calibrated average",
        "fields": {
            "format": {"kind": "version", "reads": [1, 1], "about": "the layout of ensemble.json"},
            "members": {
                "kind": "list",
                "required": True,
                "min_length": 2,
                "of": {
                    "kind": "object",
                    "fields": {
                        "folder": {
                            "kind": "string",
                            "required": True,
                            "pattern": r"members/[0-9]+",
                            "shown": "'members/<n>'",
                        },
                        "weight": {"kind": "number", "above": 0, "required": True, "about": "its share of the mean"},
                        "onnx_model": ONNX_FILE_NAME,
                        "source": TEXT,
                    },
                },
            },
            "calibration": {**CALIBRATION, "nullable": True, "about": "maps the members' mean probabilities"},
        },
    },
    "manifest.json": {
        "kind": "object",
        "about": "optional (a run without one opens unverified); sha256 and size of every other file",
        "fields": {
            "format_version": {
                "kind": "version",
                "reads": [OLDEST_FORMAT_VERSION, FORMAT_VERSION],
                "about": f"the run's format; absent: {OLDEST_FORMAT_VERSION}",
            },
            "format": {"kind": "version", "reads": [1, 1], "about": "the layout of manifest.json"},
            "files": {
                "kind": "object",
                "required": True,
                "keys": {"kind": "run path"},
                "values": {
                    "kind": "object",
                    "other_keys": "refused",
                    "fields": {
                        "sha256": {"kind": "string", "required": True, "pattern": "[0-9a-f]{64}", "shown": "a sha256"},
                        "bytes": {"kind": "integer", "min": 0, "required": True},
                    },
                },
                "about": "each file of the run by its path inside it",
            },
        },
    },
}


# %% The validator


class _Violation(Exception):
    def __init__(self, path, problem):
        super().__init__(problem)
        self.path, self.problem = path, problem


def _shown(value):
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    if isinstance(value, int) and abs(value) > LARGEST_INTEGER:
        try:
            return f"{float(value):g} (an integer too large to keep exact)"
        except OverflowError:
            return f"{'-' if value < 0 else ''}1e+{len(str(abs(value))) - 1} (an integer too large for a float)"
    if isinstance(value, str):
        text = printable(value)
        return repr(text if len(text) <= 60 else text[:60] + "...")
    if isinstance(value, dict):
        return "an object" if value else "an empty object"
    if isinstance(value, list):
        return "a list" if value else "an empty list"
    return printable(repr(value))


def _bounds(spec):
    low = f"({spec['above']:g}" if "above" in spec else f"[{spec['min']:g}" if "min" in spec else None
    high = f"{spec['below']:g})" if "below" in spec else f"{spec['max']:g}]" if "max" in spec else None
    if low and high:
        return f" in {low}, {high}"
    if low:
        return f" {'above' if 'above' in spec else 'of at least'} {low[1:]}"
    if high:
        return f" {'below' if 'below' in spec else 'of at most'} {high[:-1]}"
    return ""


def describe(spec):
    """A short phrase for what a field must be: in error messages and in docs/RUN_FORMAT.md."""
    kind = spec["kind"]
    if kind == "number":
        rule = {key: value for key, value in spec.items() if key not in ("about", "required", "nullable")}
        phrase = "a probability in (0, 1)" if rule == PROBABILITY else f"a finite number{_bounds(spec)}"
    elif kind == "integer":
        if "min" in spec and "max" in spec:
            phrase = f"an integer from {spec['min']} to {spec['max']}"
        else:
            phrase = f"an integer{_bounds(spec)}"
    elif kind == "string":
        if "choices" in spec:
            phrase = "one of " + ", ".join(repr(c) for c in spec["choices"])
        elif "key_of" in spec:
            phrase = f"a key of {spec['key_of']}"
        else:
            phrase = spec.get("shown", "text")
    elif kind == "boolean":
        phrase = "true or false"
    elif kind == "version":
        low, high = spec["reads"]
        phrase = f"a format from {low} to {high}" if low != high else f"format {low}"
    elif kind == "list":
        count = (
            "one per genre"
            if spec.get("length") == "genres"
            else f"at least {spec['min_length']}"
            if "min_length" in spec
            else "any number"
        )
        phrase = (
            f"a list ({count}) of {describe(spec['of'])}" if spec["of"]["kind"] != "object" else f"a list ({count})"
        )
    elif kind == "genre map":
        phrase = "an object with exactly the run's genres as keys"
        if spec["of"]["kind"] != "object":
            phrase += f", each {describe(spec['of'])}"
    elif kind == "genres":
        phrase = "the run's genres (config.json's id2label), in order"
    elif kind == "id2label":
        phrase = 'an object {"0": genre, "1": genre, ...}: distinct, printable, non-empty genre names'
    elif kind == "label2id":
        phrase = "id2label turned around: {genre: index}"
    elif kind == "run path":
        phrase = "a path inside the run"
    else:
        phrase = "an object" + (f" (keys: {', '.join(spec['fields'])})" if spec.get("other_keys") == "refused" else "")
    return phrase + (" or null" if spec.get("nullable") else "")


def _number_fits(spec, value):
    """A JSON number (never true/false) that is finite as a float, within the spec's bounds."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    try:
        number = float(value)
    except OverflowError:  # an integer beyond a float's range: 10**400 parses as a Python int
        return False
    return (
        math.isfinite(number)
        and number > spec.get("above", -math.inf)
        and number < spec.get("below", math.inf)
        and spec.get("min", -math.inf) <= number <= spec.get("max", math.inf)
    )


def _join(path, key):
    return f"{path}.{printable(key)}" if path else printable(key)


def _walk(spec, value, path, context, parent=None):
    def refuse(problem=None):
        raise _Violation(path, problem or f"is {_shown(value)}, not {describe(spec)}")

    if value is None and spec.get("nullable"):
        return
    kind = spec["kind"]
    if kind == "number":
        if not _number_fits(spec, value):
            refuse()
    elif kind in ("integer", "version"):
        if not isinstance(value, int) or isinstance(value, bool):
            refuse()
        low, high = spec["reads"] if kind == "version" else (spec.get("min"), spec.get("max", LARGEST_INTEGER))
        if kind == "version" and value > high:
            raise _Violation(
                path,
                f"is {_shown(value)}: written by a newer genre-tagger (format {value}), a format this genre-tagger "
                f"does not know; this version reads {low}{f'-{high}' if high != low else ''}: update genre-tagger",
            )
        if (low is not None and value < low) or (high is not None and value > high):
            refuse()
    elif kind == "string":
        if not isinstance(value, str):
            refuse()
        if "choices" in spec and value not in spec["choices"]:
            refuse()
        if "pattern" in spec and not re.fullmatch(spec["pattern"], value):
            refuse()
        if "key_of" in spec and value not in (parent or {}).get(spec["key_of"], {}):
            refuse(f"is {_shown(value)}, not {describe(spec)} ({', '.join(map(repr, parent[spec['key_of']]))})")
    elif kind == "boolean":
        if not isinstance(value, bool):
            refuse()
    elif kind == "list":
        if not isinstance(value, list):
            refuse()
        if spec.get("length") == "genres" and len(value) != len(context["labels"]):
            refuse(f"has {len(value)} values, not one per genre ({len(context['labels'])}): it does not fit the run")
        if len(value) < spec.get("min_length", 0):
            refuse(f"has {len(value)} entries, not at least {spec['min_length']}")
        for i, item in enumerate(value):
            _walk(spec["of"], item, f"{path}[{i}]", context)
    elif kind == "genre map":
        if not isinstance(value, dict):
            refuse()
        labels = context["labels"]
        missing = [label for label in labels if label not in value]
        extra = [key for key in value if key not in labels]
        if missing or extra:
            which = (f"lacks {', '.join(map(printable, missing[:3]))}" if missing else "") + (
                f"{' and ' if missing else ''}has {', '.join(map(repr, map(printable, extra[:3])))}, not a genre of the run"
                if extra
                else ""
            )
            refuse(f"{which}: its genres do not match the run's genres")
        for label in labels:
            _walk(spec["of"], value[label], _join(path, label), context)
    elif kind == "genres":
        if value != context["labels"]:
            refuse("differ from config.json's genres (those it tags): the run was trained on other genres")
    elif kind == "id2label":
        _check_id2label(value, path, context)
    elif kind == "label2id":
        if value != {label: i for i, label in enumerate(context["labels"])}:
            refuse("disagrees with id2label")
    elif kind == "run path":
        parts = value.split("/")
        if not value or value.startswith("/") or ".." in parts or "\\" in value or "\x00" in value:
            refuse(f"names a file outside the run ({_shown(value)}); refusing it")
    else:
        _walk_object(spec, value, path, context, refuse)


def _walk_object(spec, value, path, context, refuse):
    if not isinstance(value, dict):
        refuse()
    fields = spec.get("fields", {})
    for name, field in fields.items():  # in declared order: a format version first, before what it governs
        if name in value:
            _walk(field, value[name], _join(path, name), context, parent=value)
        elif field.get("required"):
            raise _Violation(_join(path, name), "is missing")
    if len(value) < spec.get("min_keys", 0):
        refuse()
    for key, item in value.items():
        if key in fields:
            continue
        if spec.get("other_keys") == "refused":
            raise _Violation(_join(path, key), f"is not a field of {path or 'the file'} ({describe(spec)})")
        if "keys" in spec:
            _walk(spec["keys"], key, _join(path, key), context)
            _walk(spec["values"], item, _join(path, key), context)


def _check_id2label(value, path, context):
    if not isinstance(value, dict) or not value:
        raise _Violation(path, f"is {_shown(value)}, not {describe(FILES['config.json']['fields']['id2label'])}")
    if set(value) != {str(i) for i in range(len(value))}:
        raise _Violation(path, f"is not numbered 0..{len(value) - 1}")
    labels = [value[str(i)] for i in range(len(value))]
    for i, label in enumerate(labels):
        if not isinstance(label, str) or not label.strip():
            raise _Violation(_join(path, str(i)), f"is {_shown(label)}, not a genre name (empty)")
        if printable(label) != label or "\n" in label:
            raise _Violation(_join(path, str(i)), f"is a genre name with control characters ({printable(label)!r})")
    if len(set(labels)) != len(labels):
        raise _Violation(path, "names a genre twice")
    context["labels"] = labels


def check_file(name, payload, origin, labels=None, remedy=TRAIN_PY):
    """Check a parsed run file against FILES[name]; the run's genres (`labels`) for what must fit them.

    Returns the genres config.json's id2label names (for config.json), else `labels`. Raises a one-line UserError:
    "ORIGIN: NAME: FIELD PROBLEM; re-create the run (REMEDY)".
    """
    context = {"labels": labels}
    try:
        _walk(FILES[name], payload, "", context)
    except _Violation as violation:
        where = f"{violation.path} " if violation.path else ""
        advice = "" if "update genre-tagger" in violation.problem else f"; re-create the run ({remedy})"
        raise UserError(f"{origin}: {name}: {where}{violation.problem}{advice}") from None
    return context["labels"]


# %% docs/RUN_FORMAT.md


def _rows(spec, path):
    kind = spec["kind"]
    if path:
        required = "yes" if spec.get("required") else ""
        yield f"| `{path}` | {required} | {describe(spec)} | {spec.get('about', '')} |"
    if kind == "object":
        for name, field in spec.get("fields", {}).items():
            yield from _rows(field, _join(path, name))
        if "values" in spec:
            yield from _rows(spec["values"], _join(path, f"<{describe(spec['keys'])}>"))
    elif kind == "list" and spec["of"]["kind"] == "object":
        yield from _rows(spec["of"], f"{path}[i]")
    elif kind == "genre map" and spec["of"]["kind"] == "object":
        yield from _rows(spec["of"], _join(path, "<genre>"))


def render_markdown():
    """docs/RUN_FORMAT.md: a table per file of FILES."""
    lines = [
        "# The run format",
        "",
        "<!-- Generated from genre_tagger/run_format.py by render_markdown(); tests/test_run_format.py keeps it equal. -->",
        "",
        "What `Run.open` (predict.py, serve.py, `load_tagger`, the batch tool, export) checks in every JSON file of a",
        "run before it reads a value. A run that breaks any rule is refused in one line naming the file and the field,",
        "e.g. `error: models/run: thresholds.json: default is 1.5, not a probability in (0, 1); re-create the run",
        "(train.py)`. Numbers are finite (no NaN, no infinity, no integer too large for a float) and `true`/`false`",
        "is never a number; a genre map holds exactly the run's genres (config.json's id2label).",
        "",
        f"train.py writes format {FORMAT_VERSION} (manifest.json's `format_version`); this genre-tagger reads formats "
        f"{OLDEST_FORMAT_VERSION}-{FORMAT_VERSION} and refuses a run of a newer one by name. Fields not listed are a "
        "record of the run, not read when predicting.",
    ]
    for name, spec in FILES.items():
        lines += ["", f"## {name}", "", spec["about"][0].upper() + spec["about"][1:] + ".", ""]
        lines += ["| field | required | what it must be | meaning |", "| --- | --- | --- | --- |"]
        lines += list(_rows(spec, ""))
    return "\n".join(lines) + "\n"
