"""Tiny random-weight upscalers of two architectures, for tests, the local stack and benchmarks.

``tiny-esrgan`` is ESRGAN's RRDBNet (x4, two upsampling convolutions) and ``tiny-compact`` Real-ESRGAN's
SRVGGNetCompact (x2, a pixel shuffle over the nearest-upsampled input), with a few features and blocks: the
real layouts that spandrel recognises from the weights' names and shapes, a few hundred KB each. They are built
with spandrel's own architecture classes from fixed seeds, so two builds are identical.
"""

from __future__ import annotations

from typing import Any

from runtime.models.spandrelimport import spandrel

ESRGAN_ID = "tiny-esrgan"
COMPACT_ID = "tiny-compact"
#: What spandrel must report for each, checked by the tests (``tests/pipelines/test_upscale.py``).
ARCHITECTURES = {ESRGAN_ID: ("ESRGAN", 4), COMPACT_ID: ("RealESRGAN Compact", 2)}


def state_dicts() -> dict[str, dict[str, Any]]:
    """Each tiny upscaler's weights, by id (contiguous CPU tensors, ready for ``safetensors.torch.save_file``)."""
    import torch

    spandrel()  # imports torchvision as this machine allows, before the architectures below import it
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(41)
        esrgan = ESRGAN(in_nc=3, out_nc=3, num_filters=8, num_blocks=1, scale=4)
        torch.manual_seed(42)
        compact = Compact(num_in_ch=3, num_out_ch=3, num_feat=8, num_conv=2, upscale=2)
        with torch.no_grad():
            # ESRGAN has no skip connection: its output centred on mid-grey, so that it is a picture that
            # varies with the input rather than values mostly clipped to black
            last = [*esrgan.modules()][-1]
            last.weight.mul_(8.0)  # and spread over most of the 0..1 range
            last.bias.fill_(0.5)
            # Compact adds its output to the nearest-upsampled image: a faint residual keeps the picture visible
            compact.body[-1].weight.mul_(0.1)
            compact.body[-1].bias.zero_()
    return {model_id: {key: tensor.detach().contiguous().clone() for key, tensor in net.state_dict().items()}
            for model_id, net in ((ESRGAN_ID, esrgan), (COMPACT_ID, compact))}
