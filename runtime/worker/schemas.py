"""The worker's side of plugin schemas: a job the API validated against a schema must meet the same schema here.

The submit API validates a plugin's inputs with the schema file of ``spotgen pipeline schema`` and stamps the
job with that schema's digest (``JobSpec.schema_digest``). If this worker's pipeline has other ``Inputs`` (the
API and the workers run different plugin versions), its own validation could refuse what the API accepted, or
accept what the API's clients were told is refused, and the job's failure would look like the client's fault.
So the job fails at once, as ``schema_mismatch``, with a message that says what to deploy.
"""

from __future__ import annotations

import functools

from runtime.contract import JobSpec, schema_digest
from runtime.plugins import Pipeline
from runtime.worker.errors import PermanentError

_DEPLOY = ("deploy the same plugin version to the API's schema file (`spotgen pipeline schema`, "
           "SPOTGEN_PLUGIN_SCHEMAS) and to the workers")


@functools.cache
def inputs_digest(cls: type[Pipeline]) -> str:
    """The digest of ``cls.Inputs`` as JSON Schema, as ``spotgen pipeline schema`` computes it (once per class)."""
    return schema_digest(cls.Inputs.model_json_schema())


def check_schema(spec: JobSpec, cls: type[Pipeline]) -> None:
    """``PermanentError('schema_mismatch')`` when the API validated ``spec`` against another schema than this
    worker's pipeline has; nothing for a job without a digest (built-ins, plugins the API only bounds in size)."""
    if spec.schema_digest is None:
        return
    try:
        own = inputs_digest(cls)
    except Exception as exc:  # these Inputs have no JSON schema, so they cannot be the API's
        raise PermanentError("schema_mismatch", f"the API validated this job's inputs against schema "
                             f"{spec.schema_digest} of pipeline {spec.pipeline!r}, and this worker's pipeline has no "
                             f"JSON schema ({type(exc).__name__}: {exc}); {_DEPLOY}") from None
    if own != spec.schema_digest:
        raise PermanentError("schema_mismatch", f"the API validated this job's inputs against another version of "
                             f"pipeline {spec.pipeline!r}'s inputs (schema {spec.schema_digest}) than this worker "
                             f"runs (schema {own}); {_DEPLOY}")
