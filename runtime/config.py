"""Settings: one typed object, read from ``SPOTGEN_*`` environment variables.

The Lambdas and the worker read the same object, so a name means the same thing everywhere. Plain pydantic
(no settings framework) keeps the Lambda's imports to boto3, pydantic and the standard library.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PREFIX = "SPOTGEN_"
#: The model families (``runtime.contract.families``; settings import nothing of the rest, a test keeps them equal).
Family = Literal["sd1", "sd2", "sdxl", "flux", "sd3"]
#: The base-model variants (the catalog's ``variant``: ``runtime.models.catalog`` says which family has which).
Variant = Literal["inpainting", "refiner", "schnell", "turbo"]

#: The shape of a runtime's name (the AWS sample's ``task.metadata.runtime``; the contract checks it the same way).
RUNTIME_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"
#: Settings given as JSON objects in their environment variable (the others are comma separated).
JSON_FIELDS = ("aliases", "runtimes")

#: One DNS label: letters, digits and inner hyphens (host names are compared exactly, so no IDNA forms).
_LABEL_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")


def _host_name_problem(host: str) -> str | None:
    """Why ``host`` cannot be an allow-list entry, in words an operator can act on; None when it can.

    The fetcher compares a URL's host with these entries byte for byte, so anything that would need
    normalising (case, a scheme, a port, a pattern) is refused here rather than silently never matching.
    """
    if "://" in host:
        return "has a scheme: write the host name alone"
    if "*" in host:
        return "is a wildcard: wildcards are not supported"
    if "/" in host:
        return "has a path: write the host name alone"
    if "@" in host:
        return "has user information: write the host name alone"
    if ":" in host:
        return "has a port or is an IPv6 address: write the host name alone (https URLs use port 443)"
    if host != host.lower():
        return "has capitals: host names must be written in lowercase"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return "is an IP address: allow host names only"
    labels = host.split(".")
    if len(host) > 253 or len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        return "is not a host name (dot-separated labels of a-z, 0-9 and inner '-', with a domain)"
    if labels[-1].isdigit():
        return "is not a host name (its last label is a number)"
    return None


class Runtime(BaseModel):
    """A runtime of the AWS sample's API (``task.metadata.runtime``): which model a request that names none runs
    on, and the worker pool it goes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The catalog id a body without ``sd_model_checkpoint`` runs on (one of ``models``).
    model: str
    #: Published as the job's ``pool`` message attribute, for an SNS filter policy that routes the runtime's jobs
    #: to a queue of their own (``docs/deploy.md``); unset: the jobs are routed by model like any other.
    pool: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]{1,64}$")


