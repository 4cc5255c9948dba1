"""Every command line of docs/deploy.md, read the way its own tool reads it (issue 34, items 2 and 10).

A page of commands that a reader copies is code: ``sam deploy --parameter-overrides`` is parsed by the AWS SAM
CLI's own click command (in .venv/samcli), ``hf download`` by huggingface_hub's, ``spotgen`` by spotgen's argparse
parser, and ``kubectl``/``kustomize`` commands against the manifests kustomize renders. Words are taken as the shell
hands them over (tests/harness/deploy_commands.py): quotes removed, nothing expanded. The files the page writes
(the model catalog, the parameter files ``sam deploy`` reads) are written again from the page itself, so that the
models the API is deployed with are checked against the library the workers get.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
from pathlib import Path, PurePosixPath

import pytest
import yaml

from runtime import cli as runtime_cli
from runtime.config import PREFIX, Settings
from runtime.models.catalog import Catalog
from runtime.models.parameters import stack_parameters
from spotgen import cli as spotgen_cli
from tests.harness.deploy_commands import Command, page_commands, sam_parse, shell_blocks
from tests.harness.infra_docs import DEPLOY_DOC, OVERLAY, REPO, render, template

#: The programs whose command lines are checked here.
CHECKED = {"sam", "spotgen", "kubectl", "kustomize", "hf"}
#: The other programs the page runs, and why no parser checks them here.
UNCHECKED = {
    "eksctl": "no offline parser for its flags; the Fargate profile's file is tests/infra/test_capacity.py's",
    "aws": "the AWS CLI's parameters are service models; its commands are plain and checked by reading",
    "docker": "no Docker daemon or buildx here; the image's own commands are tests/infra/test_image.py's",
    "python3": "the Lambda bundle's pip install: tests/infra/test_lambda_bundle.py",
    "curl": "plain HTTP", "sigv4": "the page's own function around curl", "out": "the page's own function",
    **dict.fromkeys(("export", "echo", "rm", "mkdir", "cp", "envsubst", "tr", "cat", "printf", "tar", "eval",
                     "sleep", "sed", "openssl", "[", "mv", "git"), "everyday tools"),
}
#: Namespaces and Deployments the page names that other installs make, not spotgen's manifests.
EXTERNAL = {("Namespace", "keda"): "KEDA's Helm chart (step 1)",
            ("Deployment", "keda-operator"): "KEDA's Helm chart (step 1)"}
#: Resource types the page lists that the controllers make, not spotgen's manifests.
EXTERNAL_KINDS = {"HorizontalPodAutoscaler": "KEDA makes one per ScaledObject", "Pod": "made by the Deployments",
                  "NodeClaim": "Karpenter makes one per node", "Node": "Karpenter's NodeClaims become nodes"}
KUBECTL_VALUE_FLAGS = {"-l", "--selector", "-o", "--output"}
KUBECTL_SHORT = {"hpa": "HorizontalPodAutoscaler", "deploy": "Deployment", "po": "Pod", "ns": "Namespace"}
#: The files of stable-diffusion-v1-5/stable-diffusion-v1-5 on the Hub (2026), with their sizes in MB where they
#: matter: what the page's `hf download` patterns are matched against, as `hf` matches them.
SD15_FILES = {
    ".gitattributes": 0, "README.md": 0, "model_index.json": 0, "v1-inference.yaml": 0,
    "feature_extractor/preprocessor_config.json": 0,
    "safety_checker/config.json": 0, "safety_checker/model.safetensors": 1216,
    "safety_checker/model.fp16.safetensors": 608,
    "safety_checker/pytorch_model.bin": 1216, "safety_checker/pytorch_model.fp16.bin": 608,
    "scheduler/scheduler_config.json": 0,
    "text_encoder/config.json": 0, "text_encoder/model.safetensors": 492, "text_encoder/model.fp16.safetensors": 246,
    "text_encoder/pytorch_model.bin": 492, "text_encoder/pytorch_model.fp16.bin": 246,
    "tokenizer/merges.txt": 0, "tokenizer/special_tokens_map.json": 0, "tokenizer/tokenizer_config.json": 0,
    "tokenizer/vocab.json": 0,
    "unet/config.json": 0, "unet/diffusion_pytorch_model.safetensors": 3438,
    "unet/diffusion_pytorch_model.fp16.safetensors": 1719, "unet/diffusion_pytorch_model.bin": 3438,
    "unet/diffusion_pytorch_model.fp16.bin": 1719, "unet/diffusion_pytorch_model.non_ema.bin": 3438,
    "unet/diffusion_pytorch_model.non_ema.safetensors": 3438,
    "vae/config.json": 0, "vae/diffusion_pytorch_model.safetensors": 335,
    "vae/diffusion_pytorch_model.fp16.safetensors": 167,
    "vae/diffusion_pytorch_model.bin": 335, "vae/diffusion_pytorch_model.fp16.bin": 167,
    "v1-5-pruned.ckpt": 7700, "v1-5-pruned.safetensors": 7700, "v1-5-pruned-emaonly.ckpt": 4270,
    "v1-5-pruned-emaonly.safetensors": 4270, "v1-5-pruned-emaonly-fp16.safetensors": 2130,
}
#: The weights a StableDiffusionPipeline loads without a variant, the safety checker left out (the worker passes
#: safety_checker=None): diffusers' and transformers' file names, with no variant before the suffix.
SD15_WEIGHTS = {"unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                "text_encoder/model.safetensors"}


def _commands(page: str | None = None) -> list[Command]:
    return page_commands(DEPLOY_DOC.read_text() if page is None else page, CHECKED)


def _of(commands: list[Command], program: str) -> list[Command]:
    return [command for command in commands if command.program == program]


def _spotgen_parser():
    """spotgen's own parser, as its console script (spotgen/cli.py main) builds it, without running anything."""
    parser = runtime_cli.build_parser()
    spotgen_cli.add_commands(next(action for action in parser._actions if hasattr(action, "add_parser")))
    return parser


