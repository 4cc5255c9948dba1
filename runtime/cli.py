"""``spotgen``: the worker, the embedded local stack, model tools and API keys."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.config import PREFIX, Settings

if TYPE_CHECKING:
    from runtime.local.spanreceiver import SpanReceiver
    from runtime.models.store import ModelStore

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
    settings = Settings.from_env()
    if args.check:  # an exec probe: ask the running worker's /readyz
        from runtime.ops.health import check

        if not settings.metrics_port:
            print("SPOTGEN_METRICS_PORT is 0: this worker serves no probes", file=sys.stderr)
            return 1
        ok, said = check(settings.metrics_port)
        print(said)
        return 0 if ok else 1
    from runtime.worker.app import run_worker

    if not settings.queue_url:
        raise SystemExit("SPOTGEN_QUEUE_URL is not set: the worker needs its (predefined) queue URL")
    run_worker(settings)
    return 0


def cmd_models_tiny(args: argparse.Namespace) -> int:
    from runtime.models.tiny import build_tiny_models

    build_tiny_models(Path(args.dir))
    print(f"tiny models in {args.dir}: tiny-sd, tiny-controlnet (catalog.json)")
    return 0


def _models_store(args: argparse.Namespace) -> ModelStore:
    from runtime.models.store import ModelStore

    return ModelStore(_settings(args).models_dir)


def _human(n: int) -> str:
    value, unit = float(n), "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"


def _node_cache_probe() -> Callable[[str], bool | None] | None:
    """``is_cached`` of the node-local cache (tier 1) named by ``SPOTGEN_NODE_CACHE_DIR``, or None when there is
    none here. Only reads: a listing must not create a cache on a node that has none."""
    root = os.environ.get("SPOTGEN_NODE_CACHE_DIR")
    if not root or not Path(root).is_dir():
        return None
    try:
        from runtime.models.nodecache import NodeCache
    except ImportError:
        return None
    try:
        cache = NodeCache(Path(root), budget_bytes=1)  # the budget only matters for copies; a listing makes none
    except (OSError, ValueError):
        return None

    def probe(model_id: str) -> bool | None:
        try:
            return cache.is_cached(model_id)
        except (OSError, ValueError):  # an id the cache cannot hold, or an unreadable cache: unknown
            return None

    return probe


def catalog_aliases(settings: Settings, every: bool = False) -> dict[str, str]:
    """The catalog's aliases (``SPOTGEN_ALIASES``) of the ids the API accepts, or ``every`` id it may deploy."""
    from runtime.models.catalog import Catalog
    from runtime.models.parameters import catalog_aliases as aliases_of

    return aliases_of(Catalog.load(settings.models_dir),
                      None if every else {*settings.models, *settings.controlnets, *settings.loras})


def cmd_models_aliases(args: argparse.Namespace) -> int:
    # Unless this environment names the API's ids, the catalog's own: the default lists are the tiny models'.
    settings = _settings(args)
    every = not any(PREFIX + name in os.environ for name in ("MODELS", "CONTROLNETS", "LORAS"))
    return _catalog_output(lambda: json.dumps(catalog_aliases(settings, every), indent=None if args.compact else 2))


def cmd_models_parameters(args: argparse.Namespace) -> int:
    from runtime.models.parameters import parameters_file

    return _catalog_output(lambda: parameters_file(_settings(args).models_dir))


def _catalog_output(make: Callable[[], str]) -> int:
    from runtime.models.catalog import ModelError

    try:
        text = make()
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(text.rstrip("\n"))
    return 0


