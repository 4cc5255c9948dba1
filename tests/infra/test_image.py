"""The worker image, offline: its Python install built the way the Dockerfile builds it (``.dockerignore``'s
context, the build stage's COPY and ``pip install`` steps, into a virtual environment of its own; see
``tests/harness/image_install.py``), then every command that the image and docs/deploy.md run, with the image's
executables: the ENTRYPOINT, the HEALTHCHECK, ``spotgen models verify``, ``spotgen pipeline schema`` and a plugin's
``from spotgen import Pipeline``. Also the toolchain check that ``SPOTGEN_COMPILE`` needs, and the rules the
build arguments and image tags follow.

Cost: about 14 s of CPU on one core (measured on this 2-core machine, idle): the install (pip and setuptools
build the wheel, about 1.5 s), two commands that import torch and diffusers (the plugin schema, 6.5 s; a worker's
refused start-up, 5 s) and five that do not (0.3 s each); the tiny models are the session's.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from docker.utils.build import PatternMatcher

from runtime.models.nodecache import compile_toolchain_problem
from tests.conftest import ROOT
from tests.harness.image_install import Builder, ImageInstall, stages

#: A plugin as an ML engineer writes one, installed into the image's environment (as a plugin package would be).
PLUGIN = '''
from pydantic import BaseModel
from spotgen import Pipeline


class Upscale(Pipeline):
    name = "resize"

    class Inputs(BaseModel):
        factor: int = 2

    def run(self, inputs, ctx):
        return []
'''


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> ImageInstall:
    return Builder(ROOT, tmp_path_factory.mktemp("image")).build()


def test_the_code_that_runs_is_the_image_install_not_this_checkout(image: ImageInstall) -> None:
    assert str(image.which("spotgen")).startswith(str(image.venv)), image.which("spotgen")
    assert "PYTHONPATH" not in image.env and not str(image.workdir).startswith(str(ROOT))
    where = image.run(["python", "-c", "import json, spotgen, runtime, pipelines, lambdas; print(json.dumps("
                       "[m.__file__ for m in (spotgen, runtime, pipelines, lambdas)]))"])
    assert where.returncode == 0, where.stderr
    for path in json.loads(where.stdout):
        assert path.startswith(str(image.venv)), path


def test_the_entrypoint_starts(image: ImageInstall) -> None:
    helped = image.run([*image.entrypoint, "--help"])
    assert helped.returncode == 0 and "--check" in helped.stdout, helped.stdout + helped.stderr


def test_the_healthcheck_says_no_worker_answers(image: ImageInstall) -> None:
    checked = image.run(image.healthcheck)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert f"cannot reach http://127.0.0.1:{image.env['SPOTGEN_METRICS_PORT']}/readyz" in checked.stdout
    assert "Traceback" not in checked.stderr, checked.stderr


def test_the_loader_verifies_models(image: ImageInstall, tiny_models: Path) -> None:
    verified = image.run(["spotgen", "models", "verify", "--models", str(tiny_models)])
    assert verified.returncode == 0 and "tiny-sd " in verified.stdout, verified.stdout + verified.stderr


def test_a_plugin_imports_spotgen_and_its_schema_is_written(image: ImageInstall) -> None:
    site = next(image.venv.glob("lib/python*/site-packages"))
    (site / "upscale_plugin.py").write_text(PLUGIN)
    schema = image.run(["spotgen", "pipeline", "schema", "--plugin", "upscale_plugin:Upscale", "resize"])
    assert schema.returncode == 0, schema.stderr
    assert "factor" in json.dumps(json.loads(schema.stdout)["pipelines"]["resize"])


def test_a_worker_told_to_compile_without_a_compiler_refuses_to_start(image: ImageInstall) -> None:
    """As in the image's final stage: no compiler on PATH. The worker stops at start-up with the reason, before
    it reaches AWS (the queue URL here answers nothing)."""
    started = image.run(image.entrypoint, env={"PATH": str(image.venv / "bin"), "SPOTGEN_COMPILE": "default",
                                               "SPOTGEN_QUEUE_URL": "https://sqs.us-east-1.amazonaws.com/1/q",
                                               "SPOTGEN_OUTPUT_BUCKET": "b", "SPOTGEN_METRICS_PORT": "0",
                                               # were the check gone: refused at once, not a wait on AWS
                                               "SPOTGEN_AWS_ENDPOINT_URL": "http://127.0.0.1:9",
                                               "SPOTGEN_STORE_RETRY_S": "0"})
    assert started.returncode == 1, started.stdout + started.stderr
    assert "spotgen worker: cannot start: SPOTGEN_COMPILE=default needs a C compiler" in started.stderr, \
        started.stderr[-2000:]


# ---- the toolchain check of SPOTGEN_COMPILE -------------------------------------------------------------------

def fake_toolchain(tmp_path: Path, *compilers: str, header: bool = True) -> tuple[str, Path]:
    bin_dir, include = tmp_path / "bin", tmp_path / "include"
    bin_dir.mkdir()
    include.mkdir()
    for name in compilers:
        (bin_dir / name).write_text("#!/bin/sh\n")
        (bin_dir / name).chmod(0o755)
    if header:
        (include / "Python.h").write_text("")
    return str(bin_dir), include


@pytest.mark.parametrize(("device", "compilers", "header", "problem"), [
    ("cuda", ("gcc",), True, None),
    ("cuda", ("clang",), True, None),
    ("cuda", (), True, "needs a C compiler"),
    ("cuda", ("cc",), True, "needs a C compiler"),  # Triton looks for gcc or clang only (or $CC)
    ("cuda", ("gcc",), False, "Python.h"),
    ("cpu", ("g++",), True, None),
    ("cpu", ("gcc",), True, "needs a C++ compiler"),
])
def test_the_compile_toolchain_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str,
                                     compilers: tuple[str, ...], header: bool, problem: str | None) -> None:
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("CXX", raising=False)
    path, include = fake_toolchain(tmp_path, *compilers, header=header)
    found = compile_toolchain_problem("default", device, path=path, include_dir=include)
    assert (found is None) if problem is None else (problem in str(found)), found


def test_the_compile_toolchain_check_follows_cc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, include = fake_toolchain(tmp_path, "my-cc")
    monkeypatch.setenv("CC", "my-cc")
    assert compile_toolchain_problem("default", "cuda", path=path, include_dir=include) is None
    monkeypatch.setenv("CC", "missing-cc")
    assert "CC=missing-cc" in str(compile_toolchain_problem("default", "cuda", path=path, include_dir=include))


# ---- .dockerignore semantics (Docker's documented rules, as the matcher above applies them) --------------------

def context(tmp_path: Path, patterns: list[str], files: list[str]) -> set[str]:
    for name in files:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    return {path for path in PatternMatcher(patterns).walk(str(tmp_path)) if (tmp_path / path).is_file()}


def test_dockerignore_later_patterns_win_and_exceptions_reinclude(tmp_path: Path) -> None:
    # Docker's own example: README-secret.md stays out although !README*.md came before it
    assert context(tmp_path, ["*.md", "!README*.md", "README-secret.md"],
                   ["README.md", "README-secret.md", "NOTES.md", "a.txt"]) == {"README.md", "a.txt"}


def test_dockerignore_allow_list_with_globstar_and_root_anchoring(tmp_path: Path) -> None:
    kept = context(tmp_path, ["*", "!pkg/", "**/__pycache__", "*.pyc", "pkg/secret.yaml"],
                   ["top.txt", "x.pyc", "pkg/a.py", "pkg/b.pyc", "pkg/sub/__pycache__/c.pyc", "pkg/secret.yaml"])
    # `*.pyc` is anchored at the root, unlike a .gitignore pattern: pkg/b.pyc stays
    assert kept == {"pkg/a.py", "pkg/b.pyc"}


def test_the_image_context_holds_every_package_the_install_names() -> None:
    """What pyproject's package finder includes is in the context and copied by the build stage."""
    builder = Builder(ROOT, Path("/nonexistent"))
    include = re.search(r'include = \[([^\]]*)\]', (ROOT / "pyproject.toml").read_text())
    assert include is not None
    copied = {word.strip("./") for value in stages(ROOT / "Dockerfile")[0].values("COPY") for word in value.split()}
    for package in re.findall(r'"(\w+)\*"', include.group(1)):
        assert any(path.startswith(f"{package}/") for path in builder.context), f"{package}/ not in the context"
        assert package in copied, f"the Dockerfile does not COPY {package}/"