def _spotgen_args(argv: list[str], where: Command) -> object:
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return _spotgen_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: spotgen does not parse it: {stderr.getvalue().strip()}")


def _nested_spotgen(command: Command) -> list[str] | None:
    """The spotgen arguments of a command that runs spotgen elsewhere: in a pod (``kubectl exec POD -- spotgen``)
    or in the image (``docker run --entrypoint spotgen IMAGE ...``)."""
    words = list(command.words)
    if command.program == "kubectl" and "--" in words and words[words.index("--") + 1:][:1] == ["spotgen"]:
        return words[words.index("--") + 2:]
    if command.program == "docker" and "--entrypoint" in words and words[words.index("--entrypoint") + 1] == "spotgen":
        return words[words.index("--entrypoint") + 3:]  # after the image
    return None


# == the page as a whole =======================================================================================
def test_every_program_on_the_page_is_checked_or_said_why_not() -> None:
    commands = _commands()
    assert len(commands) > 40, "hardly any command found in docs/deploy.md: is the extraction right?"
    unknown = sorted({str(c) for c in commands if c.program not in CHECKED | set(UNCHECKED)})
    assert not unknown, "commands no test reads (check them here, or say in UNCHECKED why not):\n" + "\n".join(unknown)


# == spotgen ===================================================================================================
def test_spotgen_commands_parse_and_name_their_model_library() -> None:
    """Each spotgen command line parses with spotgen's parser; a `models` command names its library with
    --models: without it, it reads the dev stack's tiny models (.spotgen/models), never the deployment's."""
    commands = _of(_commands(), "spotgen")
    nested = [(c, argv) for c in _commands() if (argv := _nested_spotgen(c)) is not None]
    assert commands and nested
    for command, argv in [(c, list(c.words[1:])) for c in commands] + nested:
        args = _spotgen_args(argv, command)
        if args.command == "models" and args.models_command != "tiny":
            assert args.models, f"{command}: names no --models library: it would read {runtime_cli.DEFAULT_MODELS_DIR}"


# == hf download: fp16 weights only (item 10) ==================================================================
def _hf(command: Command) -> dict[str, object]:
    import click
    from huggingface_hub.cli.hf import app

    try:
        ctx = app.make_context("hf", list(command.words[1:]))
        name, sub, rest = app.resolve_command(ctx, list(command.words[1:]))
        return sub.make_context(name, rest, parent=ctx).params
    except click.ClickException as exc:
        pytest.fail(f"{command}: hf does not parse it: {exc.format_message()}")