class Settings(BaseModel):
    """Every field is set by the environment variable ``SPOTGEN_<FIELD NAME IN CAPITALS>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    region: str = "us-east-1"
    #: AWS endpoint override (the local emulator); empty in production.
    aws_endpoint_url: str | None = None
    input_bucket: str = "spotgen-inputs"
    output_bucket: str = "spotgen-outputs"
    #: SNS topic the submit API publishes jobs to.
    jobs_topic_arn: str = ""
    #: SNS topic that receives one notification per finished job.
    results_topic_arn: str = ""
    #: The work queue this worker consumes (predefined: no ListQueues/CreateQueue at run time).
    queue_name: str = "spotgen-jobs"
    queue_url: str = ""
    #: Where messages that can never succeed are moved (the work queue's redrive target).
    dead_letter_queue_url: str = ""
    #: Base URL clients use to reach the API (for ``status_url`` in responses).
    public_url: str = ""
    #: Base model ids the API accepts (comma separated); the worker's catalog is the final word.
    models: list[str] = Field(default_factory=lambda: ["tiny-sd", "tiny-sdxl", "tiny-sd-inpainting",
                                                       "tiny-sdxl-inpainting", "tiny-sdxl-refiner", "tiny-flux",
                                                       "tiny-flux-schnell", "tiny-flux-fill", "tiny-sd3",
                                                       "tiny-sd3-turbo"])
    #: ControlNet model ids the API accepts.
    controlnets: list[str] = Field(default_factory=lambda: ["tiny-controlnet", "tiny-sdxl-controlnet",
                                                            "tiny-flux-controlnet", "tiny-sd3-controlnet"])
    #: LoRA ids the API accepts in ``inputs.loras``.
    loras: list[str] = Field(default_factory=lambda: ["tiny-lora-sd1", "tiny-lora-sd1-kohya", "tiny-lora-sdxl",
                                                      "tiny-lora-sdxl-kohya", "tiny-lora-flux",
                                                      "tiny-lora-flux-kohya", "tiny-lora-flux-xlabs",
                                                      "tiny-lora-sd3"])
    #: Upscaler model ids (catalog ``kind: upscaler``) the API accepts as an ``upscale`` job's model and as
    #: ``inputs.hires.upscaler``; ``lanczos``, ``nearest`` and the latent upscalers need no model and are always
    #: accepted.
    upscalers: list[str] = Field(default_factory=lambda: ["tiny-esrgan", "tiny-compact"])
    #: Textual-inversion embedding ids (catalog ``kind: embedding``) the API lists (a prompt names one as a word;
    #: the worker recognises every catalog embedding of the model's family, listed here or not).
    embeddings: list[str] = Field(default_factory=lambda: ["tiny-emb-sd1", "tiny-emb-sd1-diffusers", "tiny-emb-sdxl"])
    #: The family of the ids above, as ``id=family,...`` (sd1, sd2, sdxl, flux, sd3), so the API can refuse an
    #: SDXL-only input for an SD 1.x model or a LoRA of another family with a 400; an id not listed is checked by
    #: the worker.
    model_families: dict[str, Family] = Field(default_factory=lambda: {
        "tiny-sd": "sd1", "tiny-sd-inpainting": "sd1", "tiny-controlnet": "sd1", "tiny-lora-sd1": "sd1",
        "tiny-lora-sd1-kohya": "sd1", "tiny-sdxl": "sdxl",
        "tiny-sdxl-inpainting": "sdxl", "tiny-sdxl-refiner": "sdxl", "tiny-sdxl-controlnet": "sdxl",
        "tiny-lora-sdxl": "sdxl", "tiny-lora-sdxl-kohya": "sdxl",
        **dict.fromkeys(("tiny-flux", "tiny-flux-schnell", "tiny-flux-fill", "tiny-flux-controlnet", "tiny-lora-flux",
                         "tiny-lora-flux-kohya", "tiny-lora-flux-xlabs"), "flux"),
        **dict.fromkeys(("tiny-sd3", "tiny-sd3-turbo", "tiny-sd3-controlnet", "tiny-lora-sd3"), "sd3")})
    #: The variant of the base models above that have one (the catalog's ``variant``), as ``id=variant,...``
    #: (inpainting, refiner, schnell, turbo), so the API can refuse what the variant cannot do with a 400 (guidance
    #: for FLUX.1 schnell, a txt2img job on an inpainting model); an id not listed is a plain model to the API, and
    #: its worker's catalog has the final word.
    model_variants: dict[str, Variant] = Field(default_factory=lambda: {
        "tiny-sd-inpainting": "inpainting", "tiny-sdxl-inpainting": "inpainting", "tiny-sdxl-refiner": "refiner",
        "tiny-flux-schnell": "schnell", "tiny-flux-fill": "inpainting", "tiny-sd3-turbo": "turbo"})
    #: Plugin pipeline names the API accepts besides the built-ins.
    extra_pipelines: list[str] = Field(default_factory=list)
    #: The plugin schema file (``spotgen pipeline schema ... --out``) shipped in the Lambda package: the submit API
    #: validates the inputs of each plugin it lists and stamps the job with the schema's digest. Unset, or a plugin
    #: it does not list: the plugin's inputs are only bounded in size, and its worker judges them.
    plugin_schemas: Path | None = None
    #: Hosts the submit API fetches ``https://`` image URLs from: exact lowercase names, no wildcards (comma
    #: separated). Empty: image URLs are refused, as they always were (``lambdas/fetch.py`` says what else is).
    fetch_allowed_hosts: list[str] = Field(default_factory=list)
    #: Seconds one image URL may take from the DNS lookup to the last byte, redirects included; at most 30,
    #: since API Gateway gives up on the whole request after 30 s.
    fetch_timeout_s: float = Field(10.0, gt=0, le=30)
    # -- per-request webhooks (docs/api.md "Webhooks") ------------------------------------------------------
    #: Hosts a request's ``webhook.url`` may name: exact lowercase names, as ``fetch_allowed_hosts`` (comma
    #: separated). Empty: requests with a webhook are refused. The address rules of image URLs apply too.
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    #: Local only (``spotgen dev`` sets it): receivers on 127.0.0.1, ::1 and localhost are allowed too, over http
    #: or https, on any port. Never set it in a deployment: it lets requests reach the worker's own host.
    webhook_loopback: bool = False
    #: The signing secret(s) as text, ``whsec_...`` (several, space separated, while rotating). Local only: a
    #: deployment names a secret instead (``webhook_secret_arn`` or ``webhook_secret_parameter``).
    webhook_secret: str | None = None
    #: A Secrets Manager secret (ARN or name) whose SecretString holds the signing secret(s), space separated.
    webhook_secret_arn: str | None = None
    #: Or an SSM parameter (SecureString) holding them.
    webhook_secret_parameter: str | None = None
    #: Seconds a worker keeps the secret it read before reading it again (a rotation takes effect within this).
    webhook_secret_cache_s: float = Field(300.0, ge=0, le=3600)
    #: Seconds one event's delivery may take, retries included (backoff with jitter), on the job's output stage.
    webhook_retry_s: float = Field(30.0, ge=0, le=600)
    #: Seconds one POST may take, from the DNS lookup to the answer's status.
    webhook_timeout_s: float = Field(5.0, gt=0, le=30)
    #: How long the presigned output URLs in a webhook's body stay valid (SigV4's limit is 7 days; URLs signed
    #: with a role's temporary credentials end with them sooner).
    webhook_url_ttl_s: int = Field(86400, ge=60, le=604800)
    # -- the compatibility APIs: the AWS sample's and SD WebUI's (see docs/migrating.md) ---------------------
    #: What WebUI clients call the catalog's entries, as a JSON object ``{"alias": "catalog id"}`` (a WebUI title
    #: or file name such as ``sd_xl_turbo_1.0.safetensors``); ``spotgen models aliases`` prints it from a catalog.
    #: Each id is its own alias too.
    aliases: dict[str, str] = Field(default_factory=dict)
    #: The AWS sample's runtimes, as a JSON object ``{"name": {"model": "id", "pool": "name"}}``.
    runtimes: dict[str, Runtime] = Field(default_factory=dict)
    #: The runtime whose model ``/sdapi/v1`` bodies run on when they name no checkpoint (``GET /sdapi/v1/options``
    #: reports it); empty: such a body is refused, naming ``override_settings.sd_model_checkpoint``.
    webui_runtime: str = ""
    #: Seconds ``POST /sdapi/v1/txt2img`` and ``/img2img`` wait for their job before answering 504 with its URL;
    #: below API Gateway's 30 s integration timeout (``spotgen dev`` waits longer).
    sync_wait_s: float = Field(25.0, gt=0, le=900)
    #: Name of the SSM SecureString parameter holding the hashed API keys of the compatibility routes (one
    #: ``sha256:<hex>`` per line, from ``spotgen apikey hash``), read by ``lambdas/authorizer.py``; those clients
    #: send ``x-api-key``, not SigV4. Empty: the authorizer refuses every request (the native routes use IAM).
    api_keys_parameter: str = ""
    #: Extra pipeline classes the worker registers, as 'module:Class' (besides entry points).
    plugins: list[str] = Field(default_factory=list)
    models_dir: Path = Path("models")
    #: Tier 1 of the model cache: node-local disk shared by the pods of a node (unset: load from models_dir).
    node_cache_dir: Path | None = None
    #: Bytes tier 1 may use; least recently used models are evicted beyond it.
    node_cache_bytes: int = Field(200 * 1024**3, gt=0)
    #: Tier 2: bytes of model weights kept loaded in the worker (least recently used dropped beyond); 0 = all.
    model_memory_bytes: int = Field(0, ge=0)
    #: Bytes of LoRA adapters each loaded base model keeps; least recently used adapters are dropped beyond it.
    lora_memory_bytes: int = Field(2 * 1024**3, ge=0)
    #: Catalog ids the worker loads before it takes its first job; start-up fails loudly if one cannot load.
    preload: list[str] = Field(default_factory=list)
    #: When a worker with preload models starts taking jobs: once "all" are loaded, or once the "first" is and the
    #: rest load while it serves (``runtime.worker.preload``: a job never waits longer for that than on a worker
    #: without preload).
    serve_after_preload: Literal["all", "first"] = "all"
    device: str = "cpu"
    #: Attention kernel: "auto" (PyTorch SDPA, or xformers where it is installed and measured faster), "sdpa",
    #: or "xformers" (start-up fails where it cannot run).
    attention: str = Field("auto", pattern="^(auto|sdpa|xformers)$")
    #: Keep the UNet's and VAE's weights and activations channels-last (NHWC), which GPU convolutions run faster
    #: in fp16/bf16; outputs stay byte-identical to an uninterrupted run with the same setting.
    channels_last: bool = False
    #: ``torch.compile`` the UNet of each loaded model with this mode ("default", "reduce-overhead",
    #: "max-autotune", "max-autotune-no-cudagraphs"), or "off". The first job of a model then waits for the
    #: compilation; the compiled code is cached on node-local disk (``compile_cache_dir``).
    compile: str = Field("off", pattern="^(off|default|reduce-overhead|max-autotune|max-autotune-no-cudagraphs)$")
    #: Where compiled code is cached (Inductor's and Triton's caches), so that the pods of a node compile each
    #: model once; unset: ``<node_cache_dir>/compile`` when there is a node cache, else PyTorch's default.
    compile_cache_dir: Path | None = None
    #: Receive and prepare the next job while one generates, so the device never waits for SQS or S3 between
    #: two jobs; false leaves it in the queue until this job has generated, for an idle worker to take.
    receive_ahead: bool = True
    #: Minimum seconds between two progress writes to the status document (each is a paid S3 PUT).
    progress_interval_s: float = Field(1.0, ge=0.0)
    presign_expiry_s: int = Field(3600, ge=60, le=7 * 24 * 3600)
    #: SQS long-poll wait of the worker.
    poll_wait_s: int = Field(10, ge=1, le=20)
    #: Seconds for which the AWS calls that must not be lost are retried through an outage (with backoff and
    #: jitter): a finished job's outputs, result, final status and notification, its ack, and the check of the
    #: queue and bucket at start-up.
    store_retry_s: float = Field(120.0, ge=0, le=3600)
    log_level: str = "INFO"

    # -- operations: metrics, health probes, logs (see docs/operations.md) ------------------------------
    #: Port of the worker's HTTP server: /metrics (Prometheus), /livez and /readyz (probes); 0 = off.
    metrics_port: int = Field(9400, ge=0, le=65535)
    #: Address that server binds: all interfaces in a pod (the kubelet probes the pod IP); loopback in ``spotgen dev``.
    metrics_host: str = "0.0.0.0"  # noqa: S104
    #: "json" (one JSON object per line, for log collectors) or "text" (humans; ``spotgen dev`` uses it).
    log_format: str = Field("json", pattern="^(json|text)$")
    #: Prompts longer than this are cut in log lines (the full prompt stays in the job's documents only).
    log_prompt_chars: int = Field(80, ge=0)

    # -- interruption, checkpoints and the visibility lease (see docs/interruptions.md) -----------------
    #: Seconds from SIGTERM (or a spot notice) to a forced exit; keep it below the pod's grace period and
    #: the 120 s spot notice.
    interrupt_deadline_s: float = Field(90.0, gt=0, le=3600)
    #: Also checkpoint every N steps, to bound the loss of a hard kill; 0 = only when interrupted.
    checkpoint_every: int = Field(0, ge=0)
    #: Seconds between two extensions of the running job's SQS message visibility.
    heartbeat_s: float = Field(20.0, gt=0, le=3600)
    #: Visibility each extension sets: after a crash the message is visible again within this time.
    lease_s: int = Field(60, ge=1, le=43200)
    #: A job running longer than this stops being extended (and may be delivered again).
    max_job_s: int = Field(4 * 3600, ge=1, le=43200)
    #: The work queue's maxReceiveCount: on the last delivery a failing job ends ``failed`` for good.
    max_receive_count: int = Field(5, ge=1, le=1000)
    #: Poll the EC2 metadata service for a spot interruption notice every N seconds; 0 = off.
    imds_poll_s: float = Field(0.0, ge=0)
    imds_url: str = "http://169.254.169.254"
    #: Diagnostics: append "pid job attempt step" per finished denoising step to this file (chaos harness).
    step_log: Path | None = None

    @field_validator("models", "controlnets", "loras", "upscalers", "embeddings", "extra_pipelines",
                     "fetch_allowed_hosts", "webhook_allowed_hosts", "plugins", "preload", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("plugin_schemas", "webhook_secret", "webhook_secret_arn", "webhook_secret_parameter",
                     mode="before")
    @classmethod
    def _unset_when_empty(cls, value: object) -> object:
        """An empty variable (a template parameter left at its default) is no file, not the current folder."""
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(*JSON_FIELDS, mode="before")
    @classmethod
    def _json(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"is not a JSON object ({exc})") from None

    @field_validator("runtimes")
    @classmethod
    def _runtime_names(cls, runtimes: dict[str, Runtime]) -> dict[str, Runtime]:
        for name in runtimes:
            if not re.match(RUNTIME_NAME_PATTERN, name):
                raise ValueError(f"runtime name {name!r} is not letters, digits, '-' and '_' (at most 64)")
        return runtimes

    @model_validator(mode="after")
    def _compat_names_exist(self) -> Settings:
        """Aliases and runtimes name ids the API accepts: a typo fails at start-up, not on a client's request."""
        known = {*self.models, *self.controlnets, *self.loras, *self.upscalers}
        for alias, target in self.aliases.items():
            if target not in known:
                raise ValueError(f"alias {alias!r} names {target!r}, which is not one of the models, ControlNets, "
                                 "LoRAs or upscalers (SPOTGEN_MODELS, SPOTGEN_CONTROLNETS, SPOTGEN_LORAS, "
                                 "SPOTGEN_UPSCALERS)")
        for name, runtime in self.runtimes.items():
            if runtime.model not in self.models:
                raise ValueError(f"runtime {name!r} runs on {runtime.model!r}, which is not one of the models "
                                 f"({', '.join(self.models)})")
        if self.webui_runtime and self.webui_runtime not in self.runtimes:
            raise ValueError(f"webui_runtime {self.webui_runtime!r} is not one of the runtimes "
                             f"({', '.join(self.runtimes) or 'none'})")
        return self

    @field_validator("fetch_allowed_hosts", "webhook_allowed_hosts")
    @classmethod
    def _host_names(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            problem = _host_name_problem(host)
            if problem:
                raise ValueError(f"{host!r} {problem}; list exact host names such as 'images.example.com'")
        return hosts

    @field_validator("model_families", "model_variants", mode="before")
    @classmethod
    def _pairs(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        pairs = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            name, sep, family = item.partition("=")
            if not sep:
                raise ValueError(f"{item!r} is not id={'family' if info.field_name == 'model_families' else 'variant'}")
            pairs[name.strip()] = family.strip()
        return pairs


    @model_validator(mode="after")
    def _lease_outlives_heartbeat(self) -> Settings:
        if self.heartbeat_s >= self.lease_s:
            raise ValueError(f"heartbeat_s ({self.heartbeat_s}) must be shorter than lease_s ({self.lease_s}), or "
                             "the message becomes visible between two extensions")
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values = {name: env[PREFIX + name.upper()] for name in cls.model_fields if PREFIX + name.upper() in env}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            err = exc.errors(include_url=False)[0]
            var = PREFIX + str(err["loc"][0]).upper() if err["loc"] else "SPOTGEN_*"
            raise SystemExit(f"invalid setting {var}: {err['msg']}") from None

    def to_env(self) -> dict[str, str]:
        """The environment that reproduces these settings in another process."""
        env = {}
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if name in JSON_FIELDS:
                value = json.dumps(value, separators=(",", ":"))
            elif isinstance(value, dict):
                value = [f"{k}={v}" for k, v in value.items()]
            env[PREFIX + name.upper()] = ",".join(value) if isinstance(value, list) else str(value)
        return env
