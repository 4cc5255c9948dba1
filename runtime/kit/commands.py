"""The plugin kit's commands: ``spotgen run`` (one pipeline run in this process, cog's ``predict``) and
``spotgen pipeline new`` / ``schema``.

``spotgen run`` needs no emulator, queue or API: it runs the pipeline through ``runtime.kit.local`` with the real
model store, draws a progress bar (rich), and writes PNGs with the parameters embedded as a worker stores them.
``--interrupt-at K`` also stops a second run after step K as a spot interruption does, resumes it from the
serialized checkpoint and checks that the bytes are those of the uninterrupted run. Exit status: 0 done (and
identical), 1 the pipeline failed or the resumed run differs, 2 bad usage (the flag is named).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from runtime.config import Settings
from runtime.plugins import PluginError

OK, FAILED, USAGE = 0, 1, 2


def _value(text: str) -> Any:
    """``--input`` values are JSON where they parse (numbers, booleans, lists), else strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: give NAME=VALUE")
        out[key] = value
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from runtime.kit.local import LocalRun, output_bytes  # torch: only for the command that runs a pipeline

    settings = Settings.from_env()
    models = Path(args.models) if args.models else args.default_models
    if not args.models and not (models / "catalog.json").exists():
        from runtime.models.tiny import build_tiny_models

        print(f"building tiny random-weight models in {models} ...", file=sys.stderr, flush=True)
        build_tiny_models(models)
    try:
        kit = LocalRun(models, args.device or settings.device, [*settings.plugins, *args.plugin])
        cls = kit.registry.get(args.pipeline)
        if cls is None:
            raise ValueError(f"PIPELINE {args.pipeline!r} is not registered; registered: "
                             f"{', '.join(kit.registry.names())} (add yours with --plugin module:Class)")
        fields = {key: _value(value) for key, value in _pairs(args.input or [], "--input").items()}
        images = _images(args.image or [], cls.image_fields or _builtin_image_field(args.pipeline))
        kit.inputs(args.pipeline, fields, images)  # a bad input is a usage error before anything loads
    except (ValueError, PluginError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    parameters = {"pipeline": args.pipeline, "model": args.model, "seed": args.seed, **fields}
    with Progress(TextColumn(f"{args.pipeline} [dim]{args.model}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), disable=args.quiet) as bar:
        task = bar.add_task("run", total=None)

        def run(**options: Any) -> Any:
            bar.reset(task, total=None)
            return kit.run(args.pipeline, args.model, fields, seed=args.seed, images=images,
                           on_step=lambda step, total: bar.update(task, completed=step, total=total), **options)

        try:
            outcome = run()
            resumed = None
            if args.interrupt_at is not None:
                stopped = run(stop_at=args.interrupt_at)
                if stopped.checkpoint is None:
                    print(f"error: --interrupt-at {args.interrupt_at}: the pipeline gave no state at that step "
                          "(checkpoints = False, or ctx.progress instead of ctx.step)", file=sys.stderr)
                    return FAILED
                resumed = run(resume_from=stopped.checkpoint)
        except Exception as exc:  # noqa: BLE001 - the pipeline's own failure, reported as a worker would
            print(f"error: {args.pipeline} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return FAILED
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files, extension = output_bytes(outcome.images, parameters, fields)
    for index, data in enumerate(files):
        path = out / f"{args.pipeline}-{args.seed}-{index}.{extension}"
        path.write_bytes(data)
        print(path)
    if resumed is not None:
        if output_bytes(resumed.images, parameters, fields)[0] != files:
            print(f"resumed after step {args.interrupt_at}: the images DIFFER from the uninterrupted run",
                  file=sys.stderr)
            return FAILED
        print(f"resumed after step {args.interrupt_at}: the same bytes as the uninterrupted run")
    return OK


def _builtin_image_field(pipeline: str) -> tuple[str, ...]:
    return {"img2img": ("image",), "controlnet": ("control_image",)}.get(pipeline, ())


def _images(items: list[str], fields: tuple[str, ...]) -> dict[str, Any]:
    """``--image PATH`` fills the pipeline's first image input; ``--image FIELD=PATH`` names it."""
    from runtime.kit.local import load_image

    out = {}
    for item in items:
        field, sep, path = item.partition("=")
        if not sep:
            if not fields:
                raise ValueError("--image: the pipeline has no image input (image_fields); name it as FIELD=PATH")
            field, path = fields[0], item
        if not Path(path).is_file():
            raise ValueError(f"--image {item!r}: no such file")
        out[field] = load_image(Path(path))
    return out


def cmd_new(args: argparse.Namespace) -> int:
    from runtime.kit.scaffold import scaffold

    try:
        root = scaffold(args.name, Path(args.dir))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE
    print(f"wrote {root}: pip install -e {root} && pytest {root}")
    return OK


def dev_plugins(settings: Settings, paths: list[str], schemas: Path) -> Settings:
    """``spotgen dev --plugin module:Class``: the plugin on the workers (``SPOTGEN_PLUGINS``) and on the API (its
    name in ``SPOTGEN_EXTRA_PIPELINES``, its input schema in ``SPOTGEN_PLUGIN_SCHEMAS``, written to ``schemas``), in
    one flag. A class that breaks the plugin contract stops here, with the reason."""
    from runtime.plugins import check_pipeline, load_object

    classes = [check_pipeline(load_object(path), path) for path in paths]
    if not classes:
        return settings
    from runtime.kit.schema import write_schemas

    write_schemas(classes, schemas)
    names = [cls.name for cls in classes]
    return settings.model_copy(update={"plugins": [*settings.plugins, *paths], "plugin_schemas": schemas.resolve(),
                                       "extra_pipelines": [*settings.extra_pipelines,
                                                           *(n for n in names if n not in settings.extra_pipelines)]})


def register(sub: Any, default_models: Path) -> None:
    """Add ``run`` and ``pipeline`` to the ``spotgen`` command's subcommands; ``default_models``: the models
    directory without ``--models`` or ``SPOTGEN_MODELS_DIR`` (the tiny models are built there when it is empty)."""
    run = sub.add_parser("run", help="run a pipeline once in this process and write its PNGs (no stack needed)")
    run.add_argument("pipeline", metavar="PIPELINE")
    run.add_argument("--model", required=True, help="catalog id of the base model, e.g. tiny-sd")
    run.add_argument("--input", action="append", metavar="NAME=VALUE", help="an input (JSON where it parses)")
    run.add_argument("--image", action="append", metavar="[FIELD=]PATH", help="a local input image")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--device", help="torch device, e.g. cuda (default $SPOTGEN_DEVICE or cpu)")
    run.add_argument("--models", help="models directory with catalog.json (default $SPOTGEN_MODELS_DIR)")
    run.add_argument("--plugin", action="append", default=[], metavar="MODULE:CLASS", help="register a pipeline")
    run.add_argument("--interrupt-at", type=int, metavar="K", help="also check that a resume from step K gives "
                     "the same bytes")
    run.add_argument("--out", default="out", help="where the PNGs go (default out/)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run, default_models=Path(os.environ.get("SPOTGEN_MODELS_DIR", default_models)))
    pipeline = sub.add_parser("pipeline", help="plugin tools: a new plugin package, its input schema")
    pipeline_sub = pipeline.add_subparsers(dest="pipeline_command", required=True)
    new = pipeline_sub.add_parser("new", help="write a plugin package NAME/ that installs and tests straight away")
    new.add_argument("name", metavar="NAME")
    new.add_argument("--dir", default=".", help="where NAME/ goes (default .)")
    new.set_defaults(func=cmd_new)
    from runtime.kit.schema import add_schema_command

    add_schema_command(pipeline_sub)
