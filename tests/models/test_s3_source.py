"""S3 as a model source: the node cache fetches a prefix from the emulator through the fault proxy, with ranged
GETs, checked against the manifest as the bytes arrive, and commits nothing torn or corrupted to tier 1."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore.config import Config

from runtime.models.catalog import CatalogEntry, ModelError
from runtime.models.copying import SHA256, XXH3_128, NodeCacheError, manifest_of
from runtime.models.manifests import verify_model
from runtime.models.nodecache import NodeCache
from runtime.models.s3source import S3Tree
from runtime.models.store import ModelStore
from tests.harness.awswire import error_response
from tests.harness.faultproxy import FaultProxy
from tests.models.test_nodecache import make_model

KiB, MiB = 1024, 2**20
PART = 256 * KiB  # ranged GETs of 256 KiB: the 1 MiB file of ``make_model`` takes five
PIECE = 64 * KiB  # the manifests' xxh3_128 pieces: four per part
BIG = "unet/diffusion_pytorch_model.safetensors"
_RANGE = re.compile(rb"^content-range:\s*bytes (\d+)-(\d+)/(\d+)\s*$", re.IGNORECASE | re.MULTILINE)


class CountingProxy(FaultProxy):
    """The fault proxy, counting the body bytes of every GetObject answer it passes by the range's start; it
    cuts the next ``cuts`` answers that start at ``cut_at`` after half of their body, and answers the next
    ``fail_gets`` GetObjects with S3's 503 SlowDown (the listing passes).

    Every answer closes its connection (``Connection: close``): moto's server closes each connection after one
    answer and discards what arrives meanwhile, so a GET the proxy sent on it right after would wait for
    botocore's read timeout."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        super().__init__(upstream)
        self.served: Counter[int] = Counter()  # range start -> body bytes sent
        self.answers: Counter[int] = Counter()  # range start -> answers begun
        self.cut_at, self.cuts, self.fail_gets = -1, 0, 0
        self.cut_sent = 0
        self._counts = threading.Lock()

    def _send(self, client: Any, data: bytes) -> None:
        head, _, body = data.partition(b"\r\n\r\n")
        sent, cut = len(body), False
        if head.startswith(b"HTTP/1.1 20") and b"content-type: application/xml" not in head.lower():
            found = _RANGE.search(head)  # an object's bytes, not an error or a listing
            start = int(found.group(1)) if found else 0
            with self._counts:
                failed = self.fail_gets > 0
                self.fail_gets -= failed
                cut = not failed and start == self.cut_at and self.cuts > 0
                self.cuts -= cut
                sent = len(body) // 2 if cut else len(body)
                if not failed:
                    self.answers[start] += 1
                    self.served[start] += sent
                    self.cut_sent += sent if cut else 0
            if failed:
                self.injected["GetObject 503"] += 1
                head, _, body = error_response("s3", 503).partition(b"\r\n\r\n")
                sent = len(body)
        lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
        super()._send(client, b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body[:sent])
        if cut:
            client.shutdown(socket.SHUT_RDWR)  # the rest never comes: the connection ends mid-body
        raise OSError("answered: the proxy closes the connection")


@pytest.fixture
def proxy(emulator: str) -> Iterator[CountingProxy]:
    parts = urlsplit(emulator)
    with CountingProxy((parts.hostname, parts.port)) as running:
        yield running


def client(endpoint: str, attempts: int = 3) -> Any:
    return boto3.session.Session().client(
        "s3", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="testing",
        aws_secret_access_key="testing",  # noqa: S106 (the emulator's)
        config=Config(retries={"total_max_attempts": attempts, "mode": "standard"}, connect_timeout=2,
                      read_timeout=10, max_pool_connections=16))


def upload(emulator: str, directory: Path, prefix: str = "models/sd15") -> str:
    """A fresh bucket holding ``directory`` under ``prefix`` (straight to the emulator); its S3 URL."""
    bucket = f"spotgen-test-{uuid.uuid4().hex[:12]}"
    direct = client(emulator)
    direct.create_bucket(Bucket=bucket)
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        direct.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(directory).as_posix()}",
                          Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def gets(directory: Path) -> Counter[int]:
    """The GETs a fetch takes, by range start: one per file below a part, one per part of the others."""
    sizes = [p.stat().st_size for p in directory.rglob("*") if p.is_file()]
    return Counter(start for size in sizes if size for start in (range(0, size, PART) if size >= PART else [0]))


def tier1_holds_nothing(root: Path) -> bool:
    """No model, temporary copy or trash: only the lock files."""
    return sorted(p.name for p in root.iterdir()) == [".locks"]


