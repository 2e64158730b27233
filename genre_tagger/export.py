"""Export an existing run to ONNX (fp32 and int8) and refresh its zip:

python -m genre_tagger.export models/genre-classifier
"""

import argparse
import sys
from pathlib import Path

from genre_tagger import UserError
from genre_tagger.runs import check_run_folder, is_ensemble, printable, write_manifest, zip_folder, zip_path_of


def main(argv=None):
    parser = argparse.ArgumentParser(description="Add an ONNX export to a run folder written by train.py.")
    parser.add_argument("run", help="run folder (not the zip)")
    args = parser.parse_args(argv)
    folder = check_run_folder(Path(args.run)) if Path(args.run).is_dir() else None
    if folder is None:
        raise UserError(f"{args.run} is not a run folder; give the folder train.py wrote (unzip a .zip first)")
    if is_ensemble(folder):
        raise UserError(f"{args.run} is an ensemble; run this on each of the runs it was built from, then rebuild it")
    from genre_tagger.modeling import export_run

    info = export_run(folder)
    write_manifest(folder)
    zip_folder(folder, zip_path_of(folder))
    print(
        f"exported {', '.join(info['files'].values())} into {folder}; predict.py uses {info['default']}; refreshed {zip_path_of(folder)}"
    )


if __name__ == "__main__":
    try:
        main()
    except UserError as err:
        print(f"error: {printable(err)}", file=sys.stderr)
        sys.exit(2)
