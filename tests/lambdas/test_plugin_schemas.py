"""Plugin inputs validated at the API: the schema file of ``spotgen pipeline schema``, the submit Lambda's check
against it, the digest a job carries, and the worker that refuses a job validated against another version.

The Lambda runs in this process against a running ``spotgen dev`` (its emulator, and its workers with the plugins
of ``tests/plugins.py``); a queue of the test's own, subscribed to the jobs topic like the work queue, receives a
copy of each published message, so what the Lambda put on the queue is read without racing the workers.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import Field

from lambdas import submit
from lambdas.common import Deployment
from runtime.config import Settings
from runtime.contract import JobSpec, JobState, StatusDoc, schema_digest, utcnow
from runtime.contract.envelope import build_celery_message, read_celery_message
from runtime.kit.schema import add_schema_command, schema_of, schemas_document, write_schemas
from runtime.local.devstack import EMULATOR_CREDENTIALS
from runtime.storage import aws
from runtime.storage.jobstore import JobStore
from runtime.worker.errors import PermanentError
from runtime.worker.schemas import check_schema, inputs_digest
from tests.conftest import Stack
from tests.inbox import Queue, attribute_id
from tests.plugins import AlwaysFails, SlowInputs, SlowSteps, SolidColor
from tests.rest import wait_for


class SlowInputsV2(SlowInputs):
    """The next version of ``slow``'s inputs: more steps allowed (another schema, so another digest)."""

    steps: int = Field(10, ge=1, le=5000)


class SlowStepsV2(SlowSteps):
    Inputs = SlowInputsV2


# -- the schema file and its command ------------------------------------------------------------------------


def test_the_document_holds_each_pipelines_inputs_schema_and_its_digest(tmp_path: Path) -> None:
    doc = schemas_document([SlowSteps, SolidColor])
    assert doc["version"] == 1 and list(doc["pipelines"]) == ["slow", "solid"]
    slow = doc["pipelines"]["slow"]
    assert slow["schema"] == SlowInputs.model_json_schema() == schema_of(SlowSteps)
    assert slow["digest"] == schema_digest(slow["schema"]) == inputs_digest(SlowSteps)  # the worker's digest
    assert slow["digest"] != schema_digest(SlowInputsV2.model_json_schema())
    path = write_schemas([SlowSteps, SolidColor], tmp_path / "build" / "plugin-schemas.json")
    assert json.loads(path.read_text()) == doc


def run_command(argv: list[str]) -> tuple[int, str, str]:
    """``spotgen pipeline schema`` through a parser of the test's own, as runtime/kit/commands.py registers it."""
    parser = argparse.ArgumentParser(prog="spotgen")
    pipeline_sub = parser.add_subparsers(dest="command", required=True).add_parser("pipeline").add_subparsers(
        dest="pipeline_command", required=True)
    add_schema_command(pipeline_sub)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        args = parser.parse_args(argv)
        code = args.func(args)
    return code, out.getvalue(), err.getvalue()


PLUGINS = ["--plugin", "tests.plugins:SlowSteps", "--plugin", "tests.plugins:SolidColor"]


def test_the_command_prints_or_writes_the_document_of_the_named_pipelines(tmp_path: Path) -> None:
    code, out, _ = run_command(["pipeline", "schema", "slow", "solid", *PLUGINS])
    assert code == 0 and json.loads(out) == schemas_document([SlowSteps, SolidColor])
    target = tmp_path / "lambda" / "plugin-schemas.json"
    code, out, err = run_command(["pipeline", "schema", "slow", *PLUGINS, "--out", str(target)])
    assert code == 0 and out == "" and str(target) in err
    assert json.loads(target.read_text()) == schemas_document([SlowSteps])


def test_an_unknown_name_exits_2_naming_the_registered_pipelines() -> None:
    code, out, err = run_command(["pipeline", "schema", "slow", "sharpen", *PLUGINS])
    assert code == 2 and out == ""
    assert "'sharpen'" in err and "registered: " in err and "slow" in err and "txt2img" in err, err


def test_the_spotgen_command_has_it_once_registered(tmp_path: Path) -> None:
    from runtime import cli

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        return next((a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)), {})

    pipeline = subcommands(cli.build_parser()).get("pipeline")
    # the command exists (docs/plugins.md tells people to run it): its absence is a failure, not a skip
    assert pipeline is not None and "schema" in subcommands(pipeline), "`spotgen pipeline schema` is not registered"
    target = tmp_path / "schemas.json"
    assert cli.main(["pipeline", "schema", "slow", *PLUGINS, "--out", str(target)]) == 0
    assert json.loads(target.read_text()) == schemas_document([SlowSteps])


