"""``spotgen``: the worker, the embedded local stack and model tools."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import time
from pathlib import Path

from runtime.config import Settings

DEFAULT_MODELS_DIR = Path(".spotgen/models")


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings.from_env()
    updates = {}
    if getattr(args, "models", None):
        updates["models_dir"] = Path(args.models)
    elif "SPOTGEN_MODELS_DIR" not in os.environ:
        updates["models_dir"] = DEFAULT_MODELS_DIR
    if getattr(args, "device", None):
        updates["device"] = args.device
    return settings.model_copy(update=updates)


def cmd_worker(args: argparse.Namespace) -> int:
    from runtime.celery_app import run_worker

    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not settings.queue_url:
        raise SystemExit("SPOTGEN_QUEUE_URL is not set: the worker needs its (predefined) queue URL")
    run_worker(settings)
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from runtime.tiny import build_tiny_models

    build_tiny_models(Path(args.dir))
    print(f"tiny models in {args.dir}: tiny-sd, tiny-controlnet (catalog.json)")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_dev(args: argparse.Namespace) -> int:
    from runtime.demo import demo
    from runtime.devstack import DevStack

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
    if args.demo and "SPOTGEN_PROGRESS_INTERVAL_S" not in os.environ:
        settings = settings.model_copy(update={"progress_interval_s": 0.1})  # demo jobs are short: let bars move
    if not (settings.models_dir / "catalog.json").exists():
        from runtime.tiny import build_tiny_models

        print(f"building tiny random-weight models in {settings.models_dir} ...", flush=True)
        build_tiny_models(settings.models_dir)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (ignored there)
    log_dir = Path(args.log_dir) if args.log_dir else (Path(".spotgen/logs") if args.demo else None)
    stack = DevStack(settings, port=args.port, aws_port=args.aws_port, workers=args.workers, log_dir=log_dir,
                     visibility_timeout_s=args.visibility_timeout)
    ok = True
    try:
        stack.start()
        if args.state_file:
            stack.write_state(Path(args.state_file))
        print(f"spotgen dev stack on 127.0.0.1\n  API         {stack.api_url}/v1/jobs\n"
              f"  AWS (S3, SNS, SQS emulator) {stack.settings.aws_endpoint_url}\n"
              f"  workers     {args.workers} (device {settings.device}, models {settings.models_dir})"
              + (f"\n  worker logs {log_dir}" if log_dir else ""), flush=True)
        if args.demo:
            ok = demo(stack.api_url, Path(args.out))
        else:
            print("Ctrl-C stops everything.", flush=True)
            while True:
                stack.check_workers()
                time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping ...", flush=True)
    except RuntimeError as exc:  # a worker died: say so plainly, then stop the rest
        print(f"error: {exc}", file=sys.stderr, flush=True)
        ok = False
    finally:
        stack.stop()
        if args.state_file:
            Path(args.state_file).unlink(missing_ok=True)
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="consume jobs from the queue (configured by SPOTGEN_* variables)")
    worker.set_defaults(func=cmd_worker)

    dev = sub.add_parser("dev", help="run the whole system locally on 127.0.0.1")
    dev.add_argument("--demo", action="store_true", help="submit three demo jobs, save PNGs, then exit")
    dev.add_argument("--port", type=int, default=8080, help="API port (0: any free port)")
    dev.add_argument("--aws-port", type=int, default=4566, help="AWS emulator port (0: any free port)")
    dev.add_argument("--workers", type=int, default=1, help="worker processes to start (0: bring your own)")
    dev.add_argument("--visibility-timeout", type=int, default=300, metavar="S",
                     help="the work queue's visibility timeout (the worker's lease takes over once a job starts)")
    dev.add_argument("--models", help=f"models directory with catalog.json (default {DEFAULT_MODELS_DIR})")
    dev.add_argument("--device", help="torch device for the workers, e.g. cuda")
    dev.add_argument("--out", default="out", help="where --demo saves its PNGs")
    dev.add_argument("--log-dir", help="write worker logs here instead of the terminal")
    dev.add_argument("--state-file", help="write the stack's URLs and settings here as JSON once ready")
    dev.set_defaults(func=cmd_dev)

    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    tiny = models_sub.add_parser("tiny", help="build tiny random-weight models (diffusers format) in DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_models_tiny)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
