"""What ``spotgen dev`` sets that a deployment's environment would: the compatibility APIs and webhooks, each
unless the environment configures it, so the local stack answers every route at once."""

from __future__ import annotations

import base64
import os
import secrets

from runtime.config import Settings
from runtime.contract.webhook import secret_bytes
from runtime.models.catalog import Catalog
from runtime.models.parameters import catalog_aliases


def dev_compat(settings: Settings) -> Settings:
    """The compatibility APIs on the dev stack, unless the environment configures them: the catalog's aliases,
    the sample's runtimes ``sdruntime`` (the first model), which ``/sdapi/v1`` uses too, and ``comfyui``, and a
    long sync wait (no API Gateway in front)."""
    updates: dict[str, object] = {}
    if "SPOTGEN_ALIASES" not in os.environ:
        updates["aliases"] = catalog_aliases(Catalog.load(settings.models_dir),
                                             {*settings.models, *settings.controlnets, *settings.loras})
    if "SPOTGEN_RUNTIMES" not in os.environ and settings.models:
        # and "comfyui", the runtime the sample's ComfyUI tasks name (its test/v1alpha2/pipeline.json)
        updates["runtimes"] = {"sdruntime": {"model": settings.models[0]}, "comfyui": {"model": settings.models[0]}}
        if "SPOTGEN_WEBUI_RUNTIME" not in os.environ:
            updates["webui_runtime"] = "sdruntime"
    if "SPOTGEN_SYNC_WAIT_S" not in os.environ:
        updates["sync_wait_s"] = 600.0
    return Settings.model_validate({**settings.model_dump(), **updates})


def new_webhook_secret() -> str:
    """A fresh signing secret in the Standard Webhooks form: ``whsec_`` and 32 random bytes in base64."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def dev_webhooks(settings: Settings, secret: str | None) -> tuple[Settings, str | None]:
    """Webhooks on the dev stack: receivers on loopback allowed (unless ``SPOTGEN_WEBHOOK_LOOPBACK`` says
    otherwise), and the signing secret ``secret`` (``--webhook-secret``), else the environment's, else a new
    one. Returns the settings and the secret to print when this made it up (None otherwise)."""
    updates: dict[str, object] = {}
    if "SPOTGEN_WEBHOOK_LOOPBACK" not in os.environ:
        updates["webhook_loopback"] = True
    made = None
    for part in (secret or "").split():
        try:
            secret_bytes(part)
        except ValueError as exc:
            raise SystemExit(f"--webhook-secret: {exc}") from None
    if secret:
        updates["webhook_secret"] = secret
    elif not (settings.webhook_secret or settings.webhook_secret_arn or settings.webhook_secret_parameter):
        updates["webhook_secret"] = made = new_webhook_secret()
    return Settings.model_validate({**settings.model_dump(), **updates}), made
