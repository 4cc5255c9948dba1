"""The worker image's Python install, built offline the way the Dockerfile builds it.

The Dockerfile is read with dockerfile-parse and the build context is what ``.dockerignore`` lets through, by
the Docker SDK's own matcher (``docker.utils.build.PatternMatcher``, a port of moby's: patterns in order, a
later ``!`` re-includes, ``**``, anchored at the context's root). The build stage's ``COPY`` steps copy from that
context into a directory that stands for the image's root, and its ``pip install`` of the context runs there,
``--no-deps --no-index --no-build-isolation``, into a virtual environment at the stage's ``VIRTUAL_ENV`` that sees
this environment's packages through a ``.pth`` file (torch, diffusers... resolve offline; spotgen itself does not:
this environment's editable install is a ``.pth`` file there that a path line does not run). The image's own
commands then run with the final stage's environment, the image paths mapped into that directory.

What is left out is what needs the network: the base image, apt and the ``pip install`` of packages by name
(torch, xformers), which the ``.pth`` file stands in for.
"""

from __future__ import annotations

import json
import shlex
import shutil
import socket
import string
import subprocess
import sysconfig
import venv
from dataclasses import dataclass, field
from pathlib import Path

from docker.utils.build import PatternMatcher
from dockerfile_parse import DockerfileParser

#: Where the image's PATH starts (the base image's own entries are host paths here).
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class Stage:
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def values(self, instruction: str) -> list[str]:
        return [value for kind, value in self.instructions if kind == instruction]


def stages(dockerfile: Path) -> list[Stage]:
    """The Dockerfile's stages in order, each with its instructions (continuation lines joined)."""
    found: list[Stage] = []
    for item in DockerfileParser(path=str(dockerfile), cache_content=False).structure:
        kind, value = item["instruction"], item["value"]
        if kind == "FROM":
            words = value.split()
            found.append(Stage(words[2] if len(words) == 3 and words[1].upper() == "AS" else ""))
        elif kind != "COMMENT" and found:
            found[-1].instructions.append((kind, value))
    return found


