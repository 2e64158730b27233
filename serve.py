"""Serve a run saved by train.py over HTTP: a JSON API with dynamic batching, and a page to try it.

    python serve.py                                   # models/genre-classifier on http://127.0.0.1:8000
    python serve.py --model models/genre-classifier.zip --port 8080

Then open http://127.0.0.1:8000/ (the page) or /docs (the API), or:

    curl -s localhost:8000/v1/tag -H 'content-type: application/json' \\
         -d '{"descriptions": ["A retired hitman seeks revenge on the gangsters who killed his dog."]}'

Like predict.py's default, it runs on the run's ONNX export (onnxruntime + tokenizers) and never imports
torch. Concurrent requests are gathered for up to --batch-wait-ms into one forward pass of up to
--max-batch descriptions (--max-batch 1 turns that off). SIGTERM or Ctrl+C finishes in-flight requests,
then exits.
"""

import logging
import signal
import sys

from genre_tagger import UserError
from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.run import DEFAULT_RUN
from genre_tagger.settings import serve_settings_problem


def build_parser():
    p = ArgumentParser(description="Serve a trained genre tagger over HTTP (JSON API and a web page).")
    p.add_argument(
        "--model",
        default=str(DEFAULT_RUN),
        help="run folder or its .zip, as written by train.py (default: %(default)s)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 0.0.0.0 exposes it to the network (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=64,
        help="most descriptions gathered from concurrent requests into one batch; 1 = no dynamic batching (default: %(default)s)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=float,
        default=5.0,
        help="most milliseconds a batch waits, counted from its first request's arrival, for requests still on their way (a lone request never waits); 0 = take only what is already queued (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=32,
        help="descriptions per forward pass within a batch, as predict.py's --batch-size (default: %(default)s)",
    )
    p.add_argument(
        "--max-descriptions",
        type=int,
        default=64,
        help="most descriptions in one request; more get 422 (default: %(default)s)",
    )
    p.add_argument(
        "--max-body-kb",
        type=int,
        default=1024,
        help="largest request body in KiB; larger gets 413 (default: %(default)s)",
    )
    p.add_argument(
        "--onnx-variant",
        choices=["int8", "fp32"],
        default=None,
        help="which ONNX file (default: the one train.py chose, as predict.py)",
    )
    p.add_argument("--threads", type=int, default=0, help="CPU threads for inference (default: 0 = all cores)")
    p.add_argument(
        "--spin",
        action="store_true",
        help="let onnxruntime's threads busy-wait between steps, as predict.py does; off by default because spinning threads take the CPU that the event loop and any other process need",
    )
    p.add_argument(
        "--graceful-timeout-s",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds to let in-flight requests finish before exiting anyway (default: %(default)s)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    if problem := serve_settings_problem(args):
        raise UserError(problem)

    try:
        import uvicorn

        from genre_tagger.serving import create_app, load_served_run
    except ImportError as err:
        raise UserError(f"serve.py needs {err.name}: pip install -r requirements-serve.txt") from None

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    run = load_served_run(args.model, variant=args.onnx_variant, threads=args.threads, spinning=args.spin)
    app = create_app(
        run,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        batch_size=args.batch_size,
        max_descriptions=args.max_descriptions,
        max_body_bytes=args.max_body_kb * 1024,
    )
    print(
        f"serving {args.model} ({run.description['base_model']}, ONNX {run.description['onnx_variant']}, "
        f"{len(run.labels)} genres) on http://{args.host}:{args.port}/ (API docs: /docs)",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout_s,
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn stops on SIGTERM/SIGINT once in-flight requests are done, then re-raises the signal to the
    # handler that was there before it: this one turns that into a plain exit 0 instead of a kill.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    try:
        server.run()
    except SystemExit as stop:
        if stop.code == 0 or server.started:
            raise
        raise UserError(f"could not listen on {args.host}:{args.port} (in use?); choose another --port") from None
    print("stopped: in-flight requests finished", file=sys.stderr)


def _exit_cleanly(signum, frame):
    print("stopped: in-flight requests finished", file=sys.stderr)
    raise SystemExit(0)


if __name__ == "__main__":
    run_main(main)
