"""Job storage in S3: status documents, input images, outputs, result documents, presigned URLs.

Layout of the output bucket: ``jobs/{id}/status.json`` (the status the API returns), ``jobs/{id}/result.json``
(written once, when the job ends) and ``{output_prefix}/{id}/{n}.png``. Inputs go to the input bucket under
``inputs/{id}/{submission}/``: the submit request that created the job, so that a concurrent request reusing the id
never overwrites them. Until SNS has its message, a job's message waits at ``pending/{id}/{submission}.json`` in
the output bucket (``lambdas/outbox.py``). Every other key is derived from the job id only, so a redelivered job
overwrites rather than adds.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from runtime.config import Settings
from runtime.contract import StatusDoc
from runtime.contract.images import InlineImage, parse_s3_uri


def status_key(job_id: str) -> str:
    return f"jobs/{job_id}/status.json"


def result_key(job_id: str) -> str:
    return f"jobs/{job_id}/result.json"


def output_key(prefix: str, job_id: str, index: int, extension: str = "png") -> str:
    return f"{prefix}/{job_id}/{index}.{extension}"


def checkpoint_key(job_id: str) -> str:
    return f"checkpoints/{job_id}/latest.safetensors"


#: Where jobs wait whose message SNS may not have yet: a short list, that the sweep reads whole.
PENDING_PREFIX = "pending/"


def pending_key(job_id: str, submission: str) -> str:
    return f"{PENDING_PREFIX}{job_id}/{submission}.json"


class StatusConflict(Exception):
    """The status document changed since it was read (a cancel, or another worker): read it again."""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class JobStore:
    """S3 access for one deployment (an S3 client plus the two bucket names)."""

    def __init__(self, s3: Any, settings: Settings) -> None:
        self.s3 = s3
        self.input_bucket = settings.input_bucket
        self.output_bucket = settings.output_bucket
        self.presign_expiry_s = settings.presign_expiry_s

    # -- status documents -------------------------------------------------------------------------------
    def create_status(self, doc: StatusDoc) -> bool:
        """Write the first status document unless one exists already (the idempotency check).

        ``If-None-Match: *`` makes the check atomic in S3: of two concurrent submits with one id, one wins.
        """
        return self._create(status_key(doc.id), doc.model_dump_json().encode()) is not None

    def create_status_tagged(self, doc: StatusDoc) -> str | None:
        """As ``create_status``: the new document's ETag, or None when one existed already."""
        return self._create(status_key(doc.id), doc.model_dump_json().encode())

    def delete_status(self, job_id: str) -> None:
        self.s3.delete_object(Bucket=self.output_bucket, Key=status_key(job_id))

    def read_status(self, job_id: str) -> StatusDoc | None:
        return self.read_status_tagged(job_id)[0]

    def read_status_tagged(self, job_id: str) -> tuple[StatusDoc | None, str | None]:
        """The status document and its ETag, for a later conditional ``write_status``."""
        try:
            obj = self.s3.get_object(Bucket=self.output_bucket, Key=status_key(job_id))
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None, None
            raise
        return StatusDoc.model_validate_json(obj["Body"].read()), obj["ETag"]

    def write_status(self, doc: StatusDoc, if_match: str | None = None) -> str:
        """Write the status document; with ``if_match`` only if it is still the version with that ETag
        (S3 conditional write), else ``StatusConflict``. Returns the new ETag."""
        extra = {"IfMatch": if_match} if if_match else {}
        try:
            out = self.s3.put_object(Bucket=self.output_bucket, Key=status_key(doc.id), Body=doc.model_dump_json(),
                                     ContentType="application/json", **extra)
        except ClientError as exc:
            if if_match and _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412",
                                                  "NoSuchKey", "404"):
                raise StatusConflict(doc.id) from None
            raise
        return str(out["ETag"])

    # -- generic objects ----------------------------------------------------------------------------------
    def get_json(self, bucket: str, key: str) -> Any | None:
        try:
            body = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        return json.loads(body)

    def create_json(self, key: str, data: Any) -> bool:
        """Write ``data`` unless the key exists (atomic in S3); False if it did."""
        return self._create(key, json.dumps(data, default=str).encode()) is not None

    def _create(self, key: str, body: bytes) -> str | None:
        """The new object's ETag; None if the key existed."""
        try:
            out = self.s3.put_object(Bucket=self.output_bucket, Key=key, Body=body, ContentType="application/json",
                                     IfNoneMatch="*")
        except ClientError as exc:
            if _error_code(exc) in ("PreconditionFailed", "ConditionalRequestConflict", "412"):
                return None
            raise
        return str(out["ETag"])

    # -- pending messages (lambdas/outbox.py) -----------------------------------------------------------------
    def list_pending(self) -> list[tuple[str, str, datetime]]:
        """Every pending message as (job id, submission, when it was written)."""
        found = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.output_bucket,
                                                                       Prefix=PENDING_PREFIX):
            for obj in page.get("Contents", []):
                parts = obj["Key"][len(PENDING_PREFIX):].split("/")
                if len(parts) == 2 and parts[1].endswith(".json"):
                    found.append((parts[0], parts[1][:-len(".json")], obj["LastModified"]))
        return found

    def delete_pending(self, job_id: str, submission: str) -> None:
        self.s3.delete_object(Bucket=self.output_bucket, Key=pending_key(job_id, submission))

    def put_json(self, key: str, data: Any) -> None:
        self.s3.put_object(Bucket=self.output_bucket, Key=key, Body=json.dumps(data, default=str).encode(),
                           ContentType="application/json")

    # -- images ----------------------------------------------------------------------------------------
    def put_input(self, job_id: str, name: str, image: InlineImage, submission: str | None = None) -> str:
        """Store an inline input image; under the submission's own folder when given (``submission``)."""
        key = f"inputs/{job_id}/{submission}/{name}.{image.format}" if submission else \
            f"inputs/{job_id}/{name}.{image.format}"
        self.s3.put_object(Bucket=self.input_bucket, Key=key, Body=image.data, ContentType=image.content_type)
        return f"s3://{self.input_bucket}/{key}"

    def get_input(self, uri: str, max_bytes: int) -> bytes:
        """Read an input image; the URI is checked again to lie in the input bucket."""
        ref = parse_s3_uri(uri, self.input_bucket)
        obj = self.s3.get_object(Bucket=ref.bucket, Key=ref.key)
        if obj.get("ContentLength", 0) > max_bytes:
            raise ValueError(f"input image {uri} is larger than {max_bytes} bytes")
        return obj["Body"].read(max_bytes + 1)

    def put_output(self, key: str, data: bytes, content_type: str = "image/png") -> str:
        """An output image, with the content type of its format (a browser opening its URL shows it)."""
        self.s3.put_object(Bucket=self.output_bucket, Key=key, Body=data, ContentType=content_type)
        return f"s3://{self.output_bucket}/{key}"

    # -- checkpoints ---------------------------------------------------------------------------------------
    def put_checkpoint(self, job_id: str, data: bytes) -> None:
        """One PUT: S3 makes it atomic (a reader sees the previous checkpoint or this one, never a mix)."""
        self.s3.put_object(Bucket=self.output_bucket, Key=checkpoint_key(job_id), Body=data,
                           ContentType="application/octet-stream")

    def get_checkpoint(self, job_id: str, max_bytes: int) -> bytes | None:
        try:
            obj = self.s3.get_object(Bucket=self.output_bucket, Key=checkpoint_key(job_id))
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        if obj.get("ContentLength", 0) > max_bytes:
            raise ValueError(f"checkpoint of job {job_id} is larger than {max_bytes} bytes")
        return obj["Body"].read()

    def delete_checkpoint(self, job_id: str) -> None:
        self.s3.delete_object(Bucket=self.output_bucket, Key=checkpoint_key(job_id))

    def presign(self, key: str) -> str:
        return self.s3.generate_presigned_url("get_object", Params={"Bucket": self.output_bucket, "Key": key},
                                              ExpiresIn=self.presign_expiry_s)