def test_hf_downloads_fetch_what_the_workers_load_and_no_more() -> None:
    """hf's --include/--exclude take one pattern each: a second one is a file name, and then hf ignores every
    pattern. The SD 1.5 download fetches the fp16 weights only, no safety checker, renamed to the names a worker
    loads without a variant: less than half the bytes on EFS and on each node (1.7 + 0.25 + 0.17 GB instead of
    3.4 + 0.49 + 0.34 + 1.2)."""
    from huggingface_hub.utils import filter_repo_objects

    downloads = _of(_commands(), "hf")
    assert downloads
    for command in downloads:
        params = _hf(command)
        assert not params["filenames"], (f"{command}: hf takes {params['filenames']} as file names to fetch, and "
                                         "then ignores --include/--exclude: give each pattern its own flag")
        assert PurePosixPath(params["local_dir"]).parts[0] == "library", f"{command}: not into library/"
    (sd15,) = [c for c in downloads if _hf(c)["repo_id"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"]
    params = _hf(sd15)
    fetched = set(filter_repo_objects(SD15_FILES, allow_patterns=list(params["include"]) or None,
                                      ignore_patterns=list(params["exclude"]) or None))
    weights = {name for name in fetched if SD15_FILES[name]}
    assert not any(name.startswith("safety_checker/") for name in fetched), f"{sd15}: fetches the safety checker"
    assert weights and all(name.endswith(".fp16.safetensors") for name in weights), f"{sd15}: fetches {weights}"
    renamed = _rename_as_the_page_does(sorted(fetched), params["local_dir"])
    assert {name for name in renamed if name.endswith(".safetensors")} == SD15_WEIGHTS, renamed


def _rename_as_the_page_does(files: list[str], local_dir: str) -> set[str]:
    """Run the page's rename loop (the line of its block that renames ``*.fp16.safetensors``) with bash over empty
    files named as ``hf`` fetched them; returns the names afterwards, relative to ``local_dir``."""
    import tempfile

    lines = [line for _, body in shell_blocks(DEPLOY_DOC.read_text()) for line in body.splitlines()
             if line.startswith("for ") and ".fp16.safetensors" in line]
    assert len(lines) == 1, "docs/deploy.md has no one-line loop that renames the fp16 weights to plain names"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp, local_dir)
        for name in files:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).touch()
        subprocess.run(["bash", "-euc", lines[0]], cwd=tmp, check=True, timeout=30)
        return {path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()}


# == sam: parameters arrive as written (item 2), and the models are the library's (item 10) ====================
def _write_page_files(commands: list[Command], cwd: Path) -> None:
    """Write, in ``cwd`` and in the page's order, the files the page writes: here-documents (``cat > FILE <<EOF``)
    and spotgen's output (``spotgen models parameters ... > FILE``), run in this process on those files."""
    for command in commands:
        target = command.output()
        if target is None or target.startswith("$"):
            continue
        path = cwd / target
        if command.program == "cat" and command.heredoc is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(command.heredoc)
        elif command.program == "spotgen" and command.words[1:3] in (("models", "parameters"), ("models", "aliases")):
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.chdir(cwd):
                assert spotgen_cli.main(list(command.words[1:])) == 0, f"{command}: failed"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(out.getvalue())


def _expected_overrides(command: Command, cwd: Path) -> dict[str, str]:
    """The parameters as the page writes them: ``Key=Value`` words and the files of ``file://`` words, in order."""
    words = list(command.words)
    expected: dict[str, str] = {}
    for word in words[words.index("--parameter-overrides") + 1:]:
        if word.startswith("-"):
            break
        if word.startswith("file://"):
            loaded = yaml.safe_load((cwd / word.removeprefix("file://")).read_text())
            expected.update({key: "" if value is None else str(value) for key, value in loaded.items()})
        else:
            key, _, value = word.partition("=")
            expected[key] = value
    return expected