def ignore_patterns(dockerignore: Path) -> list[str]:
    """The patterns as Docker reads them: one a line, trimmed, ``#`` lines and blank lines skipped."""
    lines = (line.strip() for line in dockerignore.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def context_files(root: Path, patterns: list[str]) -> set[str]:
    """The files (relative, ``/``-separated) that a build of ``root`` with these ignore patterns sends."""
    return {path for path in PatternMatcher(patterns).walk(str(root)) if (root / path).is_file()}


def image_env(stage: Stage, env: dict[str, str]) -> dict[str, str]:
    """``env`` updated by the stage's ENV instructions, ``$NAME`` and ``${NAME}`` substituted as Docker does."""
    env = dict(env)
    for value in stage.values("ENV"):
        for word in shlex.split(value):
            name, _, raw = word.partition("=")
            env[name] = string.Template(raw).safe_substitute(env)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ImageInstall:
    """The install: ``root`` stands for the image's ``/``; ``env`` is the final stage's environment, mapped."""

    root: Path
    venv: Path
    env: dict[str, str]
    workdir: Path
    entrypoint: list[str]
    healthcheck: list[str]

    def run(self, argv: list[str], env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``argv`` as the image runs it: its command found on the image's PATH, in the final WORKDIR. The timeout
        only catches a hang: a command importing torch took over 120 s on two cores shared with a heavy load."""
        full = {**self.env, **(env or {})}
        command = shutil.which(argv[0], path=full["PATH"])
        assert command is not None, f"{argv[0]} is not on the image's PATH {full['PATH']}"
        return subprocess.run([command, *argv[1:]], cwd=self.workdir, env=full, capture_output=True, text=True,
                              timeout=timeout)

    def which(self, name: str) -> str | None:
        return shutil.which(name, path=self.env["PATH"])


class Builder:
    """One build of the repository at ``repo`` under ``tmp``."""

    def __init__(self, repo: Path, tmp: Path) -> None:
        self.repo, self.root = repo, tmp / "image"
        self.stages = stages(repo / "Dockerfile")
        self.context = context_files(repo, ignore_patterns(repo / ".dockerignore"))

    def mapped(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def copy(self, value: str, workdir: str) -> None:
        """One ``COPY`` from the context: a file to a file or into a directory, a directory's files below dest."""
        words = [word for word in shlex.split(value) if not word.startswith("--")]
        sources, dest = words[:-1], words[-1]
        target = self.mapped(dest if dest.startswith("/") else f"{workdir}/{dest}")
        for source in sources:
            source = source.strip("/").removeprefix("./")
            assert not set(source) & set("*?["), f"COPY {source}: wildcards are not simulated here"
            if source in self.context:
                into = target / Path(source).name if dest.endswith("/") or len(sources) > 1 else target
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.repo / source, into)
                continue
            below = sorted(path for path in self.context if path.startswith(f"{source}/"))
            assert below, f"COPY {source}: not in the build context (see .dockerignore)"
            for path in below:
                into = target / path[len(source) + 1:]
                into.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(self.repo / path, into)

    def context_installs(self, value: str) -> list[list[str]]:
        """The ``pip install`` commands of a RUN that install from the context (a target starting with ``.``),
        with the options that fetch or cache dropped."""
        installs = []
        for command in " ".join(shlex.split(value)).split("&&"):
            words = shlex.split(command)
            if words[:2] != ["pip", "install"] or not any(word.startswith(".") for word in words[2:]):
                continue
            args, skip = [], False
            for word in words[2:]:
                if skip:
                    skip = False
                elif word in ("--extra-index-url", "--index-url", "-i"):
                    skip = True
                elif word != "--no-cache-dir":
                    args.append(word)
            installs.append(args)
        return installs

    def build(self) -> ImageInstall:
        build, final = self.stages[0], self.stages[-1]
        assert build.name and final is not build, "expected a build stage and a final stage"
        build_env = image_env(build, {"PATH": BASE_PATH})
        home = self.mapped(build_env["VIRTUAL_ENV"])
        venv.create(home, with_pip=False)
        site = subprocess.check_output([str(home / "bin/python"), "-c",
                                        "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True)
        Path(site.strip(), "image-dependencies.pth").write_text(f"{sysconfig.get_paths()['purelib']}\n")
        workdir, installed = "/", False
        for kind, value in build.instructions:
            if kind == "WORKDIR":
                workdir = value if value.startswith("/") else f"{workdir}/{value}"
                self.mapped(workdir).mkdir(parents=True, exist_ok=True)
            elif kind == "COPY" and "--from=" not in value:
                self.copy(value, workdir)
            elif kind == "RUN":
                for args in self.context_installs(value):
                    subprocess.run([str(home / "bin/python"), "-m", "pip", "install", "--quiet", "--no-deps",
                                    "--no-index", "--no-build-isolation", "--ignore-installed", *args],
                                   cwd=self.mapped(workdir), check=True, capture_output=True, text=True)
                    installed = True
        assert installed, "the build stage installs nothing from the build context"
        return self.final(final)

    def final(self, stage: Stage) -> ImageInstall:
        """The final stage's environment and commands, its image paths mapped under ``root``."""
        self.mapped("/tmp").mkdir(parents=True, exist_ok=True)
        tops = {entry.name for entry in self.root.iterdir()}

        def mapped(value: str) -> str:
            if value.startswith("/") and value.split("/")[1] in tops:
                return str(self.mapped(value))
            return value

        env = {name: ":".join(mapped(part) for part in value.split(":"))
               for name, value in image_env(stage, {"PATH": BASE_PATH}).items()}
        env["SPOTGEN_METRICS_PORT"] = str(free_port())  # the image's own port may be another test's worker here
        workdirs = stage.values("WORKDIR")
        check = stage.values("HEALTHCHECK")[-1]
        return ImageInstall(self.root, self.mapped(image_env(self.stages[0], {})["VIRTUAL_ENV"]), env,
                            Path(mapped(workdirs[-1] if workdirs else "/")),
                            json.loads(stage.values("ENTRYPOINT")[-1]),
                            json.loads(check[check.index("CMD") + 3:]))
