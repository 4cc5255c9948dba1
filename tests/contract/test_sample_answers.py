"""What spotgen answers an AWS EKS sample client (``runtime/contract/sample.py``), field for field.

The front Lambda's v1alpha2 and v1alpha1 answers to the sample's own t2i.json files (``sample_cases``), with the
output location, and the queue agent's notification in its field order: completed with its images, failed without
them, and refused where its result and status disagree.
"""

from __future__ import annotations

import json

import pytest

from runtime.contract import (
    SampleNotification,
    parse_v1alpha1,
    sample_notification,
    sample_output_location,
    v1alpha1_answer,
    v1alpha2_answer,
)
from tests.contract.sample_cases import V1ALPHA1_T2I_EKS, V1ALPHA2_T2I, parse2

BUCKET = "sdoneksstack-outputs3bucket"


# -- answers and the notification ----------------------------------------------------------------------------
def test_the_v1alpha2_answer_is_the_front_lambdas() -> None:
    request = parse2(json.loads(V1ALPHA2_T2I))
    assert v1alpha2_answer(request, BUCKET) == {"id": "test-t2i", "runtime": "sdruntime",
                                                "output_location": f"s3://{BUCKET}/output/test-t2i"}


def test_the_v1alpha1_answer_is_the_front_lambdas() -> None:
    request = parse_v1alpha1(json.loads(V1ALPHA1_T2I_EKS))
    assert v1alpha1_answer(request, BUCKET) == {"id_task": "test-t2i",
                                                "sd_model_checkpoint": "v1-5-pruned-emaonly.safetensors",
                                                "output_location": f"s3://{BUCKET}/outputs/test-t2i"}
    assert sample_output_location(request, BUCKET) == f"s3://{BUCKET}/outputs/test-t2i"


def test_the_notification_is_the_queue_agents_in_its_field_order() -> None:
    message = sample_notification(runtime="sdruntime", job_id="test-t2i", succeeded=True,
                                  image_urls=[f"s3://{BUCKET}/output/test-t2i/0.png"],
                                  output_url=f"s3://{BUCKET}/jobs/test-t2i/status.json", context={"abc": 123})
    assert json.loads(message.model_dump_json()) == {
        "runtime": "sdruntime", "id": "test-t2i", "result": True, "status": "completed",
        "image_url": [f"s3://{BUCKET}/output/test-t2i/0.png"], "output_url": f"s3://{BUCKET}/jobs/test-t2i/status.json",
        "context": {"abc": 123}}
    assert list(message.model_dump()) == ["runtime", "id", "result", "status", "image_url", "output_url", "context"]


def test_a_job_that_did_not_succeed_is_failed_without_images() -> None:
    message = sample_notification(runtime="sdruntime", job_id="x", succeeded=False, image_urls=["s3://b/k.png"],
                                  output_url="s3://b/jobs/x/status.json", context="")
    assert (message.result, message.status, message.image_url, message.context) == (False, "failed", [], "")


def test_a_notification_whose_result_and_status_disagree_is_refused() -> None:
    with pytest.raises(ValueError, match="result is true exactly when"):
        SampleNotification(runtime="r", id="x", result=True, status="failed", output_url="s3://b/k")
    with pytest.raises(ValueError, match="no images"):
        SampleNotification(runtime="r", id="x", result=False, status="failed", image_url=["s3://b/k.png"],
                           output_url="s3://b/k")
