"""The `amqscale` command: `bench`, the load generator."""

from __future__ import annotations

import argparse
import sys

from .bench import cli as bench_cli


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amqscale", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    bench_cli.add_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
