"""Export an existing run to ONNX (fp32 and int8) and refresh its zip:

python -m genre_tagger.export models/genre-classifier
"""

from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.run import ONNX_FILES
from genre_tagger.save import reseal, run_folder_to_change


def build_parser():
    parser = ArgumentParser(description="Add an ONNX export to a run folder written by train.py.")
    parser.add_argument("run", help="run folder (not the zip); refused if its files no longer match its manifest")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    folder = run_folder_to_change(args.run, rewritten=ONNX_FILES)
    from genre_tagger.modeling import export_run

    info = export_run(folder)
    zipped = reseal(folder, always_zip=True)
    print(
        f"exported {', '.join(info['files'].values())} into {folder}; predict.py uses {info['default']}; refreshed {zipped}"
    )


if __name__ == "__main__":
    run_main(main)
