"""Serves a GGUF model on 127.0.0.1 with llama.cpp's OpenAI-compatible HTTP server (xllamacpp).

    serve.py --model PATH [--port 0] [--ctx 4096] [--threads 1] [--parallel 1] [--max-tokens N]
             [--verbose]

Prints `listening http://127.0.0.1:PORT` on stdout once the model is loaded and the server answers
(`--port 0` picks a free port). llama.cpp's own log goes to stderr: for each request the prompt's
size, how much of it was cached, and its prompt and generation timings (`print_timing` lines).
Exits on SIGTERM or SIGINT, and by itself when the process that started it dies, so a test that is
killed never leaves a model server behind. Context, threads and slots are bounded: a request longer
than the context is refused by the server (HTTP 400) rather than slowing the machine down.
"""

import argparse
import os
import signal
import sys
import threading
import time

# Longest a shutdown may take before the process exits regardless (a request may be mid-decode).
SHUTDOWN_GRACE_S = 5.0
# How often the parent is checked.
PARENT_POLL_S = 0.5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="path of a .gguf file")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--ctx", type=int, default=4096, help="context length (tokens) of a slot")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for decoding")
    parser.add_argument("--parallel", type=int, default=1, help="requests served at once")
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=-1,
        help="cap on generated tokens when a request sets none (-1: no cap)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="log every streamed chunk and the request's grammar too (thousands of lines a request)",
    )
    args = parser.parse_args()
    if not os.path.isfile(args.model):
        print(f"serve.py: no model at {args.model}", file=sys.stderr)
        return 2

    parent = os.getppid()
    stop = threading.Event()

    def on_signal(signum, _frame):
        print(f"serve.py: signal {signum}, stopping", file=sys.stderr, flush=True)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    import xllamacpp

    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.n_ctx = args.ctx * args.parallel
    params.n_parallel = args.parallel
    params.port = args.port
    params.hostnames = ["127.0.0.1"]
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_threads_http = 2 + args.parallel
    params.n_predict = args.max_tokens
    params.ui = False
    if args.verbose:
        params.verbosity = 5

    started = time.monotonic()
    server = xllamacpp.Server(params)
    address = server.listening_address
    print(
        f"serve.py: {os.path.basename(args.model)} loaded in {time.monotonic() - started:.2f} s "
        f"(ctx {args.ctx}, {args.threads} threads, {args.parallel} slots)",
        file=sys.stderr,
        flush=True,
    )
    print(f"listening {address}", flush=True)

    while not stop.wait(PARENT_POLL_S):
        if os.getppid() != parent:
            print("serve.py: the parent process is gone, stopping", file=sys.stderr, flush=True)
            break

    # Stopping may wait for a request in flight; never longer than the grace period.
    watchdog = threading.Timer(SHUTDOWN_GRACE_S, lambda: os._exit(0))
    watchdog.daemon = True
    watchdog.start()
    del server
    sys.stderr.flush()
    # Straight out: the interpreter's own shutdown can wait on the native server's threads.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