def cmd_models_list(args: argparse.Namespace) -> int:
    from runtime.models.catalog import ModelError
    from runtime.models.manifests import iter_entries

    store = _models_store(args)
    try:
        entries = list(iter_entries(store))
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    probe = _node_cache_probe()
    rows = []
    for model_id, entry in entries:
        error, size = None, None
        try:
            size = store.size(model_id, entry.kind)
        except (ModelError, OSError) as exc:
            error = {"code": getattr(exc, "code", "model_unreadable"), "message": str(exc)}
        rows.append({"id": model_id, "kind": entry.kind, "family": entry.family, "revision": entry.revision,
                     "path": entry.path, "single_file": entry.single_file, "config": entry.config,
                     "size_bytes": size, "manifest": entry.manifest,
                     "cached": probe(model_id) if probe is not None else None, "error": error})
    if args.json:
        print(json.dumps({"models_dir": str(store.models_dir), "models": rows}, indent=2))
        return 0
    header = ("ID", "KIND", "FAMILY", "REVISION", "SIZE", "MANIFEST", "CACHED", "STATUS")
    table = [header] + [(
        r["id"], r["kind"] + (" (file)" if r["single_file"] else ""), r["family"], r["revision"] or "-",
        _human(r["size_bytes"]) if r["size_bytes"] is not None else "-", "yes" if r["manifest"] else "no",
        "-" if r["cached"] is None else ("yes" if r["cached"] else "no"),
        "ok" if r["error"] is None else r["error"]["code"]) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print(f"models in {store.models_dir}")
    for row in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r["error"] is not None:
            print(f"{r['id']}: {r['error']['message']}")
    return 0


def cmd_models_verify(args: argparse.Namespace) -> int:
    from runtime.models.catalog import ModelError
    from runtime.models.manifests import Verification, iter_entries, verify_model

    store = _models_store(args)
    try:
        ids = args.ids or [model_id for model_id, _ in iter_entries(store)]
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    failed = False
    width = max(len(model_id) for model_id in ids) if ids else 0
    for model_id in ids:
        result: Verification = verify_model(store, model_id)
        label = {"ok": "OK", "fail": "FAIL", "no manifest": "no manifest"}[result.status]
        detail = f"{result.files} files" if result.status == "ok" else ""
        print(f"{model_id.ljust(width)}  {label}{'  ' + detail if detail else ''}")
        for problem in result.problems[:args.max_problems]:
            print(f"    {problem}")
        if len(result.problems) > args.max_problems:
            print(f"    ... and {len(result.problems) - args.max_problems} more")
        for note in result.notes:
            print(f"    note: {note}")
        failed = failed or result.status == "fail"
    return 1 if failed else 0


def cmd_models_manifest(args: argparse.Namespace) -> int:
    from runtime.models.catalog import ModelError
    from runtime.models.manifests import write_manifest

    store = _models_store(args)
    try:
        path, files, named = write_manifest(store, args.id)
    except ModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}: {len(files)} files, {_human(store.size(args.id))}")
    if not named:
        rel = path.relative_to(store.models_dir).as_posix()
        print(f'the catalog entry of {args.id!r} names no manifest yet: add "manifest": "{rel}" to it so that '
              "`spotgen models verify` checks it")
    return 0


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def cmd_dev(args: argparse.Namespace) -> int:
    from runtime.local.demo import demo
    from runtime.local.devsettings import dev_compat, dev_webhooks
    from runtime.local.devstack import DevStack

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = _settings(args)
    if "SPOTGEN_LOG_FORMAT" not in os.environ:
        settings = settings.model_copy(update={"log_format": "text"})  # worker logs for people, not collectors
    receiver = _dev_tracing(args.demo)
    if args.demo and "SPOTGEN_PROGRESS_INTERVAL_S" not in os.environ:
        settings = settings.model_copy(update={"progress_interval_s": 0.1})  # demo jobs are short: let bars move
    if not (settings.models_dir / "catalog.json").exists():
        from runtime.models.tiny import build_tiny_models

        print(f"building tiny random-weight models in {settings.models_dir} ...", flush=True)
        build_tiny_models(settings.models_dir)
    settings, made_secret = dev_webhooks(dev_compat(settings), args.webhook_secret)
    if args.plugin:
        from runtime.kit.commands import dev_plugins

        settings = dev_plugins(settings, args.plugin, Path(".spotgen/plugin-schemas.json"))
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (ignored there)
    log_dir = Path(args.log_dir) if args.log_dir else (Path(".spotgen/logs") if args.demo else None)
    stack = DevStack(settings, port=args.port, aws_port=args.aws_port, workers=args.workers, log_dir=log_dir,
                     visibility_timeout_s=args.visibility_timeout, api_key=args.api_key)
    ok = True
    try:
        stack.start()
        if args.state_file:
            stack.write_state(Path(args.state_file))
        print(f"spotgen dev stack on 127.0.0.1\n  API         {stack.api_url}/v1/jobs\n"
              f"  AWS (S3, SNS, SQS emulator) {stack.settings.aws_endpoint_url}\n"
              f"  workers     {args.workers} (device {settings.device}, models {settings.models_dir})"
              + "".join(f"\n  metrics     {url}/metrics  (probes {url}/livez, {url}/readyz)"
                        for url in stack.metrics_urls.values())
              + (f"\n  worker logs {log_dir}" if log_dir else "")
              + ("\n  API key     required (x-api-key) on /v1alpha1, /v1alpha2, /sdapi/v1" if args.api_key else "")
              + (f"\n  webhooks    signed with {made_secret} (new; --webhook-secret sets one)" if made_secret else ""),
              flush=True)
        if args.demo:
            stack.wait_ready()
            ok = demo(stack.api_url, Path(args.out), traces=receiver)
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
        if receiver is not None:
            receiver.stop()
        if args.state_file:
            Path(args.state_file).unlink(missing_ok=True)
    return 0 if ok else 1


