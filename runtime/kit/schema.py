"""The plugin schema file: each pipeline's ``Inputs`` as JSON Schema, for the submit API.

A Lambda cannot import plugin code (nor torch), so without this file the API can only bound a plugin's inputs in
size and a bad input is found on a worker after a queue round trip. ``spotgen pipeline schema NAME ...`` writes
the pipelines' schemas (pydantic's own ``model_json_schema``, JSON Schema draft 2020-12) with a digest of each;
the deployment ships the file with the Lambda (``SPOTGEN_PLUGIN_SCHEMAS``, docs/deploy.md), the API validates
plugin inputs with it and stamps the digest on the job, and a worker whose ``Inputs`` have another digest fails
the job as ``schema_mismatch`` rather than judging inputs the API judged by other rules.

The digest is the one a worker computes (``runtime.worker.schemas``): run the command where the plugin version
and pydantic are the workers' own (their image), so both sides derive the schema from the same code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from runtime.contract.jobs import PLUGIN_SCHEMAS_VERSION, schema_digest
from runtime.plugins import Pipeline, PluginError, Registry

__all__ = ["add_schema_command", "schema_digest", "schema_of", "schemas_document", "write_schemas"]


def schema_of(cls: type[Pipeline]) -> dict[str, Any]:
    """The pipeline's request schema: its ``Inputs`` model as JSON Schema (what the worker validates with)."""
    return cls.Inputs.model_json_schema()


def schemas_document(classes: Iterable[type[Pipeline]]) -> dict[str, Any]:
    """``{"version": 1, "pipelines": {name: {"schema": ..., "digest": ...}}}`` for ``classes``."""
    pipelines = {}
    for cls in classes:
        schema = schema_of(cls)
        pipelines[cls.name] = {"schema": schema, "digest": schema_digest(schema)}
    return {"version": PLUGIN_SCHEMAS_VERSION, "pipelines": pipelines}


def dumps(document: dict[str, Any]) -> str:
    """The document as the file holds it: indented and sorted, so that two builds of one version diff empty."""
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def write_schemas(classes: Iterable[type[Pipeline]], path: Path | str) -> Path:
    """Write the schema document of ``classes`` to ``path`` (its folder is created); returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(dumps(schemas_document(classes)), encoding="utf-8")
    return target


def cmd_schema(args: argparse.Namespace) -> int:
    """``spotgen pipeline schema``: the document for the named pipelines, on stdout or in ``--out``."""
    try:
        registry = Registry.default(args.plugin)
    except (PluginError, ImportError, AttributeError) as exc:
        print(f"spotgen pipeline schema: cannot register the pipelines: {exc}", file=sys.stderr)
        return 2
    unknown = [name for name in args.names if registry.get(name) is None]
    if unknown:
        print(f"spotgen pipeline schema: no pipeline named {', '.join(map(repr, unknown))}; registered: "
              f"{', '.join(registry.names())} (add a plugin with --plugin module:Class)", file=sys.stderr)
        return 2
    classes = [registry.get(name) for name in dict.fromkeys(args.names)]
    try:
        document = schemas_document(cls for cls in classes if cls is not None)
    except Exception as exc:  # pydantic cannot express a field's type as JSON Schema
        print(f"spotgen pipeline schema: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(dumps(document))
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(dumps(document), encoding="utf-8")
        print(f"wrote the schemas of {', '.join(document['pipelines'])} to {args.out}", file=sys.stderr)
    return 0


def add_schema_command(pipeline_subparsers: Any) -> argparse.ArgumentParser:
    """Register ``schema`` under ``spotgen pipeline`` (``pipeline_subparsers``: that command's
    ``add_subparsers()`` action); returns its parser."""
    parser = pipeline_subparsers.add_parser(
        "schema", help="write the JSON schemas of pipelines' inputs, for the submit API (SPOTGEN_PLUGIN_SCHEMAS)",
        description="Print (or write to --out) the schema file the submit API validates plugin inputs with: "
                    "each named pipeline's Inputs as JSON Schema and its digest. Run it where the plugin version "
                    "is the workers' (their image), so the digests match theirs.")
    parser.add_argument("names", nargs="+", metavar="NAME", help="pipeline names (see `registered:` on a typo)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE:CLASS",
                        help="a pipeline class to register besides the built-ins and entry points (repeatable)")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the document here instead of stdout")
    parser.set_defaults(func=cmd_schema)
    return parser