def _function_env(overrides: dict[str, str]) -> dict[str, str]:
    """The SPOTGEN_* variables the API functions get from the stack's parameters (overrides, else defaults)."""
    tpl = template()
    parameters = tpl["Parameters"]
    variables = {**tpl["Globals"]["Function"]["Environment"]["Variables"],
                 **tpl["Resources"]["CompatFunction"]["Properties"]["Environment"]["Variables"]}
    env = {}
    for name, value in variables.items():
        ref = value.get("Ref") if isinstance(value, dict) else None
        if name.startswith(PREFIX) and ref in parameters:
            env[name] = overrides.get(ref, str(parameters[ref].get("Default", "")))
    return env


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Command, dict[str, str], dict]]:
    """Each `sam deploy` of the page with the parameters it writes and what the SAM CLI makes of them."""
    return _deployed(_commands(), tmp_path_factory.mktemp("deploy"))


def _deployed(commands: list[Command], cwd: Path) -> list[tuple[Command, dict[str, str], dict]]:
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith(PREFIX)]:
            patch.delenv(name)
        _write_page_files(commands, cwd)
    (cwd / "lambdas").symlink_to(REPO / "lambdas")
    sams = _of(commands, "sam")
    parsed = sam_parse([list(c.words[1:]) for c in sams], cwd)
    deploys = []
    for command, result in zip(sams, parsed, strict=True):
        assert "error" not in result, f"{command}: the SAM CLI refuses it: {result['error']}"
        if result["command"] == "deploy":
            deploys.append((command, _expected_overrides(command, cwd), result["params"]))
    return deploys


def _check_deploys(deploys: list[tuple[Command, dict[str, str], dict]]) -> None:
    declared = template()["Parameters"]
    for command, written, parsed in deploys:
        arrived = parsed["parameter_overrides"]
        for key, value in written.items():
            assert arrived.get(key) == value, (f"{command}: {key} arrives as {arrived.get(key)!r}, written "
                                               f"{value!r}")
        assert arrived == written, f"{command}: the SAM CLI sees {arrived}, the page writes {written}"
        assert set(arrived) <= set(declared), f"{command}: lambdas/template.yaml has no {set(arrived) - set(declared)}"
        try:
            Settings.from_env(_function_env(arrived))
        except SystemExit as exc:
            pytest.fail(f"{command}: the API functions would refuse every request: {exc}")


def test_sam_deploy_parameters_arrive_as_written(deployed) -> None:
    assert deployed, "docs/deploy.md deploys no stack with `sam deploy`"
    _check_deploys(deployed)
    overlay = render(OVERLAY)
    accounts = {(doc["metadata"].get("namespace"), doc["metadata"]["name"]) for doc in overlay
                if doc["kind"] == "ServiceAccount"}
    defaults = template()["Parameters"]
    for command, _, parsed in deployed:
        value = {key: parsed["parameter_overrides"].get(key, defaults[key].get("Default")) for key in defaults}
        for account in ("WorkerServiceAccount", "CollectorServiceAccount"):
            assert (value["WorkerNamespace"], value[account]) in accounts, \
                f"{command}: {account} {value['WorkerNamespace']}/{value[account]} is in no rendered manifest"


def test_a_quoted_json_parameter_on_the_command_line_is_caught(tmp_path: Path) -> None:
    """The form the page once printed: the SAM CLI cuts an unquoted value at its first '"'."""
    page = ("```sh\nsam deploy --template-file lambdas/template.yaml --stack-name \"$STACK\" --parameter-overrides "
            "ClusterName=\"$CLUSTER_NAME\" CompatRuntimes='{\"sdruntime\":{\"model\":\"sd15\"}}' "
            "WebuiRuntime=sdruntime\n```\n")
    deploys = _deployed(_commands(page), tmp_path)
    with pytest.raises(AssertionError, match=re.escape("CompatRuntimes arrives as '{', written '{\"sdruntime\"")):
        _check_deploys(deploys)


