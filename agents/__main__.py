"""``python -m agents serve --model M --replicas N --port P``: start vLLM sampler/teacher servers.

Prints one URL per line once every replica is healthy (the value for ``sampler_urls=`` or
``teacher_url=``), then waits; Ctrl-C or SIGTERM stops every server it started.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agents")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="start vLLM OpenAI-compatible servers of a model")
    serve.add_argument("--model", required=True, help="bundled name, HF directory or Hub id")
    serve.add_argument("--replicas", type=int, default=1)
    serve.add_argument("--port", type=int, default=8000, help="first port (replica i: port + i)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--dtype", default="float32")
    serve.add_argument("--max-model-len", type=int, default=2048)
    serve.add_argument("--no-lora", action="store_true", help="do not serve runtime LoRA adapters")
    serve.add_argument("--log-dir", default=None)
    args = parser.parse_args(argv)

    from agents.errors import AgentsError
    from agents.models import resolve_model_dir
    from agents.server import ServerFleet

    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    fleet = ServerFleet(str(resolve_model_dir(args.model)), replicas=args.replicas, port=args.port,
                        host=args.host, dtype=args.dtype, max_model_len=args.max_model_len,
                        enable_lora=not args.no_lora, log_dir=args.log_dir)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        fleet.start()
    except (AgentsError, KeyboardInterrupt) as exc:
        print(f"serve: {exc}", file=sys.stderr)
        return 1
    print(f"serve: {args.replicas} server(s) healthy after {fleet.start_s:.1f} s", file=sys.stderr)
    for url in fleet.urls:
        print(url, flush=True)
    try:
        while not stop.wait(1.0):
            if any(p.poll() is not None for p in fleet.procs):
                print("serve: a server exited; stopping the others", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        pass
    finally:
        fleet.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
