"""Rewrite a run saved before the classifier became a PreTrainedModel, so Hugging Face tools load it:

python -m genre_tagger.convert models/genre-classifier

Such a run's config.json is its encoder's own (model_type bert, distilbert, ...), so transformers would
take it for a stock model and run a random head. This writes the genre-tagger config.json (encoder
config, labels, pooling, dropout, auto_map), the same weights under the same names, and
hf_classifier.py; the tokenizer, ONNX export and everything else stay as they are. The zip beside the
folder is refreshed.
"""

import os
import shutil
import tempfile
from pathlib import Path

from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.run import Run
from genre_tagger.save import mark_own, reseal, run_folder_to_change

REWRITTEN = ("config.json", "model.safetensors", "hf_classifier.py")


def convert_run(folder):
    """Rewrite a legacy run folder in place; returns False when it already is a current run."""
    from genre_tagger.modeling import is_legacy_run, load_classifier, save_classifier

    folder = Path(folder)
    with Run.open(folder) as run:
        config = run.config
    if not is_legacy_run(config):
        return False
    model, tokenizer = load_classifier(folder, config)
    staged = mark_own(tempfile.mkdtemp(prefix=f".{folder.name}.converting-", dir=folder.parent))
    try:
        save_classifier(model, tokenizer, staged)
        # Each file is renamed into place whole: an interruption leaves the old or the new file, never half.
        for name in REWRITTEN:
            os.replace(staged / name, folder / name)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return True


def build_parser():
    parser = ArgumentParser(description="Convert a run saved by an older train.py to the current format.")
    parser.add_argument("run", help="run folder (not the zip)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = run_folder_to_change(args.run)
    if not convert_run(folder):
        print(f"{folder} is already a current run; nothing to do")
        return
    zipped = reseal(folder)
    refreshed = f"; refreshed {zipped}" if zipped else ""
    print(f"converted {folder}: Hugging Face tools now load it (trust_remote_code=True){refreshed}")


if __name__ == "__main__":
    run_main(main)
