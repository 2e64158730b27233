"""Serve a run saved by train.py over HTTP: a JSON API with dynamic batching, and a page to try it.

    python serve.py                                   # models/genre-classifier on http://127.0.0.1:8000
    python serve.py --model models/genre-classifier.zip --port 8080

Then open http://127.0.0.1:8000/ (the page) or /docs (the API), or:

    curl -s localhost:8000/v1/tag -H 'content-type: application/json' \\
         -d '{"descriptions": ["A retired hitman seeks revenge on the gangsters who killed his dog."]}'

Like predict.py's default, it runs on the run's ONNX export (onnxruntime + tokenizers) and never imports
torch. Concurrent requests are gathered for up to --batch-wait-ms into one forward pass of up to
--max-batch descriptions (--max-batch 1 turns that off). One request can only fail itself: text the
model cannot take is refused with a 4xx naming the description, and a batch that fails anyway is run
again request by request. Explanations ("explain": true) run on a worker of their own, so plain tagging
never waits behind them. A client whose headers or body stall past --header-timeout-s or --body-timeout-s
gets 408 and its connection closed. SIGTERM or Ctrl+C lets in-flight requests finish (at most
--graceful-timeout-s), then exits and says whether any were cut off.
"""

import logging
import signal
import socket
import sys

from genre_tagger import UserError
from genre_tagger.cli import ArgumentParser, run_main
from genre_tagger.run import DEFAULT_RUN
from genre_tagger.settings import MAX_CONCURRENCY, MAX_PREDICT_BATCH, bounded_float, bounded_int, threads


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
    p.add_argument("--port", type=bounded_int(0, 65535), default=8000, help="TCP port (default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=bounded_int(1, MAX_PREDICT_BATCH),
        default=64,
        help="most descriptions gathered from concurrent requests into one batch; 1 = no dynamic batching (default: %(default)s)",
    )
    p.add_argument(
        "--batch-wait-ms",
        type=bounded_float(0, 60_000),
        default=5.0,
        help="most milliseconds a batch waits, counted from its first request's arrival, for requests still on their way (a lone request never waits); 0 = take only what is already queued (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size",
        type=bounded_int(1, MAX_PREDICT_BATCH),
        default=32,
        help="descriptions per forward pass within a batch, as predict.py's --batch-size (default: %(default)s)",
    )
    p.add_argument(
        "--max-descriptions",
        type=bounded_int(1, MAX_PREDICT_BATCH),
        default=64,
        help="most descriptions in one request; more get 422 (default: %(default)s)",
    )
    p.add_argument(
        "--max-body-kb",
        type=bounded_int(1, 1 << 20),
        default=1024,
        help="largest request body in KiB; larger gets 413 (default: %(default)s)",
    )
    p.add_argument(
        "--max-explain-descriptions",
        type=bounded_int(1, MAX_PREDICT_BATCH),
        default=8,
        help='most descriptions in one "explain": true request (each costs a forward pass per word); more get 422 '
        "(default: %(default)s)",
    )
    p.add_argument(
        "--max-explain-queue",
        type=bounded_int(0, MAX_CONCURRENCY),
        default=4,
        help="most explain requests waiting while one is explained (explanations have their own worker, so plain "
        "tagging never waits behind them); more get 503 with Retry-After (default: %(default)s)",
    )
    p.add_argument(
        "--onnx-variant",
        choices=["int8", "fp32"],
        default=None,
        help="which ONNX file (default: the one train.py chose, as predict.py)",
    )
    p.add_argument("--threads", type=threads(), default=0, help="CPU threads for inference (default: 0 = all cores)")
    p.add_argument(
        "--spin",
        action="store_true",
        help="let onnxruntime's threads busy-wait between steps, as predict.py does; off by default because spinning threads take the CPU that the event loop and any other process need",
    )
    p.add_argument(
        "--graceful-timeout-s",
        type=bounded_float(0, 3600),
        default=30.0,
        help="on SIGTERM, seconds to let in-flight requests finish; any still running then get a 503, and the last line says how many (default: %(default)s)",
    )
    p.add_argument(
        "--limit-concurrency",
        type=bounded_int(1, MAX_CONCURRENCY),
        default=256,
        help="most connections and requests handled at once; past it, new requests get uvicorn's plain-text 503 (default: %(default)s)",
    )
    p.add_argument(
        "--timeout-keep-alive-s",
        type=bounded_int(1, 3600),
        default=5,
        help="whole seconds an idle keep-alive connection is kept open waiting for its next request (default: %(default)s)",
    )
    p.add_argument(
        "--header-timeout-s",
        type=bounded_float(0, 3600, low_open=True),
        default=10.0,
        help="seconds a client has, from connecting (or from the first byte of its next request), to send a "
        "request's line and headers; later gets 408 and the connection closed (default: %(default)s)",
    )
    p.add_argument(
        "--body-timeout-s",
        type=bounded_float(0, 3600, low_open=True),
        default=30.0,
        help="seconds a request's body has to arrive in full, from the end of its headers; later gets 408 and the "
        "connection closed (default: %(default)s)",
    )
    p.add_argument(
        "--review",
        metavar="DB",
        default=None,
        help="review store (a SQLite file, created on first use, or a SQLAlchemy URL): adds the review page at /review "
        "and /v1/review/... (see python -m genre_tagger.review)",
    )
    p.add_argument(
        "--review-strategy",
        choices=["uncertain", "audit", "import"],
        default="uncertain",
        help="which title the review queue offers next: uncertain (closest to a genre's default threshold), audit "
        "(most likely mislabelled) or import order (default: %(default)s)",
    )
    p.add_argument("--access-log", action="store_true", help="log every request (off: it costs throughput)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)

    try:
        import uvicorn

        from genre_tagger.deadlines import header_deadline_protocol
        from genre_tagger.serving import create_app, load_served_run
    except ImportError as err:
        raise UserError(f"serve.py needs {err.name}: pip install -r requirements-serve.txt") from None

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    listening = _listen(args.host, args.port)  # before the (slow) model load: a busy port fails at once
    if args.review:
        from genre_tagger.review import ReviewStore, database_url

        database_url(
            args.review, flag="--review"
        )  # a --review that cannot be a store fails at once, before the model load
    run = load_served_run(args.model, variant=args.onnx_variant, threads=args.threads, spinning=args.spin)
    review = (
        ReviewStore.open(args.review, flag="--review") if args.review else None
    )  # created only once the run is good
    app = create_app(
        run,
        max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms,
        batch_size=args.batch_size,
        max_descriptions=args.max_descriptions,
        max_body_bytes=args.max_body_kb * 1024,
        max_explain_descriptions=args.max_explain_descriptions,
        max_explain_queue=args.max_explain_queue,
        body_timeout_s=args.body_timeout_s,
        review=review,
        review_strategy=args.review_strategy,
    )
    port = listening.getsockname()[1]
    unverified = "" if run.description.get("verified", True) else "; files NOT verified: the run has no manifest.json"
    reviewing = f"; review page: http://{args.host}:{port}/review ({review.shown})" if review else ""
    print(
        f"serving {args.model} ({run.description['base_model']}, ONNX {run.description['onnx_variant']}, "
        f"{len(run.labels)} genres{unverified}) on http://{args.host}:{port}/ (API docs: /docs){reviewing}",
        file=sys.stderr,
        flush=True,
    )
    config = uvicorn.Config(
        app,
        access_log=args.access_log,
        timeout_graceful_shutdown=args.graceful_timeout_s,
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=args.timeout_keep_alive_s,
        http=header_deadline_protocol(args.header_timeout_s),
        server_header=False,
    )
    server = uvicorn.Server(config)
    # uvicorn stops on SIGTERM/SIGINT once in-flight requests are done (or --graceful-timeout-s ran out),
    # then re-raises the signal to the handler that was there before it: this one makes that a plain exit.
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop_signal, _exit_cleanly)
    try:
        server.run(sockets=[listening])
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        listening.close()
        if review is not None:
            review.close()
    print(stopped_message(app.cut_off, args.graceful_timeout_s), file=sys.stderr, flush=True)


def _listen(host, port):
    """The server's socket, bound here so that a busy port or a wrong --host is one line, not uvicorn's log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listening.bind((host, port))
    except (OSError, OverflowError) as err:
        listening.close()
        reason = getattr(err, "strerror", None) or str(err)
        raise UserError(
            f"could not listen on {host}:{port} ({reason}); choose another --port, or a --host of this machine"
        ) from None
    listening.set_inheritable(True)
    return listening


def stopped_message(cut_off, graceful_timeout_s):
    """What the last line after SIGTERM says: the truth about the requests that were in flight."""
    if not cut_off:
        return "stopped: in-flight requests finished"
    return (
        f"stopped: --graceful-timeout-s ({graceful_timeout_s:g} s) ran out; {cut_off} in-flight "
        f"request{'s were' if cut_off != 1 else ' was'} cut off (answered 503)"
    )


def _exit_cleanly(signum, frame):
    raise SystemExit(0)


if __name__ == "__main__":
    run_main(main)
