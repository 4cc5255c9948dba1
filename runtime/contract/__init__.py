"""The job contract: one schema shared by the HTTP API, the queue message and the worker.

It imports pydantic and the standard library only, and nothing else of spotgen, so the Lambda producers
validate requests with exactly the rules the worker applies again when a message arrives (the queue is never
trusted). Bump ``CONTRACT_VERSION`` when a change is not backwards compatible; workers refuse versions they do
not know.

The chapters: ``jobs`` (the request and the queued job), ``inputs`` (the generating pipelines' inputs), ``edits``
(inpainting's and upscaling's), ``builtin`` (the built-in pipelines by name), ``families``
(what depends on the model family), ``status`` (the status document and the notification), ``errors``, ``images``
(image references, checked without Pillow), ``webui`` (SD WebUI API bodies as jobs; ``webui_answer``: what WebUI
answers besides the images), ``sample`` (the AWS EKS sample's v1alpha1 and v1alpha2 envelopes around those bodies,
its answers and its notification) and ``envelope`` (the Celery protocol-2 message in kombu's SQS format, written
without Celery). The contract is used as one piece, so this package re-exports the names of the first nine;
``envelope`` is imported by its own path.
"""

from runtime.contract.builtin import BUILTIN_INPUTS, BUILTIN_PIPELINES, IMAGE_FIELDS, MODEL_KINDS
from runtime.contract.edits import Extend, InpaintInputs, UpscaleInputs, inpaint_size, upscale_size, upscale_sizes
from runtime.contract.errors import ContractError, raise_contract_error
from runtime.contract.families import FAMILIES, SIZE_CONDITIONING_FIELDS, FamilyRules, family_rules, for_family
from runtime.contract.images import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, ImageRefError
from runtime.contract.inputs import (
    LATENT_UPSCALERS,
    MAX_GUIDANCE,
    MAX_IMAGES,
    MAX_LORA_WEIGHT,
    MAX_LORAS,
    MAX_PROMPT_CHARS,
    MAX_SIDE,
    MAX_STEPS,
    MIN_SIDE,
    MODEL_ID_RE,
    PIXEL_UPSCALERS,
    SAMPLER_SCHEDULES,
    SCHEDULERS,
    SCHEDULES,
    WEBUI_SAMPLERS,
    ControlNetInputs,
    GenerationInputs,
    Hires,
    ImageRef,
    Img2ImgInputs,
    IpAdapterRef,
    LoraRef,
    ModelId,
    Schedule,
    Scheduler,
    Strict,
    Txt2ImgInputs,
)
from runtime.contract.jobs import (
    CONTRACT_VERSION,
    JOB_ID_RE,
    MAX_BODY_BYTES,
    MAX_CONTEXT_BYTES,
    MAX_PLUGIN_INPUT_BYTES,
    MAX_TTL_S,
    OUTPUT_PREFIX_RE,
    PIPELINE_NAME_RE,
    RESERVED_OUTPUT_PREFIXES,
    JobRequest,
    JobSpec,
    OutputPrefix,
    SampleJob,
    parse_request,
    request_hash,
    schema_digest,
    validate_inputs,
)
from runtime.contract.sample import (
    RUNTIME_NAME_RE,
    SAMPLE_TASKTYPES,
    SampleNotification,
    SampleRequest,
    parse_v1alpha1,
    parse_v1alpha2,
    sample_notification,
    sample_output_location,
    v1alpha1_answer,
    v1alpha2_answer,
)
from runtime.contract.status import (
    JobErrorInfo,
    JobState,
    JobStatus,
    Notification,
    OutputLink,
    Progress,
    ResumeInfo,
    StatusDoc,
    utcnow,
)
from runtime.contract.webui import Names, WebuiJob, from_webui
from runtime.contract.webui_answer import sample_out_document, webui_error, webui_info, webui_parameters

__all__ = [
    "FAMILIES", "MAX_LORAS", "MAX_LORA_WEIGHT", "MIN_SIDE", "SAMPLER_SCHEDULES", "SCHEDULES",
    "SIZE_CONDITIONING_FIELDS", "FamilyRules", "JobStatus", "LoraRef", "OutputLink", "Schedule", "family_rules",
    "for_family",
    "BUILTIN_INPUTS", "BUILTIN_PIPELINES", "CONTRACT_VERSION", "IMAGE_FIELDS", "JOB_ID_RE", "MAX_BODY_BYTES",
    "MAX_CONTEXT_BYTES", "MAX_GUIDANCE", "MAX_IMAGES", "MAX_IMAGE_BYTES", "MAX_IMAGE_PIXELS",
    "MAX_PLUGIN_INPUT_BYTES", "MAX_PROMPT_CHARS", "MAX_SIDE", "MAX_STEPS", "MAX_TTL_S", "MODEL_ID_RE",
    "OUTPUT_PREFIX_RE", "PIPELINE_NAME_RE", "RESERVED_OUTPUT_PREFIXES", "SCHEDULERS", "ContractError",
    "ControlNetInputs", "GenerationInputs", "ImageRef", "ImageRefError", "Img2ImgInputs", "JobErrorInfo",
    "JobRequest", "JobSpec", "JobState", "ModelId", "Notification", "OutputPrefix", "Progress", "ResumeInfo",
    "Scheduler", "StatusDoc", "Strict", "Txt2ImgInputs", "parse_request", "raise_contract_error",
    "request_hash", "schema_digest", "utcnow", "validate_inputs", "WEBUI_SAMPLERS", "Names", "WebuiJob",
    "from_webui", "RUNTIME_NAME_RE", "SAMPLE_TASKTYPES", "SampleNotification", "SampleRequest", "parse_v1alpha1",
    "parse_v1alpha2", "sample_notification", "sample_output_location", "v1alpha1_answer", "v1alpha2_answer",
    "SampleJob", "sample_out_document", "webui_error", "webui_info", "webui_parameters",
    "MODEL_KINDS", "Extend", "InpaintInputs", "UpscaleInputs", "inpaint_size", "upscale_size", "upscale_sizes",
    "LATENT_UPSCALERS",
    "PIXEL_UPSCALERS", "Hires", "MAX_CONTROLNETS", "MAX_IP_ADAPTERS", "ControlUnit", "IpAdapterRef",
]
