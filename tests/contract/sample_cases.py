"""The AWS EKS sample's own request files and the helpers that ``test_sample_*.py`` share.

The request files are copied here as they are in the sample's repositories, JSON text and all:
``aws-samples/stable-diffusion-on-eks`` ("EKS", commit ed39025, its last) and its successor
``aws-solutions-library-samples/guidance-for-asynchronous-inference-with-stable-diffusion-on-aws`` ("guidance",
commit bfec8e2); where their files differ both are here. With them: the checkpoint names they use, the runtimes a
deployment knows, and the helpers that parse a v1alpha2 body and catch a refusal.
"""

from __future__ import annotations

from typing import Any

import pytest

from runtime.contract import ContractError, Names, SampleRequest, parse_v1alpha2

#: The checkpoints the sample's files name (no LoRA or ControlNet appears in them); the runtime's own model is
#: SD 1.5, as in the EKS sample's default runtime.
NAMES = Names(models={"v1-5-pruned-emaonly.safetensors": "sd15", "sd_xl_turbo_1.0.safetensors": "sdxl-turbo"},
              default_model="sd15")
RUNTIMES = frozenset({"sdruntime", "sdruntime-xl"})
CAT_URL = "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png"

# aws-samples/stable-diffusion-on-eks and guidance-...: test/v1alpha2/t2i.json (the same file in both)
V1ALPHA2_T2I = """{
  "task": {
    "metadata": {
      "id": "test-t2i",
      "runtime": "sdruntime",
      "tasktype": "text-to-image",
      "prefix": "output",
      "context": ""
    },
    "content": {
      "alwayson_scripts": {},
      "prompt": "A dog",
      "steps": 16,
      "width": 512,
      "height": 512
    }
  }
}"""

# aws-samples/stable-diffusion-on-eks: test/v1alpha2/i2i.json (the image link in alwayson_scripts)
V1ALPHA2_I2I_EKS = """{
  "task": {
    "metadata": {
      "id": "test-i2i",
      "runtime": "sdruntime",
      "tasktype": "image-to-image",
      "prefix": "output",
      "context": ""
    },
    "content": {
      "alwayson_scripts": {
        "image_link": "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png"
      },
      "prompt": "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k",
      "steps": 16,
      "width": 512,
      "height": 512
    }
  }
}"""

# aws-solutions-library-samples/guidance-for-asynchronous-inference-with-stable-diffusion-on-aws:
# test/v1alpha2/i2i.json (the image link in init_images)
V1ALPHA2_I2I_GUIDANCE = """{
  "task": {
    "metadata": {
      "id": "test-i2i",
      "runtime": "sdruntime",
      "tasktype": "image-to-image",
      "prefix": "output",
      "context": ""
    },
    "content": {
      "alwayson_scripts": {},
      "init_images": ["https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png"],
      "prompt": "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k",
      "steps": 16,
      "width": 512,
      "height": 512
    }
  }
}"""

# aws-samples/stable-diffusion-on-eks: test/v1alpha2/extra-single-image.json (the same in guidance-...)
V1ALPHA2_EXTRA = """{
  "task": {
    "metadata": {
      "id": "test-extra",
      "runtime": "sdruntime",
      "tasktype": "extra-single-image",
      "prefix": "output",
      "context": ""
    },
    "content": {
      "resize_mode":0,
      "show_extras_results":false,
      "gfpgan_visibility":0,
      "codeformer_visibility":0,
      "codeformer_weight":0,
      "upscaling_resize":4,
      "upscaling_resize_w":512,
      "upscaling_resize_h":512,
      "upscaling_crop":false,
      "upscaler_1":"R-ESRGAN 4x+",
      "upscaler_2":"None",
      "extras_upscaler_2_visibility":0,
      "upscale_first":false,
      "image":"https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png"
    }
  }
}"""

# aws-samples/stable-diffusion-on-eks: test/v1alpha2/pipeline.json, its metadata as it is and its ComfyUI
# workflow (nodes 3 to 9) written on fewer lines
V1ALPHA2_PIPELINE = """{
  "task": {
    "metadata": {
      "id": "test-pipeline",
      "runtime": "sdruntime",
      "tasktype": "pipeline",
      "prefix": "output",
      "context": ""
    },
    "content": {
      "3": {"inputs": {"seed": 89465186141685, "steps": 20, "cfg": 8, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}, "class_type": "KSampler", "_meta": {"title": "KSampler"}},
      "4": {"inputs": {"ckpt_name": "v1-5-pruned-emaonly.safetensors"}, "class_type": "CheckpointLoaderSimple",
            "_meta": {"title": "Load Checkpoint"}},
      "5": {"inputs": {"width": 512, "height": 512, "batch_size": 1}, "class_type": "EmptyLatentImage",
            "_meta": {"title": "Empty Latent Image"}},
      "6": {"inputs": {"text": "beautiful scenery nature glass bottle landscape, , purple galaxy bottle,",
            "clip": ["4", 1]}, "class_type": "CLIPTextEncode", "_meta": {"title": "CLIP Text Encode (Prompt)"}},
      "7": {"inputs": {"text": "text, watermark", "clip": ["4", 1]}, "class_type": "CLIPTextEncode",
            "_meta": {"title": "CLIP Text Encode (Prompt)"}},
      "8": {"inputs": {"samples": ["3", 0], "vae": ["4", 2]}, "class_type": "VAEDecode",
            "_meta": {"title": "VAE Decode"}},
      "9": {"inputs": {"filename_prefix": "ComfyUI", "images": ["8", 0]}, "class_type": "SaveImage",
            "_meta": {"title": "Save Image"}}
    }
  }
}"""

# aws-samples/stable-diffusion-on-eks: test/v1alpha1/t2i.json
V1ALPHA1_T2I_EKS = """{
    "alwayson_scripts": {
        "task": "text-to-image",
        "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
        "id_task": "test-t2i",
        "save_dir": "outputs"
    },
    "prompt": "A dog",
    "steps": 16,
    "width": 512,
    "height": 512
}"""

# aws-solutions-library-samples/guidance-for-asynchronous-inference-with-stable-diffusion-on-aws:
# test/v1alpha1/t2i.json
V1ALPHA1_T2I_GUIDANCE = """{
    "alwayson_scripts": {
        "task": "text-to-image",
        "sd_model_checkpoint": "sd_xl_turbo_1.0.safetensors",
        "id_task": "test-t2i",
        "save_dir": "outputs"
    },
    "prompt": "A dog",
    "steps": 16,
    "width": 512,
    "height": 512
}"""

# aws-samples/stable-diffusion-on-eks: test/v1alpha1/i2i.json
V1ALPHA1_I2I_EKS = """{
    "alwayson_scripts": {
        "task": "image-to-image",
        "image_link": "https://huggingface.co/datasets/huggingface/documentation-images/resolve/main/diffusers/cat.png",
        "id_task": "test-i2i",
        "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
        "save_dir": "outputs"
    },
    "prompt": "cat wizard, gandalf, lord of the rings, detailed, fantasy, cute, adorable, Pixar, Disney, 8k",
    "steps": 16,
    "width": 512,
    "height": 512
}"""


def refusal(call: Any, *args: Any, **kwargs: Any) -> ContractError:
    with pytest.raises(ContractError) as info:
        call(*args, **kwargs)
    return info.value


def parse2(data: Any) -> SampleRequest:
    return parse_v1alpha2(data, RUNTIMES)