def same_tree(a: Path, b: Path) -> bool:
    files = sorted(p.relative_to(a).as_posix() for p in a.rglob("*") if p.is_file())
    return files == sorted(p.relative_to(b).as_posix() for p in b.rglob("*") if p.is_file()) and all(
        (a / rel).read_bytes() == (b / rel).read_bytes() for rel in files)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return make_model(tmp_path / "efs" / "sd15", unet_bytes=MiB)  # 1 MiB + 17 bytes: not a whole part


@pytest.mark.parametrize("kind", [XXH3_128, SHA256])
def test_fetch_is_ranged_parallel_checked_and_a_later_hit_asks_s3_nothing(
        kind: str, model: Path, proxy: CountingProxy, emulator: str, tmp_path: Path) -> None:
    url = upload(emulator, model)
    manifest = manifest_of(model, kind, PIECE)
    cache = NodeCache(tmp_path / "node", 64 * MiB, readers=4)
    tree = S3Tree(url, client(proxy.url), concurrency=8, part_bytes=PART)
    result = cache.fetch("sd15", tree, manifest)
    assert result.copied and result.bytes_copied == sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert same_tree(model, result.path)
    assert kind != XXH3_128 or tree.reread == 0  # xxh3_128: every piece hashed as it arrived
    assert proxy.answers == gets(model) and proxy.answers[3 * PART] == 1  # one GET per part: none asked twice
    requests = sum(proxy.seen.values())
    again = cache.fetch("sd15", S3Tree(url, client(proxy.url)), manifest)
    assert not again.copied and sum(proxy.seen.values()) == requests  # a hit reads nothing on S3


@pytest.mark.parametrize("kind", [XXH3_128, SHA256])
def test_a_get_cut_mid_file_resumes_that_range_only(kind: str, model: Path, proxy: CountingProxy, emulator: str,
                                                     tmp_path: Path) -> None:
    url = upload(emulator, model)
    proxy.cut_at, proxy.cuts = 2 * PART, 1
    cache = NodeCache(tmp_path / "node", 64 * MiB)
    tree = S3Tree(url, client(proxy.url), part_bytes=PART)
    result = cache.fetch("sd15", tree, manifest_of(model, kind, PIECE))
    assert same_tree(model, result.path) and (kind != XXH3_128 or tree.reread == 0)
    # the cut part was asked for again, and no other part nor file
    assert proxy.cuts == 0 and proxy.answers == gets(model) + Counter({2 * PART: 1})
    total = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert sum(proxy.served.values()) == total + proxy.cut_sent  # the file was not started over
    assert 0 < proxy.cut_sent < PART


def test_a_part_cut_every_time_fails_naming_the_model_and_leaves_nothing(model: Path, proxy: CountingProxy,
                                                                          emulator: str, tmp_path: Path) -> None:
    url = upload(emulator, model)
    proxy.cut_at, proxy.cuts = 3 * PART, 100  # a part of the big file only
    root = tmp_path / "node"
    with pytest.raises(OSError, match=r"model 'sd15'.*s3://.*unet/diffusion_pytorch_model\.safetensors") as caught:
        NodeCache(root, 64 * MiB).fetch("sd15", S3Tree(url, client(proxy.url), attempts=3, part_bytes=PART),
                                        manifest_of(model, XXH3_128, PIECE))
    assert "failed after its retries" in str(caught.value)
    assert proxy.answers[3 * PART] == 3 and tier1_holds_nothing(root)


def test_throttling_and_5xx_are_retried_then_fail_naming_the_model(model: Path, proxy: CountingProxy,
                                                                    emulator: str, tmp_path: Path) -> None:
    url = upload(emulator, model)
    manifest = manifest_of(model, XXH3_128, PIECE)
    proxy.fail("s3", 2, 503)  # the listing: SlowDown twice
    proxy.fail_gets = 2  # two GETs
    cache = NodeCache(tmp_path / "ok", 64 * MiB)
    assert same_tree(model, cache.fetch("sd15", S3Tree(url, client(proxy.url), part_bytes=PART), manifest).path)
    assert proxy.injected["s3 503"] == 2 and proxy.injected["GetObject 503"] == 2
    root = tmp_path / "node"
    proxy.fail("s3", 1000, 500)
    with pytest.raises(OSError, match=r"model 'sd15': listing s3://.*failed after its retries.*InternalError"):
        NodeCache(root, 64 * MiB).fetch("sd15", S3Tree(url, client(proxy.url, attempts=2)), manifest)
    assert proxy.injected["s3 500"] == 2 and tier1_holds_nothing(root)  # botocore asked twice
    proxy.disarm()
    proxy.fail_gets = 1000
    with pytest.raises(OSError, match=r"model 'sd15': copying s3://.* failed: fetching .* after its retries.*SlowD"):
        NodeCache(root, 64 * MiB).fetch("sd15", S3Tree(url, client(proxy.url, attempts=2), part_bytes=PART),
                                        manifest)
    assert proxy.injected["GetObject 503"] > 2 and tier1_holds_nothing(root)