# ---- build arguments and tags --------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "installs"), [("", None), ("0", None), ("0.0.35", "xformers==0.0.35"),
                                                 ("0.0.32.post2", "xformers==0.0.32.post2"), ("1", "refused"),
                                                 ("latest", "refused"), ("0.0.35; true", "refused")])
def test_xformers_only_at_the_exact_version_given(tmp_path: Path, value: str, installs: str | None) -> None:
    """The Dockerfile's own RUN line, run by sh with a pip that records its arguments: an unpinned xformers
    would resolve anew on each build (or try a source build without nvcc)."""
    build = stages(ROOT / "Dockerfile")[0]
    run = next(value for value in build.values("RUN") if "xformers" in value)
    (tmp_path / "pip").write_text('#!/bin/sh\necho "$@" > "$(dirname "$0")/pip-args"\n')
    (tmp_path / "pip").chmod(0o755)
    done = subprocess.run(["sh", "-c", run], env={"PATH": f"{tmp_path}:/usr/bin:/bin", "XFORMERS": value,
                                                 "TORCH_INDEX_URL": "https://index.invalid"},
                          capture_output=True, text=True, timeout=10)
    args = (tmp_path / "pip-args").read_text().split() if (tmp_path / "pip-args").exists() else None
    if installs is None:
        assert done.returncode == 0 and args is None, done.stderr
    elif installs == "refused":
        assert done.returncode == 1 and args is None and "exact xformers version" in done.stderr, done.stderr
    else:
        assert done.returncode == 0 and args is not None, done.stderr
        assert installs in args and "--only-binary=xformers" in args and "constraints.txt" in args, args


