"""API keys of the compatibility routes, outside the Lambda: ``spotgen apikey hash`` for operators, and the
parameter ``spotgen dev --api-key`` puts into the emulator.

Both use the authorizer's own hashing (``lambdas.authorizer.hash_key``), so what an operator stores is exactly
what the authorizer compares; the key itself is never written anywhere, only its digest.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

#: The parameter ``spotgen dev --api-key`` creates (the template's default name too).
DEV_PARAMETER = "/spotgen/api-keys"
#: Shorter keys are hashed all the same, with a warning: an unsalted digest of a short key can be guessed.
MIN_KEY_CHARS = 20


def cmd_hash(args: argparse.Namespace) -> int:
    from lambdas.authorizer import hash_key

    key = sys.stdin.read() if args.key == "-" else args.key
    if not key.strip():
        print("error: the key is empty", file=sys.stderr)
        return 1
    if len(key.strip()) < MIN_KEY_CHARS:
        print(f"warning: the key has fewer than {MIN_KEY_CHARS} characters; use a long random one "
              "(`openssl rand -base64 32`)", file=sys.stderr)
    print(hash_key(key))
    return 0


def register(sub: Any) -> None:
    """Adds ``spotgen apikey`` to the command's subparsers."""
    apikey = sub.add_parser("apikey", help="API keys of the compatibility routes (docs/deploy.md)")
    commands = apikey.add_subparsers(dest="apikey_command", required=True)
    hashing = commands.add_parser("hash", help="print sha256:<hex> of KEY, an entry of the API keys parameter")
    hashing.add_argument("key", metavar="KEY", help="the key ('-': read it from standard input, which keeps it out "
                         "of the shell's history and the process list)")
    hashing.set_defaults(func=cmd_hash)


def put_dev_key(ssm: Any, key: str, name: str = DEV_PARAMETER) -> str:
    """The emulator's SecureString parameter holding ``key``'s digest, as an operator creates it on AWS; its name."""
    from lambdas.authorizer import hash_key

    ssm.put_parameter(Name=name, Type="SecureString", Value=hash_key(key), Overwrite=True,
                      Description="spotgen dev: the hashed API key of the compatibility routes")
    return name
