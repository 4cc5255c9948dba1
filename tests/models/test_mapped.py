"""A diffusers model loaded as views of its mapped files (``pipelines.mapped``, issue 32): the same model as
diffusers' own load, with no copy of its weights, its pages in memory when the load ends, and diffusers' loader
for anything that is not the plain case."""

from __future__ import annotations

import importlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import ConfigMixin, ModelMixin, UNet2DConditionModel
from diffusers.configuration_utils import register_to_config

from pipelines import mapped
from tests.models.test_load_speed import cold


def tiny_model_folders(models: Path, library: str) -> dict[str, tuple[type, Path]]:
    """One weights folder per model class of ``library`` ("diffusers": a UNet, a VAE, ControlNets, Flux's and
    SD 3's transformers...; "transformers": CLIP's text encoders with and without projection, T5's encoder, CLIP's
    vision model) among the tiny models, by class name."""
    module = importlib.import_module(library)
    diffusers = library == "diffusers"
    base, weights = (ModelMixin, mapped.WEIGHTS) if diffusers else (module.PreTrainedModel, mapped.TRANSFORMERS_WEIGHTS)
    found: dict[str, tuple[type, Path]] = {}
    for config in sorted(models.rglob("config.json")):
        data = json.loads(config.read_text())
        name = data.get("_class_name") if diffusers else (data.get("architectures") or [""])[0]
        cls = getattr(module, name or "", None)
        if (isinstance(cls, type) and issubclass(cls, base) and name not in found
                and (config.parent / weights).is_file()):
            found[name] = (cls, config.parent)
    return found


def assert_same(mine: ModelMixin, theirs: ModelMixin) -> None:
    assert type(mine) is type(theirs) and mine.config == theirs.config
    assert mine.training is theirs.training is False
    for (key, x), (other, y) in zip([*mine.named_parameters(), *mine.named_buffers()],
                                    [*theirs.named_parameters(), *theirs.named_buffers()], strict=True):
        assert key == other and x.dtype == y.dtype and x.requires_grad == y.requires_grad and x.equal(y), key


def test_every_tiny_diffusers_model_loads_as_diffusers_loads_it(tiny_models: Path) -> None:
    folders = tiny_model_folders(tiny_models, "diffusers")
    assert {"UNet2DConditionModel", "AutoencoderKL", "ControlNetModel", "FluxTransformer2DModel",
            "SD3Transformer2DModel"} <= set(folders)
    for index, (name, (cls, folder)) in enumerate(sorted(folders.items())):
        # the file's own dtype (views) for some, another one (each floating tensor converted) for the others
        dtype = (torch.float32, torch.bfloat16, torch.float16)[index % 3]
        mine = mapped.load(cls, folder, dtype)
        assert mine is not None, name
        assert_same(mine, cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True))


def test_the_weights_are_the_mapped_file_and_a_change_never_reaches_it(tiny_models: Path) -> None:
    folder = tiny_models / "tiny-sd" / "unet"
    before = (folder / mapped.WEIGHTS).read_bytes()
    unet = mapped.load(UNet2DConditionModel, folder, torch.float32)
    assert unet is not None
    storages = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    assert len(storages) == 1  # one storage: the mapping, not a copy per tensor
    assert next(unet.parameters()).untyped_storage().nbytes() == len(before)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.mul_(0)  # copy-on-write: this process's pages only
    assert (folder / mapped.WEIGHTS).read_bytes() == before
    assert_same(mapped.load(UNet2DConditionModel, folder, torch.float32),
                UNet2DConditionModel.from_pretrained(str(folder)))


def test_a_sharded_checkpoint_loads_from_its_index(tiny_models: Path, tmp_path: Path) -> None:
    unet = UNet2DConditionModel.from_pretrained(str(tiny_models / "tiny-sd" / "unet"))
    unet.save_pretrained(tmp_path, max_shard_size="200KB")
    assert (tmp_path / mapped.INDEX).is_file() and len(list(tmp_path.glob("*.safetensors"))) > 1
    assert_same(mapped.load(UNet2DConditionModel, tmp_path, torch.float32),
                UNet2DConditionModel.from_pretrained(str(tmp_path)))


class Wide(ModelMixin, ConfigMixin):
    """One 16 MiB layer: a file larger than the kernel's own read-ahead of its header."""

    @register_to_config
    def __init__(self, width: int = 2048) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(width, width)


