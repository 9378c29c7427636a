"""``rankguide config``: validate, print the schema or reference, write a starter file.

Sub-commands:
    ``rankguide config validate PATH``: check a file; exit 0 when valid, 2 with one error line.
    ``rankguide config schema``: print the JSON schema of the configuration file.
    ``rankguide config init [--out PATH] [--force]``: write the commented default configuration.
    ``rankguide config docs [--update FILE]``: print (or rewrite in FILE) the markdown reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_INIT_PATH = "rankguide.yaml"


def register(subparsers: Any) -> None:
    """Add the ``config`` command and its sub-commands to the top-level CLI.

    Args:
        subparsers: the object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "config",
        help="validate, document or create configuration files",
        description="Validate, document or create RankGuide configuration files.",
    )
    parser.set_defaults(handler=lambda _args: _print_help(parser))
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")

    validate = sub.add_parser(
        "validate",
        help="check a configuration file",
        description=(
            "Check a YAML configuration file, and that this machine has the devices it names: "
            "exit 0 if valid, 2 with one error line."
        ),
    )
    validate.add_argument("path", metavar="PATH", help="the YAML file to check")
    validate.add_argument(
        "--show", action="store_true", help="print the resolved configuration as YAML"
    )
    validate.set_defaults(handler=_validate)

    schema = sub.add_parser(
        "schema",
        help="print the JSON schema",
        description="Print the JSON schema of the configuration file.",
    )
    schema.set_defaults(handler=_schema)

    init = sub.add_parser(
        "init",
        help="write a commented starter configuration",
        description="Write a commented configuration file holding every default.",
    )
    init.add_argument(
        "--out",
        default=DEFAULT_INIT_PATH,
        metavar="PATH",
        help=f"file to write (default: {DEFAULT_INIT_PATH}; '-' for standard output)",
    )
    init.add_argument("--force", action="store_true", help="overwrite an existing file")
    init.set_defaults(handler=_init)

    docs = sub.add_parser(
        "docs",
        help="print the markdown reference of every field",
        description="Print the markdown reference of every configuration field.",
    )
    docs.add_argument(
        "--update",
        metavar="FILE",
        help="rewrite the generated part of FILE (after its marker line) instead of printing",
    )
    docs.set_defaults(handler=_docs)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _validate(args: argparse.Namespace) -> int:
    from langchain_rankguide.config import check_environment, load_config

    config = load_config(args.path)
    check_environment(config, source=args.path)
    if args.show:
        sys.stdout.write(config.to_yaml())
    else:
        lrm = config.lrm
        print(
            f"{args.path}: valid (srm {config.srm.model}; lrm {lrm.provider} {lrm.model}; "
            f"routing {config.routing.policy})"
        )
    return 0


def _schema(_args: argparse.Namespace) -> int:
    from langchain_rankguide.config import config_json_schema_text

    sys.stdout.write(config_json_schema_text())
    return 0


def _init(args: argparse.Namespace) -> int:
    from langchain_rankguide.config import dump_default_yaml
    from langchain_rankguide.errors import ConfigError

    text = dump_default_yaml()
    if args.out == "-":
        sys.stdout.write(text)
        return 0
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ConfigError(f"{out} is a directory; pass a file name with --out")
    if out.exists() and not args.force:
        raise ConfigError(f"{out} already exists; pass --force to overwrite it")
    if not out.parent.exists():
        raise ConfigError(f"directory does not exist: {out.parent}")
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc}") from None
    print(f"wrote {out}")
    return 0


def _docs(args: argparse.Namespace) -> int:
    from langchain_rankguide.config import config_reference_markdown, update_reference_doc

    if args.update:
        changed = update_reference_doc(args.update)
        print(f"{args.update}: {'updated' if changed else 'already up to date'}")
        return 0
    sys.stdout.write(config_reference_markdown())
    return 0
