"""``weather-al``: the command line. Model commands come from ``model/cli.py``; the Label Studio
commands (serve, worker, connect, demo) are added here as they are built."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from model import cli as model_cli
from model.schema import SchemaError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="weather-al", description="Active-learning image classification for Label Studio")
    parser.add_argument("--log-level", default=os.environ.get("LOG_LEVEL", "INFO"), help="logging level (default: LOG_LEVEL or INFO)")
    sub = parser.add_subparsers(dest="command", required=True)
    model_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        args.func(args)
    except (model_cli.UsageError, SchemaError, FileNotFoundError, ValueError) as exc:
        print(f"weather-al {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