# -- the worker's check, in this process --------------------------------------------------------------------


def spec_of(pipeline: str, digest: str | None, **inputs: Any) -> JobSpec:
    return JobSpec(id=f"schema-{uuid.uuid4().hex[:12]}", pipeline=pipeline, model="tiny-sd",
                   inputs={"prompt": "x", **inputs}, seed=1, output_prefix="outputs", submitted_at=utcnow(),
                   request_hash="0" * 64, schema_digest=digest)


def test_a_worker_takes_its_own_digest_or_none_and_refuses_another() -> None:
    check_schema(spec_of("slow", None), SlowSteps)
    check_schema(spec_of("slow", schema_digest(schema_of(SlowSteps))), SlowSteps)
    with pytest.raises(PermanentError) as refused:
        check_schema(spec_of("slow", inputs_digest(SlowStepsV2)), SlowSteps)
    info = refused.value.info
    assert info.code == "schema_mismatch" and inputs_digest(SlowStepsV2) in info.message
    assert "another version of pipeline 'slow'" in info.message and "deploy the same plugin version" in info.message


# -- the submit Lambda against the stack ------------------------------------------------------------------


@pytest.fixture(scope="module")
def published(stack: Stack) -> Queue:
    """A queue of the test's own that gets a copy of every job the API publishes (raw, as the work queue does)."""
    url = stack.sqs.create_queue(QueueName=f"published-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    arn = stack.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    stack.sns.subscribe(TopicArn=stack.env["SPOTGEN_JOBS_TOPIC_ARN"], Protocol="sqs", Endpoint=arn,
                        Attributes={"RawMessageDelivery": "true"})
    return Queue(stack.sqs, url, attribute_id)


@pytest.fixture(scope="module")
def schema_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``slow`` and ``always-fails`` listed, ``solid`` not (a plugin the file does not know)."""
    return write_schemas([SlowSteps, AlwaysFails], tmp_path_factory.mktemp("schemas") / "plugin-schemas.json")


@pytest.fixture
def deployment(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """``deployment(**settings)``: the stack's deployment as a Lambda of this process sees it."""
    for name, value in EMULATOR_CREDENTIALS.items():
        monkeypatch.setenv(name, value)

    def make(**settings: Any) -> Deployment:
        config = Settings.from_env(stack.env).model_copy(update=settings)
        return Deployment(config, JobStore(aws.client("s3", config), config), aws.client("sns", config))

    yield make


def post(dep: Deployment, pipeline: str, inputs: dict[str, Any], model: str = "tiny-sd") -> tuple[str, int, Any]:
    """The job id, status code and answer of ``POST /v1/jobs`` (with an id, so that a refusal can be looked up)."""
    job_id = f"schema-{uuid.uuid4().hex[:12]}"
    answer = submit.submit(dep, json.dumps({"id": job_id, "pipeline": pipeline, "model": model,
                                            "inputs": inputs}).encode())
    return job_id, answer["statusCode"], json.loads(answer["body"])


def nothing_kept(stack: Stack, job_id: str) -> None:
    for bucket, prefix in ((stack.env["SPOTGEN_OUTPUT_BUCKET"], f"jobs/{job_id}/"),
                           (stack.env["SPOTGEN_INPUT_BUCKET"], f"inputs/{job_id}/")):
        assert stack.s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("KeyCount", 0) == 0, (bucket, prefix)


def queued_job(published: Queue, job_id: str) -> dict[str, Any]:
    """The job the API published for ``job_id``, as the JSON the worker receives."""
    got = published.wait(job_id)
    assert len(got) == 1, got
    _headers, args, _kwargs = read_celery_message(got[0]["Body"])
    return args[0]


@pytest.mark.parametrize(("inputs", "field", "message"), [
    ({"prompt": "x", "steps": "x"}, "inputs.steps", "inputs.steps: 'x' is not of type 'integer'"),
    ({"prompt": "x", "steps": 0}, "inputs.steps", "inputs.steps: 0 is less than the minimum of 1"),
    ({"steps": 2}, "inputs.prompt", "inputs.prompt: 'prompt' is a required property"),
    ({"prompt": "x", "colour": "red"}, "inputs.colour", "('colour' was unexpected)"),
])
def test_a_bad_plugin_input_is_a_400_naming_the_field_and_nothing_is_kept(
        stack: Stack, deployment: Any, schema_file: Path, inputs: dict[str, Any], field: str, message: str) -> None:
    job_id, status, answer = post(deployment(plugin_schemas=schema_file), "slow", inputs)
    assert status == 400, answer
    assert answer["error"]["code"] == "invalid_field" and answer["error"]["field"] == field, answer
    assert message in answer["error"]["message"], answer
    nothing_kept(stack, job_id)