def test_refused_connections_are_retried_then_fail_naming_the_model(model: Path, proxy: CountingProxy,
                                                                     emulator: str, tmp_path: Path) -> None:
    url = upload(emulator, model)
    manifest = manifest_of(model, XXH3_128, PIECE)
    retrying = client(proxy.url)
    refused: list[str] = []

    def attempt(caught_exception: BaseException | None = None, **_: Any) -> None:
        if caught_exception is not None:
            refused.append(type(caught_exception).__name__)
            proxy.up()  # the endpoint comes back after the first refusal

    retrying.meta.events.register("needs-retry.s3", attempt)
    proxy.down()
    cache = NodeCache(tmp_path / "ok", 64 * MiB)
    assert same_tree(model, cache.fetch("sd15", S3Tree(url, retrying, part_bytes=PART), manifest).path)
    # refused, or reset at once if the proxy's listener was still closing: botocore tried again after the first
    assert len(refused) == 1 and refused[0] in ("EndpointConnectionError", "ConnectionClosedError")
    proxy.down()
    root = tmp_path / "node"
    with pytest.raises(OSError, match=r"model .sd15.: listing s3://.*retries.*(EndpointConn|ConnectionClosed)"):
        NodeCache(root, 64 * MiB).fetch("sd15", S3Tree(url, client(proxy.url, attempts=2)), manifest)
    assert tier1_holds_nothing(root)


@pytest.mark.parametrize("kind", [XXH3_128, SHA256])
def test_a_corrupted_object_fails_verification_and_leaves_nothing(kind: str, model: Path, emulator: str,
                                                                  tmp_path: Path) -> None:
    manifest = manifest_of(model, kind, PIECE)
    data = bytearray((model / BIG).read_bytes())
    data[3 * PART + 5] ^= 0x40  # one bit, in the fourth part
    (model / BIG).write_bytes(bytes(data))
    url = upload(emulator, model)
    root = tmp_path / "node"
    with pytest.raises(NodeCacheError, match=rf"model 'sd15': s3://.*/{BIG} has {kind} .* does not match the manif"):
        NodeCache(root, 64 * MiB).fetch("sd15", S3Tree(url, client(emulator), part_bytes=PART), manifest)
    assert tier1_holds_nothing(root)


def test_objects_the_manifest_does_not_list_or_pickles_are_refused(model: Path, emulator: str,
                                                                    tmp_path: Path) -> None:
    manifest = manifest_of(model, XXH3_128, PIECE)
    (model / "unet" / "extra.safetensors").write_bytes(b"x" * 10)
    with pytest.raises(NodeCacheError, match="weight files not in the manifest"):
        NodeCache(tmp_path / "a", 64 * MiB).fetch("sd15", S3Tree(upload(emulator, model), client(emulator)),
                                                  manifest)
    (model / "unet" / "extra.safetensors").unlink()
    (model / "unet" / "weights.bin").write_bytes(b"x" * 10)
    with pytest.raises(NodeCacheError, match="weights.bin is a pickle file"):
        NodeCache(tmp_path / "b", 64 * MiB).fetch("sd15", S3Tree(upload(emulator, model), client(emulator)), None)
    assert tier1_holds_nothing(tmp_path / "a") and tier1_holds_nothing(tmp_path / "b")


def test_catalog_takes_s3_directories_only_as_the_operator_writes_them() -> None:
    assert CatalogEntry(path="s3://models-bucket/sd/v1-5").s3
    for path, kind in (("s3://models-bucket/../etc", "base"), ("s3://Models/x", "base"),
                       ("s3://models-bucket/a//b", "base"), ("s3://models-bucket/x/", "base"),
                       ("s3://models-bucket/loras/detail.safetensors", "lora")):
        with pytest.raises(ValueError, match="s3://"):
            CatalogEntry(path=path, kind=kind)


