"""Options every command that reaches a bucket has (mount, rekey, fsck), and their settings."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, get_args

from cosencfs.config import DEFAULT_REGION, SCHEMA, AesWrap, LogLevel, validate

#: The choices of ``--aes-wrap`` and ``--log-level``: the settings' own.
AES_WRAPS = list(get_args(AesWrap))
LOG_LEVELS = list(get_args(LogLevel))

#: Command-line destinations -> settings names, for the options every command
#: that reaches a bucket shares.
COMMON_CLI_FIELDS = {
    "endpoint": "endpoint",
    "region": "region",
    "ca_file": "network.ca_file",
    "key_file": "keys.key_file",
    "rsa_public_key": "keys.rsa_public_key",
    "rsa_private_key": "keys.rsa_private_key",
    "aes_wrap": "keys.aes_wrap",
    "log_level": "log.level",
    "debug": "log.debug",
}


def add_endpoint_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--endpoint", help="http://HOST:PORT of a COS-compatible server, or a domain")
    p.add_argument("--region", help=f"COS region (default: {DEFAULT_REGION})")
    p.add_argument(
        "--ca-file", help="PEM file of the CAs an https endpoint's certificate must chain to"
    )


def command_line_values(
    args: argparse.Namespace, cli: dict[str, Any], fields: Mapping[str, str]
) -> dict[str, Any]:
    """``cli`` (settings from positional arguments) plus the options of ``fields``
    (argparse destination -> settings name) that were given, checked."""
    for dest, name in fields.items():
        value = getattr(args, dest, None)
        if value is not None:
            cli[name] = value
    return validate(SCHEMA, cli, "command line")
