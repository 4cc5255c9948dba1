"""The Lambda bundle of docs/deploy.md carries a boto3 that has the S3 calls the code makes (issue 34, item 9).

The functions write status documents with S3 conditional writes (PutObject ``IfNoneMatch`` and ``IfMatch``,
runtime/storage/jobstore.py). The Lambda runtime's own boto3 is whatever AWS last put there, so the bundle
vendors boto3 pinned by constraints.txt, and pyproject.toml's lower bounds admit no botocore without them.
"""

from __future__ import annotations

import gzip
import json
import re
import shlex
import tomllib
from pathlib import Path

import botocore
from packaging.requirements import Requirement
from packaging.version import Version

from tests.harness.infra_docs import DEPLOY_DOC, REPO

#: The first botocore whose S3 model has both: IfNoneMatch came in 1.35.2 (2024-08-20, "Add support for
#: conditional writes for PutObject"), IfMatch in 1.35.69 (2024-11-25, "ETag based conditional writes in
#: PutObject"), per botocore's CHANGELOG.rst and its service-2.json at those tags. boto3 shares the numbers.
FIRST_WITH_BOTH = Version("1.35.69")
#: Where the functions' code makes its S3 calls.
LAMBDA_CODE = ("lambdas", "runtime/storage", "runtime/contract")
CONDITIONAL = re.compile(r"\b(If(?:None)?Match)\b")


def bundle_command(text: str) -> list[str]:
    """The documented ``pip install --target build/lambda`` command, split as the shell splits it."""
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    found = [line for line in lines if "pip install" in line and "build/lambda" in line]
    assert len(found) == 1, f"expected one bundle command in docs/deploy.md, found {found}"
    return shlex.split(found[0])


def pins(constraints: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in constraints.splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            found.update({requirement.name.lower(): Version(s.version) for s in requirement.specifier
                          if s.operator == "=="})
    return found


def lower_bounds(pyproject: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for spec in tomllib.loads(pyproject)["project"]["dependencies"]:
        requirement = Requirement(spec)
        found.update({requirement.name.lower(): Version(s.version) for s in requirement.specifier
                      if s.operator == ">="})
    return found


def conditional_parameters() -> set[str]:
    """The PutObject conditions the functions' code passes."""
    return {match for root in LAMBDA_CODE for path in (REPO / root).rglob("*.py")
            for match in CONDITIONAL.findall(path.read_text())}


def put_object_members() -> set[str]:
    """PutObject's parameters in this environment's botocore (its S3 service model)."""
    model = Path(botocore.__file__).parent / "data/s3/2006-03-01/service-2.json.gz"
    return set(json.loads(gzip.decompress(model.read_bytes()))["shapes"]["PutObjectRequest"]["members"])


def check_bundle(command: list[str], constraints: str, pyproject: str) -> list[str]:
    errors = []
    target = command[command.index("--target") + 1] if "--target" in command else None
    if target != "build/lambda":
        errors.append(f"the bundle command does not install into build/lambda: {command}")
    if "-c" not in command or command[command.index("-c") + 1] != "constraints.txt":
        errors.append("the bundle command installs without -c constraints.txt: each build may get another boto3")
    if "boto3" not in command:
        errors.append("the bundle leaves boto3 out: the functions would run on the Lambda runtime's, which may "
                      "lack S3 conditional writes")
    pinned = pins(constraints)
    for name in ("boto3", "botocore"):
        if name not in pinned:
            errors.append(f"constraints.txt does not pin {name}")
        elif pinned[name] < FIRST_WITH_BOTH:
            errors.append(f"constraints.txt pins {name} {pinned[name]}, older than {FIRST_WITH_BOTH}")
        bound = lower_bounds(pyproject).get(name)
        if bound is None or bound < FIRST_WITH_BOTH:
            errors.append(f"pyproject.toml lets {name} be {bound or 'any version'}, older than {FIRST_WITH_BOTH}, "
                          "which has S3 PutObject's IfNoneMatch and IfMatch")
    return errors


def test_bundle_vendors_a_boto3_with_conditional_writes() -> None:
    command = bundle_command(DEPLOY_DOC.read_text())
    assert check_bundle(command, (REPO / "constraints.txt").read_text(), (REPO / "pyproject.toml").read_text()) == []


def test_the_pinned_botocore_has_what_the_code_passes() -> None:
    used = conditional_parameters()
    assert used >= {"IfNoneMatch", "IfMatch"}, f"the scan finds {used}: has the code moved?"
    assert Version(botocore.__version__) == pins((REPO / "constraints.txt").read_text())["botocore"], \
        "this environment's botocore is not the pinned one: make install"
    assert used <= put_object_members()


def test_broken_bundle() -> None:
    command = bundle_command(DEPLOY_DOC.read_text())
    constraints, pyproject = (REPO / "constraints.txt").read_text(), (REPO / "pyproject.toml").read_text()
    unpinned = [word for word in command if word not in ("-c", "constraints.txt", "boto3")]
    errors = check_bundle(unpinned, constraints, pyproject)
    assert any("constraints.txt" in e for e in errors) and any("leaves boto3 out" in e for e in errors), errors
    old = re.sub(r'"boto3>=[^"]+"', '"boto3>=1.34"', pyproject)
    assert any("lets boto3 be 1.34" in e for e in check_bundle(command, constraints, old))
    assert any("pins botocore 1.35.68" in e for e in check_bundle(
        command, re.sub(r"^botocore==.*$", "botocore==1.35.68", constraints, flags=re.M), pyproject))
