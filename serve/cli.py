"""Placeholder until this package's issue lands: the subcommand exists but is not built yet."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("args", nargs="*")


def main(args: argparse.Namespace) -> int:
    raise SystemExit("not implemented yet")