def test_a_good_plugin_input_is_queued_with_its_digest_and_succeeds(
        stack: Stack, deployment: Any, schema_file: Path, published: Queue) -> None:
    job_id, status, answer = post(deployment(plugin_schemas=schema_file), "slow",
                                  {"prompt": "x", "steps": 2, "delay": 0})
    assert status == 202, answer
    job = JobSpec.model_validate(queued_job(published, job_id))
    assert job.schema_digest == json.loads(schema_file.read_text())["pipelines"]["slow"]["digest"]
    assert wait_for(stack.api_url, job_id, timeout=120)["state"] == "succeeded"


def test_a_plugin_the_file_does_not_list_and_a_builtin_are_bounded_as_before(
        stack: Stack, deployment: Any, schema_file: Path, published: Queue) -> None:
    """No digest is stamped, and the field is left out of the message (workers of the version before it refuse
    fields they do not know); the unlisted plugin's bad input is the worker's to refuse, as it was."""
    dep = deployment(plugin_schemas=schema_file)
    job_id, status, answer = post(dep, "solid", {"prompt": "x", "colour": "red"})
    assert status == 202, answer
    assert "schema_digest" not in queued_job(published, job_id)
    doc = wait_for(stack.api_url, job_id, timeout=120)
    assert doc["state"] == "failed" and doc["error"]["code"] == "invalid_inputs", doc
    job_id, status, answer = post(dep, "txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1})
    assert status == 202, answer
    assert "schema_digest" not in queued_job(published, job_id)


@pytest.mark.parametrize("content", [None, "{not json", json.dumps({"version": 2, "pipelines": {}}),
                                     "edited"])
def test_a_missing_or_malformed_file_is_a_500_naming_the_setting_and_builtins_go_on(
        stack: Stack, deployment: Any, tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "plugin-schemas.json"
    if content == "edited":  # a bound changed by hand: its digest no longer says which schema it is
        document = schemas_document([SlowSteps])
        document["pipelines"]["slow"]["schema"]["properties"]["steps"]["maximum"] = 5
        content = json.dumps(document)
    if content is not None:
        path.write_text(content)
    dep = deployment(plugin_schemas=path)
    job_id, status, answer = post(dep, "slow", {"prompt": "x", "steps": 1, "delay": 0})
    assert status == 500 and answer["error"]["code"] == "plugin_schemas_unavailable", answer
    assert f"SPOTGEN_PLUGIN_SCHEMAS ({path})" in answer["error"]["message"], answer
    nothing_kept(stack, job_id)
    _, status, answer = post(dep, "txt2img", {"prompt": "x", "width": 64, "height": 64, "steps": 1, "seed": 3})
    assert status == 202, answer


def test_a_job_validated_against_another_plugin_version_fails_as_schema_mismatch(
        stack: Stack, deployment: Any, tmp_path: Path) -> None:
    """The API ships the schema of the next version of ``slow``; the stack's workers still run this one."""
    newer = write_schemas([SlowStepsV2], tmp_path / "plugin-schemas.json")
    job_id, status, answer = post(deployment(plugin_schemas=newer), "slow", {"prompt": "x", "steps": 1, "delay": 0})
    assert status == 202, answer
    doc = wait_for(stack.api_url, job_id, timeout=120)
    assert doc["state"] == "failed" and doc["error"]["code"] == "schema_mismatch", doc
    assert inputs_digest(SlowStepsV2) in doc["error"]["message"] and inputs_digest(SlowSteps) in doc["error"]["message"]


def test_a_worker_refuses_a_queued_job_whose_digest_is_not_its_own(stack: Stack) -> None:
    """A message sent to the work queue directly, as SQS delivers it: the worker checks what it receives."""
    spec = spec_of("solid", "f" * 64)
    now = utcnow()
    JobStore(stack.s3, Settings.from_env(stack.env)).create_status(StatusDoc(
        id=spec.id, state=JobState.queued, pipeline=spec.pipeline, model=spec.model, seed=spec.seed,
        created_at=now, updated_at=now))
    stack.sqs.send_message(QueueUrl=stack.env["SPOTGEN_QUEUE_URL"], MessageAttributes={
        "job_id": {"DataType": "String", "StringValue": spec.id}}, MessageBody=build_celery_message(
        spec.id, [spec.model_dump(mode="json")], queue=stack.env["SPOTGEN_QUEUE_NAME"]))
    doc = wait_for(stack.api_url, spec.id, timeout=120)
    assert doc["state"] == "failed" and doc["error"]["code"] == "schema_mismatch", doc
    assert "deploy the same plugin version to the API's schema file" in doc["error"]["message"]
