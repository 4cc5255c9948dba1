"""The ``spotgen`` command: the client's commands (``submit``, ``jobs``) on top of the runtime's (``worker``, ``dev``,
``models``), all on ``spotgen.Client``.

Exit codes say what happened, for scripts: 0 the job succeeded (or the command did what it was asked), 1 the job
failed, was cancelled or expired, 2 bad usage or a 400 from the API (the flag or field is named), 3 the API could
not be reached. Progress is drawn with rich.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from runtime import cli as runtime_cli
from runtime.contract import BUILTIN_PIPELINES, ContractError, validate_inputs
from spotgen.auth import ApiKey
from spotgen.client import Client, Job, inline_image
from spotgen.errors import ApiError, Unreachable
from spotgen.progress import JobBar

OK, JOB_FAILED, USAGE, UNREACHABLE = 0, 1, 2, 3
_SIZE = re.compile(r"^(\d+)x(\d+)$")
#: The input an ``--image`` fills, per built-in pipeline.
IMAGE_INPUT = {"img2img": "image", "controlnet": "control_image"}


class UsageError(Exception):
    """A flag that cannot be used as given; the message names it."""


def _value(text: str) -> Any:
    """``--input`` values are JSON where they parse (numbers, booleans, lists), else strings."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """The job's inputs from the flags, checked here for built-in pipelines, so that a mistake is a usage error
    naming the flag before anything is sent."""
    inputs: dict[str, Any] = {}
    flags: dict[str, str] = {}
    for name, flag in (("prompt", "--prompt"), ("negative_prompt", "--negative"), ("steps", "--steps"),
                       ("seed", "--seed"), ("scheduler", "--scheduler")):
        if getattr(args, name) is not None:
            inputs[name], flags[name] = getattr(args, name), flag
    if args.size is not None:
        match = _SIZE.match(args.size)
        if not match:
            raise UsageError(f"--size {args.size!r}: give WIDTHxHEIGHT, e.g. 512x512")
        inputs["width"], inputs["height"] = int(match[1]), int(match[2])
        flags["width"] = flags["height"] = "--size"
    for item in args.input or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"--input {item!r}: give KEY=VALUE")
        inputs[key], flags[key] = _value(value), f"--input {key}"
    for path, field, flag in ((args.image, IMAGE_INPUT.get(args.pipeline, "image"), "--image"),
                              (args.mask, "mask", "--mask")):
        if path is not None:
            try:
                inputs[field] = inline_image(path)
            except (OSError, ValueError) as exc:
                raise UsageError(f"{flag} {path}: {exc}") from None
            flags[field] = flag
    if args.pipeline in BUILTIN_PIPELINES:
        try:
            validate_inputs(args.pipeline, inputs, input_bucket=None)
        except ContractError as exc:
            name = (exc.field or "").removeprefix("inputs.").split(".")[0]
            raise UsageError(f"{flags.get(name, '--input ' + name)}: {exc.message}") from None
    return inputs


def follow(job: Job, args: argparse.Namespace) -> int:
    """Wait for the job with a progress bar (not with ``--json``), save its images, report; the exit code."""
    if args.json:
        status = job.wait()
    else:
        with JobBar(job.id[:12]) as bar:
            status = job.wait(on_progress=bar.update)
    saved = [str(p) for p in job.save(args.out)] if status.state == "succeeded" and args.out else []
    if args.json:
        print(json.dumps({**status.model_dump(mode="json"), "saved": saved}))
    else:
        print(f"{job.id} {status.state}" + (f": {status.error.code}: {status.error.message}" if status.error else ""))
        for path in saved:
            print(f"  {path}")
    return OK if status.state == "succeeded" else JOB_FAILED


def client_of(args: argparse.Namespace) -> Client:
    auth: str | ApiKey | None = ApiKey(args.api_key) if args.api_key else ("sigv4" if args.sigv4 else None)
    return Client(args.api_url, auth=auth, retry_budget_s=args.retry_s)


def cmd_submit(args: argparse.Namespace) -> int:
    inputs = build_inputs(args)
    with client_of(args) as client:
        job = client.submit(args.pipeline, args.model, inputs, id=args.id)
        if not args.wait:
            print(json.dumps(job.submitted) if args.json else job.id)
            return OK
        return follow(job, args)


def cmd_jobs(args: argparse.Namespace) -> int:
    with client_of(args) as client:
        job = client.job(args.job_id)
        if args.jobs_command == "watch":
            return follow(job, args)
        status = job.cancel() if args.jobs_command == "cancel" else job.refresh()
        print(json.dumps(status.model_dump(mode="json")) if args.json else
              f"{status.id} {status.state} step {status.progress.step}/{status.progress.total}")
        return OK


def _client_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-url", help="the API (default: $SPOTGEN_API_URL, else spotgen dev's)")
    parser.add_argument("--sigv4", action="store_true", help="sign requests with AWS SigV4 (the deployed API)")
    parser.add_argument("--api-key", help="send this x-api-key")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--retry-s", type=float, default=60.0,
                        help="seconds to keep retrying an unreachable or failing API (default 60)")


def add_commands(sub: Any) -> None:
    submit = sub.add_parser("submit", help="submit a job to the API; --wait follows it and saves its images")
    submit.add_argument("--pipeline", default="txt2img")
    submit.add_argument("--model", required=True)
    submit.add_argument("--prompt")
    submit.add_argument("--negative", dest="negative_prompt")
    submit.add_argument("--size", help="WIDTHxHEIGHT, e.g. 512x512")
    submit.add_argument("--steps", type=int)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--scheduler")
    submit.add_argument("--image", type=Path, help="an input image file, sent inline (image or control_image)")
    submit.add_argument("--mask", type=Path, help="inpaint: the mask image file, sent inline (white repaints)")
    submit.add_argument("--input", action="append", metavar="KEY=VALUE", help="any other input (repeatable)")
    submit.add_argument("--id", help="the idempotency key (default: one is made)")
    submit.add_argument("--wait", action="store_true", help="show progress until the job ends, then save")
    submit.add_argument("--out", type=Path, default=Path("out"), help="where --wait saves the images")
    _client_flags(submit)
    submit.set_defaults(func=cmd_submit)
    jobs = sub.add_parser("jobs", help="a job's status, progress or cancellation")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, text in (("get", "print the status"), ("watch", "follow until it ends, then save its images"),
                       ("cancel", "cancel it")):
        command = jobs_sub.add_parser(name, help=text)
        command.add_argument("job_id")
        command.add_argument("--out", type=Path, default=Path("out"))
        _client_flags(command)
        command.set_defaults(func=cmd_jobs)


def main(argv: list[str] | None = None) -> int:
    parser = runtime_cli.build_parser()
    add_commands(next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and USAGE
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"spotgen {args.command}: {exc}", file=sys.stderr)
        return USAGE
    except Unreachable as exc:
        print(f"spotgen {args.command}: cannot reach the API: {exc.message}", file=sys.stderr)
        return UNREACHABLE
    except ApiError as exc:
        print(f"spotgen {args.command}: {exc.status} {exc.code}"
              + (f" ({exc.field})" if exc.field else "") + f": {exc.message}", file=sys.stderr)
        return USAGE if exc.status == 400 else JOB_FAILED


if __name__ == "__main__":
    sys.exit(main())