def test_deploy_docs_tag_images_by_version_and_commit() -> None:
    """ECR is immutable: a fixed tag fails the second push. Every image the docs build is tagged with the version
    and the commit, and the xformers variant has a tag of its own."""
    text = (ROOT / "docs/deploy.md").read_text()
    section = text[text.index("## 2. Build and push the worker image"):text.index("## 3. ")]
    assert re.search(r"^VERSION=\$\(sed -n .*pyproject\.toml\)$", section, re.M), section
    assert re.search(r"^COMMIT=\$\(git rev-parse --short=\d+ HEAD\)$", section, re.M), section
    assert re.search(r"^TAG=\$VERSION-\$COMMIT$", section, re.M), section
    builds = re.findall(r"docker buildx build (?:[^\n]*\\\n)*[^\n]*", section)
    tags = [re.search(r'-t "\$REGISTRY/spotgen-worker:([^"]+)"', build) for build in builds]
    assert len(builds) == 2 and all(tags), builds
    names = [tag.group(1) for tag in tags if tag]
    assert all(name.startswith("$TAG") for name in names) and len(set(names)) == 2, names
    assert "--build-arg XFORMERS=$XFORMERS" in builds[1] and "xformers$XFORMERS" in names[1], builds[1]
    # what the sed line reads is there
    assert re.search(r'^version = "[^"]+"$', (ROOT / "pyproject.toml").read_text(), re.M)