def _dev_tracing(demo: bool) -> SpanReceiver | None:
    """Traces in the dev stack. With an OTLP endpoint configured, the API (in this process) and the workers
    export to it. Otherwise ``--demo`` starts an in-memory receiver on loopback for the workers' spans (and
    this process's) to show per-phase timings; returns it."""
    from runtime.ops import tracing

    receiver = None
    if not tracing.enabled() and demo:
        from runtime.local.spanreceiver import SpanReceiver

        receiver = SpanReceiver().start()
        os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = receiver.endpoint  # the workers inherit it
        os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "100")  # ms: spans are there when the summary prints
    if tracing.enabled():
        provider = tracing.setup("spotgen-api", receiver.exporter() if receiver is not None else None)
        tracing.instrument(provider, celery=False)
    return receiver


def _nonempty(value: str) -> str:
    if not value.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotgen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    worker = sub.add_parser("worker", help="consume jobs from the queue (configured by SPOTGEN_* variables)")
    worker.add_argument("--check", action="store_true", help="exit 0 if the worker on this host is ready, else 1 "
                        "(asks /readyz on 127.0.0.1:$SPOTGEN_METRICS_PORT; for exec probes)")
    worker.set_defaults(func=cmd_worker)

    dev = sub.add_parser("dev", help="run the whole system locally on 127.0.0.1")
    dev.add_argument("--plugin", action="append", default=[], metavar="MODULE:CLASS",
                     help="a pipeline plugin for the workers and the API (repeatable)")
    dev.add_argument("--demo", action="store_true", help="submit four demo jobs, save PNGs, then exit")
    dev.add_argument("--port", type=int, default=8080, help="API port (0: any free port)")
    dev.add_argument("--aws-port", type=int, default=4566, help="AWS emulator port (0: any free port)")
    dev.add_argument("--workers", type=int, default=1, help="worker processes to start (0: bring your own)")
    dev.add_argument("--visibility-timeout", type=int, default=60, metavar="S",  # provision.VISIBILITY_TIMEOUT_S
                     help="the work queue's visibility timeout (the worker's lease takes over once a job starts)")
    dev.add_argument("--models", help=f"models directory with catalog.json (default {DEFAULT_MODELS_DIR})")
    dev.add_argument("--device", help="torch device for the workers, e.g. cuda")
    dev.add_argument("--out", default="out", help="where --demo saves its PNGs")
    dev.add_argument("--log-dir", help="write worker logs here instead of the terminal")
    dev.add_argument("--state-file", help="write the stack's URLs and settings here as JSON once ready")
    dev.add_argument("--api-key", metavar="KEY", type=_nonempty, help="require this x-api-key on the compatibility "
                     "routes, as the deployed authorizer does (default: they are open on loopback)")
    dev.add_argument("--webhook-secret", metavar="whsec_...", type=_nonempty,
                     help="sign webhooks with this secret (default: a new one, printed)")
    dev.set_defaults(func=cmd_dev)

    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    tiny = models_sub.add_parser("tiny", help="build tiny random-weight models (diffusers format) in DIR")
    tiny.add_argument("dir")
    tiny.set_defaults(func=cmd_models_tiny)
    models_dir_help = f"models directory with catalog.json (default $SPOTGEN_MODELS_DIR or {DEFAULT_MODELS_DIR})"
    listing = models_sub.add_parser("list", help="the catalog with sizes on disk, manifests and node-cache state")
    listing.add_argument("--models", help=models_dir_help)
    listing.add_argument("--json", action="store_true", help="one JSON document instead of a table")
    listing.set_defaults(func=cmd_models_list)
    verify = models_sub.add_parser("verify", help="check models against their manifests, xxh3_128 or sha256 "
                                   "(exit 1 on a mismatch)")
    verify.add_argument("ids", nargs="*", metavar="ID", help="catalog ids (default: every entry)")
    verify.add_argument("--models", help=models_dir_help)
    verify.add_argument("--max-problems", type=int, default=5, help="problems shown per model (default 5)")
    verify.set_defaults(func=cmd_models_verify)
    manifest = models_sub.add_parser("manifest", help="hash a model's files (xxh3_128; sha256 manifests written "
                                     "before still verify) and write its manifest (the path the catalog entry "
                                     "names, else manifests/ID.json)")
    manifest.add_argument("id", metavar="ID")
    manifest.add_argument("--models", help=models_dir_help)
    manifest.set_defaults(func=cmd_models_manifest)
    aliases = models_sub.add_parser("aliases", help="print the catalog's aliases as JSON, the value of "
                                    "SPOTGEN_ALIASES for the API (docs/migrating.md)")
    aliases.add_argument("--models", help=models_dir_help)
    aliases.add_argument("--compact", action="store_true", help="on one line")
    aliases.set_defaults(func=cmd_models_aliases)
    parameters = models_sub.add_parser("parameters", help="the API stack's model parameters, from the catalog")
    parameters.add_argument("--models", help=models_dir_help)
    parameters.set_defaults(func=cmd_models_parameters)
    from runtime.local import apikey

    apikey.register(sub)
    from runtime.kit import commands as kit_commands

    kit_commands.register(sub, DEFAULT_MODELS_DIR)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
