"""Which words made each genre: word-level occlusion (leave one word out), no torch and no gradients.

For a text of n words, n variants each lack one word; they run in one batch through the tagger's own
`probabilities` (ONNX int8 or fp32, PyTorch, an ensemble: anything with that method). The score of word i
for genre g is p(text) - p(text without word i): positive pushed g up, negative pushed it down.

A word is a run of letters/digits (with inner apostrophes or hyphens: "don't", "ex-cop"); punctuation is
never removed. Offsets (start, end) index the ORIGINAL text, so a page can highlight text[start:end].
A text longer than the model's token limit is explained on what the model saw (the words within its first
`max_length` tokens), flagged `"truncated": true`.

The text and its variants always run as one batch of their own (chunks of EXPLAIN_TOKENS tokens), whatever
else is being tagged: int8 numbers depend slightly on batch composition, so predict.py and serve.py agree.
"""

import json
import re

import numpy as np

WORD = re.compile(r"\w+(?:['’\-]\w+)*")
EXPLAIN_TOKENS = 8192  # tokens (rows x length) per forward pass of a text and its variants: memory stays bounded
DEFAULT_WORDS = 5


def word_spans(text):
    """(start, end) of every word in `text`, in order."""
    return [m.span() for m in WORD.finditer(text)]


def without(text, start, end):
    """`text` without text[start:end]; a space left doubled by the removal collapses to one."""
    if 0 < start and end < len(text) and text[start - 1].isspace() and text[end].isspace():
        end += 1
    return text[:start] + text[end:]


def _tokenizers(tagger):
    """The `tokenizers.Tokenizer`s (truncating at the model's limit) the tagger reads with; [] if unknown."""
    return list(getattr(tagger, "tokenizers", []))


def seen_part(tagger, text):
    """(characters of `text` the model reads, truncated?, its length in tokens): the model reads its first
    `max_length` tokens (without a tokenizer to ask, all of it, counted as 2 tokens a word)."""
    seen_end, truncated, tokens = len(text), False, 2 * len(word_spans(text)) + 2
    tokenizers = _tokenizers(tagger)
    if tokenizers:
        seen_end, tokens = 0, 0
        for tokenizer in tokenizers:
            encoding = tokenizer.encode(text)
            tokens = max(tokens, len(encoding.ids))
            ends = [end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask) if not special]
            if encoding.overflowing:
                truncated = True
                seen_end = max(seen_end, max(ends, default=0))
            else:
                seen_end = len(text)
    return seen_end, truncated, tokens


def _word_scores(tagger, text):
    """(spans, full probabilities, scores of shape (words, genres)) for the part of `text` the model reads."""
    seen_end, truncated, tokens = seen_part(tagger, text)
    base = text[:seen_end]
    spans = [(s, e) for s, e in word_spans(base)]
    rows = [base] + [without(base, s, e) for s, e in spans]
    rows = [row if row.strip() else "." for row in rows]  # a one-word text without its word: nothing left
    batch = max(4, min(len(rows), EXPLAIN_TOKENS // max(tokens, 1)))
    probabilities = np.asarray(tagger.probabilities(rows, batch), dtype=np.float64)
    return spans, truncated, probabilities[0] - probabilities[1:]


def explain(tagger, texts, thresholds, top_k=None, words=DEFAULT_WORDS, probabilities=None, labels=None, min_genres=0):
    """Per text: {"truncated": bool, "genres": [{"genre", "probability", "up": [...], "down": [...]}, ...]}.

    Genres are those at or above `thresholds` (a number, or per-genre as Run.thresholds_for returns them),
    highest first, at most `top_k` and at least `min_genres` (as metrics.decode tags them); `probabilities`
    (the tags already computed for `texts`) choose them when given, so the explained genres are the tagged ones. "up"/"down": at most `words` words each,
    {"word", "start", "end", "score"}, strongest first; score = p(text) - p(text without the word).
    """
    from genre_tagger.metrics import decode

    texts = list(texts)
    labels = list(labels if labels is not None else tagger.labels)
    if probabilities is None:
        probabilities = tagger.probabilities(texts, 32)
    results = []
    for text, genres in zip(texts, decode(np.asarray(probabilities), labels, thresholds, top_k, min_genres)):
        entry = {"truncated": False, "genres": []}
        if genres:
            spans, entry["truncated"], scores = _word_scores(tagger, text)
            for genre, probability in genres:
                column = scores[:, labels.index(genre)] if spans else np.zeros(0)
                order = np.argsort(-column, kind="stable")
                found = [
                    {"word": text[s:e], "start": s, "end": e, "score": round(float(column[i]), 4)}
                    for i, (s, e) in ((i, spans[i]) for i in order)
                ]
                entry["genres"].append(
                    {
                        "genre": genre,
                        "probability": round(float(probability), 4),
                        "up": [w for w in found if w["score"] > 0][:words],
                        "down": [w for w in reversed(found) if w["score"] < 0][:words],
                    }
                )
        else:
            entry["truncated"] = seen_part(tagger, text)[1]
        results.append(entry)
    return results


def explained(tagger, args, texts, thresholds, probabilities, labels):
    """predict.py's: with --explain, each text's explanation of its tagged genres (--max/--min-genres), else None."""
    if not args.explain:
        return None
    return explain(
        tagger,
        texts,
        thresholds,
        args.max_genres,
        probabilities=probabilities,
        labels=labels,
        min_genres=args.min_genres,
    )


def compact(explanation):
    """One CSV cell: the explanation as compact JSON."""
    return json.dumps(explanation, ensure_ascii=False, separators=(",", ":"))


def format_explanation(explanation, indent="  "):
    """Readable lines for a terminal: each genre, then the words that pushed it up and down, with scores."""
    lines = []
    for genre in explanation["genres"]:
        lines.append(f"{indent}{genre['genre']} {genre['probability']:.2f}")
        for key, sign in (("up", "+"), ("down", "-")):
            shown = ", ".join(f"{w['word']} {w['score']:+.3f}" for w in genre[key]) or "(none)"
            lines.append(f"{indent}  {sign} {shown}")
    if explanation["truncated"]:
        lines.append(f"{indent}(explained on the words the model read: the description is longer than its limit)")
    if not explanation["genres"]:
        lines.append(f"{indent}(no genre at or above the threshold to explain)")
    return "\n".join(lines)


def html(text, genre_explanation):
    """`text` as HTML with the genre's up words green and down words red (for a notebook)."""
    from html import escape

    marks = {(w["start"], w["end"]): ("#b7f0b1", w["score"]) for w in genre_explanation["up"]}
    marks.update({(w["start"], w["end"]): ("#f7b5b5", w["score"]) for w in genre_explanation["down"]})
    parts, at = [], 0
    for (start, end), (colour, score) in sorted(marks.items()):
        parts.append(escape(text[at:start]))
        title = f"{score:+.3f}"
        parts.append(f'<span style="background:{colour}" title="{title}">{escape(text[start:end])}</span>')
        at = end
    parts.append(escape(text[at:]))
    return (
        f"<p><b>{escape(genre_explanation['genre'])}</b> {genre_explanation['probability']:.2f}: {''.join(parts)}</p>"
    )
