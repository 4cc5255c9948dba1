"""Plugin inputs checked at the API, with the schema file of ``spotgen pipeline schema`` (``SPOTGEN_PLUGIN_SCHEMAS``).

A Lambda cannot import plugin code, so it validates a plugin's inputs against the JSON Schema its ``Inputs``
produce, with the maintained ``jsonschema`` library (draft 2020-12, the draft pydantic writes): a bad input is a
400 naming ``inputs.<field>`` at once instead of a failed job after a queue round trip. Formats (``uri``,
``date-time``) are annotations in 2020-12 and stay so here; pydantic's own rules beyond the schema (validators
written in Python) are the worker's to apply.

The file is read once per warm Lambda, on the first request that needs it, and each schema is checked then
(its digest too, so a hand-edited file is refused rather than stamping jobs with a digest no worker has). A file
that cannot be used fails every plugin request with ``Unavailable``, which the routes answer with a 500 naming
``SPOTGEN_PLUGIN_SCHEMAS``: the deployment is wrong and a retry will not help. Built-in pipelines never need it.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from typing import Any

from runtime.config import Settings
from runtime.contract import ContractError, schema_digest
from runtime.contract.jobs import PLUGIN_SCHEMAS_VERSION

log = logging.getLogger("spotgen.api")


class Unavailable(Exception):
    """The schema file is missing or malformed; the message names the setting, the path and what is wrong."""


@dataclass(frozen=True)
class Schema:
    """One pipeline's schema: its validator and the digest its jobs carry."""

    digest: str
    validator: Any  # a jsonschema Draft202012Validator


class PluginSchemas:
    """The schema file's pipelines, each schema checked and its validator built once."""

    def __init__(self, pipelines: dict[str, Schema]) -> None:
        self.pipelines = pipelines

    def digest(self, pipeline: str) -> str | None:
        """The digest a job of ``pipeline`` carries; None when the file does not list it (size bound only)."""
        schema = self.pipelines.get(pipeline)
        return schema.digest if schema is not None else None

    def validate(self, pipeline: str, inputs: dict[str, Any]) -> None:
        """ContractError ``invalid_field`` naming ``inputs.<path>`` for the most relevant violation, with
        jsonschema's message; nothing when the inputs fit or the file does not list ``pipeline``."""
        schema = self.pipelines.get(pipeline)
        if schema is None:
            return
        from jsonschema.exceptions import best_match

        error = best_match(schema.validator.iter_errors(inputs))
        if error is None:
            return
        field = ".".join(["inputs", *(str(part) for part in error.absolute_path), *_named_property(error)])
        raise ContractError("invalid_field", f"{field}: {error.message}", field)


def _named_property(error: Any) -> list[str]:
    """The property a ``required`` or ``additionalProperties`` error is about (jsonschema reports it at the
    object that lacks or has it, so its path stops one short of the field a client must fix)."""
    instance = error.instance if isinstance(error.instance, dict) else {}
    if error.validator == "required":
        return [name for name in error.validator_value if name not in instance][:1]
    if error.validator == "additionalProperties" and error.validator_value is False:
        known = error.schema.get("properties", {})
        return [name for name in instance if name not in known][:1]
    return []


def plugin_schemas(settings: Settings) -> PluginSchemas | None:
    """The deployment's schema file, read on first use and kept for the warm Lambda; None when none is set."""
    if settings.plugin_schemas is None:
        return None
    return _load(str(settings.plugin_schemas))


@functools.lru_cache(maxsize=4)
def _load(path: str) -> PluginSchemas:
    """Read and check the file once (a failure is not cached: the next request says it again)."""
    try:
        return PluginSchemas(_parse(path))
    except Unavailable as exc:
        log.error("%s", exc)
        raise


def _parse(path: str) -> dict[str, Schema]:
    where = f"SPOTGEN_PLUGIN_SCHEMAS ({path})"
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except OSError as exc:
        raise Unavailable(f"{where}: cannot read the plugin schema file: {exc.strerror or exc}; ship the output of "
                          "`spotgen pipeline schema` in the Lambda package, or unset the setting") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise Unavailable(f"{where}: the plugin schema file is not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("version") != PLUGIN_SCHEMAS_VERSION \
            or not isinstance(document.get("pipelines"), dict):
        raise Unavailable(f"{where}: not a plugin schema file of version {PLUGIN_SCHEMAS_VERSION} "
                          '({"version": 1, "pipelines": {...}}); write it with `spotgen pipeline schema`')
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import SchemaError

    pipelines = {}
    for name, entry in document["pipelines"].items():
        schema, digest = (entry.get("schema"), entry.get("digest")) if isinstance(entry, dict) else (None, None)
        if not isinstance(schema, dict) or not isinstance(digest, str):
            raise Unavailable(f"{where}: pipeline {name!r} needs a `schema` object and a `digest` string")
        if schema_digest(schema) != digest:
            raise Unavailable(f"{where}: pipeline {name!r}'s digest is not its schema's (was the file edited?); "
                              "write it again with `spotgen pipeline schema`")
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as exc:
            raise Unavailable(f"{where}: pipeline {name!r}'s schema is not valid JSON Schema 2020-12: "
                              f"{exc.message}") from None
        pipelines[name] = Schema(digest, Draft202012Validator(schema))
    return pipelines
