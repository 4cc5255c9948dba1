"""Parse ``sam`` command lines with the AWS SAM CLI's own click commands, without running them.

Runs in the SAM CLI's venv (.venv/samcli, Makefile), not the project's: aws-sam-cli pins click 8.1, whose parser
its ``--parameter-overrides`` (``OptionNargs`` and ``CfnParameterOverridesType``) patches. Reads a JSON list of
argument lists (each without the leading ``sam``) on stdin and writes, for each, the command's parsed options
(``{"command": ..., "params": {...}}``) or the SAM CLI's own error (``{"error": ...}``). ``file://`` parameter
files are read relative to the working directory, as ``sam`` reads them.
"""

from __future__ import annotations

import json
import sys

import click
from samcli.cli.main import cli


def parse(argv: list[str]) -> dict[str, object]:
    try:
        ctx = cli.make_context("sam", list(argv))
        name, command, rest = cli.resolve_command(ctx, list(ctx.protected_args) + list(ctx.args))
        if command is None:
            return {"error": f"no sam command {argv[0]!r}"}
        sub = command.make_context(name, rest, parent=ctx)
    except click.ClickException as exc:
        return {"error": exc.format_message()}
    return {"command": name, "params": sub.params}


def main() -> int:
    results = [parse(argv) for argv in json.load(sys.stdin)]
    json.dump(results, sys.stdout, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