def test_the_pages_are_in_memory_when_the_load_ends(tmp_path: Path) -> None:
    Wide().save_pretrained(tmp_path)
    weights = tmp_path / mapped.WEIGHTS
    if not hasattr(os, "RWF_NOWAIT") or not cold([weights]):
        pytest.skip("the page cache cannot be dropped or probed here")
    model = mapped.load(Wide, tmp_path, torch.float32)
    assert model is not None and model.proj.weight.untyped_storage().nbytes() == weights.stat().st_size
    fd = os.open(weights, os.O_RDONLY)
    try:  # one probe of the whole file without waiting for the disk: short if a page is not in memory
        assert os.preadv(fd, [bytearray(weights.stat().st_size)], 0, os.RWF_NOWAIT) == weights.stat().st_size
    finally:
        os.close(fd)


def test_fp8_weights_load_widened_as_diffusers_widens_them(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    Wide(width=64).save_pretrained(tmp_path)
    weights = tmp_path / mapped.WEIGHTS
    save_file({key: value.to(torch.float8_e4m3fn) for key, value in load_file(weights).items()}, weights)
    mine = mapped.load(Wide, tmp_path, torch.bfloat16)
    assert mine is not None and mine.proj.weight.dtype == torch.bfloat16
    assert_same(mine, Wide.from_pretrained(str(tmp_path), dtype=torch.bfloat16))


def test_what_is_not_the_plain_case_is_left_to_diffusers(tiny_models: Path, tmp_path: Path) -> None:
    source = tiny_models / "tiny-sd" / "unet"
    assert mapped.load(torch.nn.Linear, source, torch.float32) is None  # not a diffusers model
    quantized = tmp_path / "quantized"
    shutil.copytree(source, quantized)
    config = json.loads((quantized / "config.json").read_text())
    (quantized / "config.json").write_text(json.dumps({**config, "quantization_config": {"quant_method": "x"}}))
    assert mapped.load(UNet2DConditionModel, quantized, torch.float32) is None
    wider = tmp_path / "wider"  # weights that do not fit the config: diffusers says which
    shutil.copytree(source, wider)
    (wider / "config.json").write_text(json.dumps({**config, "cross_attention_dim": config["cross_attention_dim"] * 2}))
    assert mapped.load(UNet2DConditionModel, wider, torch.float32) is None
    with pytest.raises(ValueError, match="cross_attention_dim|shape"):
        UNet2DConditionModel.from_pretrained(str(wider))
    assert mapped.load(UNet2DConditionModel, tmp_path, torch.float32) is None  # no weights at all


def test_a_damaged_file_is_an_error_naming_it(tiny_models: Path, tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    shutil.copytree(tiny_models / "tiny-sd" / "unet", folder)
    weights = folder / mapped.WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-100])  # cut short: the last tensor's bytes are missing
    with pytest.raises(ValueError, match=f"{weights} is not a valid safetensors file: .*incomplete"):
        mapped.load(UNet2DConditionModel, folder, torch.float32)
    index = tmp_path / "sharded"
    index.mkdir()
    shutil.copy(folder / "config.json", index)
    (index / mapped.INDEX).write_text(json.dumps({"weight_map": {"a": "../unet/" + mapped.WEIGHTS}}))
    with pytest.raises(ValueError, match="outside its folder"):
        mapped.load(UNet2DConditionModel, index, torch.float32)


def test_every_tiny_transformers_model_loads_as_transformers_loads_it_without_a_copy(tiny_models: Path) -> None:
    folders = tiny_model_folders(tiny_models, "transformers")
    assert {"CLIPTextModel", "CLIPTextModelWithProjection", "T5EncoderModel"} <= set(folders)
    for name, (cls, folder) in sorted(folders.items()):
        for dtype in (torch.float32, torch.float16):  # fp16: T5 keeps its "wo" layers in fp32
            mine = mapped.load_transformers(cls, folder, dtype)
            theirs = cls.from_pretrained(str(folder), dtype=dtype, use_safetensors=True)
            assert mine is not None and type(mine) is type(theirs), name
            assert mine.config.to_dict() == theirs.config.to_dict() and mine.training is theirs.training is False
            for (key, x), (other, y) in zip([*mine.named_parameters(), *mine.named_buffers()],
                                            [*theirs.named_parameters(), *theirs.named_buffers()], strict=True):
                assert key == other and x.dtype == y.dtype and x.equal(y), f"{name}.{key}"
        size = (folder / mapped.TRANSFORMERS_WEIGHTS).stat().st_size
        same = mapped.load_transformers(cls, folder, torch.float32)  # the file's dtype: views, no copy
        assert {p.untyped_storage().nbytes() for p in same.parameters()} == {size}, name
    assert mapped.load_transformers(UNet2DConditionModel, tiny_models / "tiny-sd" / "unet", torch.float32) is None