def test_the_api_accepts_exactly_the_models_the_library_holds(deployed) -> None:
    """Every `sam deploy` takes the model parameters from the catalog that step 7 copies onto EFS, and the catalog
    names the directories the downloads fill."""
    commands = _commands()
    (catalog_file,) = [c for c in commands if c.program == "cat" and (c.output() or "").endswith("catalog.json")]
    library = PurePosixPath(catalog_file.output()).parent
    catalog = Catalog.model_validate(json.loads(catalog_file.heredoc))
    expected = stack_parameters(catalog)
    for command, _, parsed in deployed:
        arrived = parsed["parameter_overrides"]
        for key in ("Models", "ControlNets", "Loras", "ModelFamilies"):
            assert arrived.get(key) == expected[key], (f"{command}: {key}={arrived.get(key)!r}, but the library's "
                                                       f"catalog ({catalog_file.output()}) holds {expected[key]!r}")
    downloaded = {PurePosixPath(_hf(c)["local_dir"]) for c in _of(commands, "hf")}
    assert {library / entry.path for entry in catalog.models.values()} <= downloaded, "a catalog path nothing fills"
    copies = [c for c in commands if c.program == "tar" and "-cf" in c.words]
    assert copies and all(c.words[c.words.index("-C") + 1] == str(library) for c in copies), \
        f"step 7 copies another directory than the library the stack's models come from ({library})"


# == kubectl and kustomize =====================================================================================
def _kustomize_dir(word: str, commands: list[Command]) -> Path:
    """A kustomization directory; ``$OVERLAY`` is the one the page copies (``cp -r SRC "$OVERLAY"``)."""
    if word.startswith("$"):
        sources = [c.words[-2] for c in commands if c.program == "cp" and c.words[-1] == word]
        assert sources, f"the page never makes {word}"
        word = sources[0]
    return REPO / word


def test_kubectl_commands_name_what_the_manifests_make() -> None:
    commands = _commands()
    kubectl = _of(commands, "kubectl") + _of(commands, "kustomize")
    assert kubectl
    docs = [doc for d in ("infra/karpenter", "infra/k8s/loader") for doc in render(REPO / d)]
    docs += render(OVERLAY)
    kinds = {doc["kind"] for doc in docs} | set(EXTERNAL_KINDS)
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs} | set(EXTERNAL)
    namespaces = {name for kind, name in names if kind == "Namespace"}
    types = {**KUBECTL_SHORT, **{k.lower(): k for k in kinds}, **{k.lower() + "s": k for k in kinds}}

    def resource(command: Command, kind_word: str, name: str) -> None:
        kind = types.get(kind_word.lower())
        assert kind, f"{command}: no manifest makes a {kind_word}"
        assert (kind, name) in names or kind in EXTERNAL_KINDS, f"{command}: no manifest makes {kind} {name}"

    for command in kubectl:
        words = list(command.words[1:])
        if "-n" in words:
            namespace = words.pop(words.index("-n") + 1)
            words.remove("-n")
            assert namespace in namespaces, f"{command}: no manifest makes the namespace {namespace}"
        verb, rest = (words[0], words[1:]) if command.program == "kubectl" else ("kustomize", words[1:])
        positional = [w for i, w in enumerate(rest) if not w.startswith("-") and (i == 0 or rest[i - 1] not in
                                                                                    KUBECTL_VALUE_FLAGS)]
        if verb == "kustomize":
            render(_kustomize_dir(positional[0], commands))
        elif verb in ("apply", "delete"):
            assert rest[0] in ("-k", "-f"), f"{command}: apply/delete what?"
            if rest[0] == "-k":
                render(_kustomize_dir(rest[1], commands))
        elif verb == "rollout":
            resource(command, *(positional[1].split("/") if "/" in positional[1] else positional[1:3]))
        elif verb == "get":
            for kind_word in positional[0].split(","):
                assert types.get(kind_word.lower()), f"{command}: no manifest makes a {kind_word}"
        elif verb in ("logs", "wait") and "/" in positional[0]:
            resource(command, *positional[0].split("/"))
        elif verb == "wait":  # a type and --all
            assert "--all" in rest and types.get(positional[0].lower()), f"{command}: wait for what?"
        elif verb == "exec":
            resource(command, "pod", positional[0])
        else:
            pytest.fail(f"{command}: the test does not know `kubectl {verb}`: teach it")
