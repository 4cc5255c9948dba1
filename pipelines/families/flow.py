"""What the flow-matching families (Flux, SD 3.5) share: a transformer, T5 with CLIP, flow-matching samplers.

Prompts go to diffusers' own encoders as text. T5 reads no WebUI syntax, so, as Forge does, the attention syntax
is stripped (``(word:1.3)`` reads ``word``; ``BREAK`` is a space) and the text is encoded as written. Flux's CLIP
gives only a pooled vector, which weights do not reach (in WebUI neither), so it reads the same text; SD 3.5's
CLIPs give tokens too, which its module weights as WebUI does (``pipelines.sd3prompts``). Prompt
editing and alternation change the text between steps, which diffusers' flow pipelines cannot swap consistently
(Flux's loop takes new T5 embeddings only, not CLIP's pooled vector, nor a negative's): they are refused, naming
the field, rather than run as another image than the prompt says.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from diffusers import DiffusionPipeline

from pipelines import flowsamplers, prompts
from pipelines.families.base import Family, StepConditioning
from pipelines.promptschedule import schedules
from runtime.contract import ContractError

if TYPE_CHECKING:
    from pipelines.common import Prepared
    from runtime.plugins import RunContext


def plain_text(text: str, field: str, steps: int) -> str:
    """``text`` as T5 should read it (see the module docstring), or a refusal of prompt editing naming ``field``."""
    positive, _ = schedules(text, "", steps)
    if len(positive) > 1:
        raise ContractError("invalid_field", f"{field}: prompt editing and alternation ([a:b:when], [a|b]) run on SD "
                            f"and SDXL models; this model reads one text for every step", field)
    return "".join(" " if isinstance(part, prompts.Break) else part.text
                   for part in prompts.parse(positive[0][1])).strip()


class FlowMatching(Family):
    """A flow-matching family; ``flux`` and ``sd3`` fill in their classes and arguments."""

    denoiser = "transformer"
    #: T5 tokens a prompt is encoded to when the request leaves ``max_sequence_length`` out, and per variant.
    sequence_length: ClassVar[int] = 512
    variant_sequence_length: ClassVar[dict[str, int]] = {}

    def control_key(self, task: str) -> str:
        return "control_image"

    def make_scheduler(self, inputs: Any, base_config: Any) -> Any:
        return flowsamplers.make_scheduler(inputs.scheduler, inputs.schedule, base_config, inputs.shift)

    def encode(self, pipe: DiffusionPipeline, job: Prepared,
               ctx: RunContext) -> tuple[dict[str, Any], StepConditioning | None]:
        inputs = job.inputs
        tokens = inputs.max_sequence_length or self.variant_sequence_length.get(job.variant or "",
                                                                                self.sequence_length)
        args: dict[str, Any] = {"prompt": plain_text(inputs.prompt, "inputs.prompt", inputs.steps),
                                "max_sequence_length": tokens}
        if inputs.guidance_scale > 1:  # classifier-free guidance: the negative prompt (maybe empty) is its other half
            args["negative_prompt"] = plain_text(inputs.negative_prompt, "inputs.negative_prompt", inputs.steps)
        return args, None
