"""``controlnet_detect``: the map a unit's preprocessor makes, as a job of its own without a model: it is the map
``pipelines.preprocess`` makes (so a previewed map is a unit's), shuffle is seeded by the job, and a preprocessor
needing weights is refused naming ``inputs.preprocessor``. The API side (model ``none``) is H's to test."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from pipelines.controlnet_detect import ControlNetDetect
from pipelines.preprocess import preprocess
from runtime.contract import ContractError, validate_inputs
from runtime.plugins import Registry
from tests.pipelines.harness import PHOTO, Harness, parse


def detect(harness: Harness, seed: int = 1, **fields: Any) -> np.ndarray:
    inputs = parse(ControlNetDetect.Inputs, {"image": PHOTO, **fields})
    images = ControlNetDetect().run(inputs, harness.context(seed, model="none"))
    assert len(images) == 1 and images[0].mode == "RGB"
    return np.asarray(images[0])


@pytest.mark.parametrize(("fields", "size"), [
    ({"preprocessor": "canny", "threshold_a": 50, "threshold_b": 120, "resolution": 64}, (64, 80)),
    ({"preprocessor": "tile_resample", "threshold_a": 2.0}, (40, 50)),
    ({"preprocessor": "invert"}, (80, 100)),
])
def test_the_map_is_the_preprocessors(harness: Harness, fields: dict[str, Any], size: tuple[int, int]) -> None:
    out = detect(harness, **fields)
    assert out.shape[:2] == size
    params = {k: v for k, v in fields.items() if k != "preprocessor"}
    expected = preprocess(harness.images[PHOTO], fields["preprocessor"], **params)
    assert np.array_equal(out, np.asarray(expected))


def test_shuffle_follows_the_jobs_seed(harness: Harness) -> None:
    first = detect(harness, 5, preprocessor="shuffle", resolution=64)
    assert np.array_equal(first, detect(harness, 5, preprocessor="shuffle", resolution=64))
    assert not np.array_equal(first, detect(harness, 6, preprocessor="shuffle", resolution=64))


def test_a_preprocessor_needing_weights_is_refused_naming_the_field(harness: Harness) -> None:
    with pytest.raises(ContractError) as caught:
        detect(harness, preprocessor="depth_midas")
    assert caught.value.field == "inputs.preprocessor"
    with pytest.raises(ContractError) as unknown:
        validate_inputs("controlnet_detect", {"image": PHOTO, "preprocessor": "edges"}, input_bucket="inputs")
    assert unknown.value.field == "inputs.preprocessor"


def test_it_is_a_builtin_whose_model_is_none() -> None:
    cls = Registry.default().get("controlnet_detect")
    assert cls is ControlNetDetect and cls.builtin_models == ("none",) and not cls.checkpoints