def test_a_catalog_entry_on_s3_loads_from_its_node_cache_copy(models: Path, emulator: str, tmp_path: Path) -> None:
    from pipelines.common import base_pipeline

    catalog = json.loads((models / "catalog.json").read_text())
    entry = catalog["models"]["tiny-sd"]
    source = models / entry["path"]
    (models / "manifests").mkdir(exist_ok=True)
    (models / "manifests" / "tiny-s3.json").write_text(json.dumps(
        {"hash": XXH3_128, "chunk_bytes": PIECE, "files": {
            rel: value.rsplit(":", 1)[1] for rel, value in manifest_of(source, XXH3_128, PIECE).items()}}))
    url = upload(emulator, source, "models/tiny-sd")
    bucket_root = url.rsplit("/", 1)[0]
    catalog["models"]["tiny-s3"] = {**entry, "path": url, "aliases": [], "manifest": "manifests/tiny-s3.json"}
    catalog["models"]["tiny-root"] = {**entry, "path": "tiny-sd", "aliases": []}  # under s3_root
    catalog["s3_root"] = bucket_root
    (models / "catalog.json").write_text(json.dumps(catalog))
    with pytest.raises(ModelError, match="SPOTGEN_NODE_CACHE_DIR") as caught:
        ModelStore(models).source("tiny-s3")
    assert caught.value.code == "s3_needs_node_cache"
    store = ModelStore(models, node_cache=NodeCache(tmp_path / "node", 256 * MiB))
    store.s3_client = client(emulator)
    loaded = store.source("tiny-s3")
    assert loaded.path == tmp_path / "node" / "tiny-s3" / "model" and same_tree(source, loaded.path)
    assert base_pipeline(store, "tiny-s3").unet is not None
    assert same_tree(source, store.source("tiny-root").path)
    shutil.rmtree(tmp_path / "node" / "tiny-root")
    store.s3_client = client("http://127.0.0.1:9", attempts=1)  # nothing listens: the fetch fails, named
    with pytest.raises(ModelError, match="model 'tiny-root'") as failed:
        store.source("tiny-root")
    assert failed.value.code == "model_unreadable" and not (tmp_path / "node" / "tiny-root").exists()
    assert sorted(os.listdir(tmp_path / "node")) == [".locks", "tiny-s3"]
    assert verify_model(store, "tiny-s3").status == "ok"  # its tier-1 copy, hashed again
    listing = ModelStore(models)  # no node cache (`spotgen models verify`): the objects' names are checked
    listing.s3_client = client(emulator)
    assert verify_model(listing, "tiny-s3").status == "ok"
    bucket, prefix = url[len("s3://"):].split("/", 1)
    listing.s3_client.delete_object(Bucket=bucket, Key=f"{prefix}/model_index.json")
    assert verify_model(listing, "tiny-s3").problems == ["missing: model_index.json"]


def test_the_worker_role_reads_the_models_prefix_only() -> None:
    from tests.harness.infra_docs import template
    from tests.harness.template_checks import check_models_read

    policy = template()["Resources"]["WorkerPolicy"]["Properties"]["PolicyDocument"]
    assert check_models_read(policy) == []
    named = {s["Fn::If"][1].get("Sid"): s["Fn::If"][1] for s in policy["Statement"] if "Fn::If" in s}
    named["ReadModels"]["Resource"] = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ModelsBucket}/*"}  # the whole bucket
    del named["ListModels"]["Condition"]  # any prefix
    assert [e.split(" must")[0] for e in check_models_read(policy)] == ["WorkerPolicy's ReadModels",
                                                                        "WorkerPolicy's ListModels"]


def test_a_fetch_ahead_that_s3_fails_leaves_nothing_and_the_preloads_own_fetch_succeeds(
        models: Path, emulator: str, proxy: CountingProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from runtime.worker.preload import fetch_ahead

    catalog = json.loads((models / "catalog.json").read_text())
    source = models / catalog["models"]["tiny-sd"]["path"]
    url = upload(emulator, source, "models/tiny-sd")
    catalog["models"]["tiny-s3"] = {**catalog["models"]["tiny-sd"], "path": url, "aliases": []}
    (models / "catalog.json").write_text(json.dumps(catalog))
    store = ModelStore(models, node_cache=NodeCache(tmp_path / "node", 256 * MiB))
    store.s3_client = client(proxy.url, attempts=1)
    proxy.fail("s3", 1, 500)  # the fetch ahead's listing: an internal error, not retried with one attempt
    caplog.set_level("INFO", "spotgen")
    thread = fetch_ahead(store, ["tiny-s3"])
    assert thread is not None
    thread.join(60)
    assert proxy.injected["s3 500"] == 1 and tier1_holds_nothing(tmp_path / "node")
    assert any("tiny-s3: fetch ahead of the preload failed" in record.getMessage() for record in caplog.records)
    assert same_tree(source, store.source("tiny-s3").path)  # the preload's own fetch, S3 answering again
