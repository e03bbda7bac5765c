"""What every sub-command group shares: the connection options of the client-side commands,
the wrapper that turns a command into an exit code, and ``--json`` output."""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable

from ..client import DEFAULT_URL, Api, CliError

HttpCommand = Callable[[Api, argparse.Namespace], int]


def connection_options() -> argparse.ArgumentParser:
    """The parent parser of every command that talks to the API."""
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection")
    g.add_argument("--url", default=None, help=f"API base URL (env LETHE_URL; default {DEFAULT_URL})")
    g.add_argument("--api-key", default=None, help="bearer API key (env LETHE_API_KEY)")
    g.add_argument("--json", action="store_true", help="print the answer as JSON")
    g.add_argument("--http-timeout", type=float, default=30.0, help=argparse.SUPPRESS)
    return common


def run_http(func: HttpCommand) -> Callable[[argparse.Namespace], int]:
    """Build the client from the connection options, run ``func``, map errors to exit codes."""
    def run(args) -> int:
        api = Api(args.url or os.environ.get("LETHE_URL") or DEFAULT_URL,
                  args.api_key or os.environ.get("LETHE_API_KEY"), timeout=args.http_timeout)
        try:
            return func(api, args)
        except CliError as e:
            print(f"lethe: {e}", file=sys.stderr)
            return e.code
        except KeyboardInterrupt:
            return 130
        finally:
            api.http.close()
    return run


def run_local(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Same error mapping for commands that need no server (offline checks, server side)."""
    def run(args) -> int:
        try:
            return func(args)
        except CliError as e:
            print(f"lethe: {e}", file=sys.stderr)
            return e.code
    return run


class Commands:
    """Registers a group's sub-commands on a subparsers object: ``http`` ones get the
    connection options and the client, ``local`` ones neither."""

    def __init__(self, sub, common: argparse.ArgumentParser):
        self.sub, self.common = sub, common

    def http(self, name: str, func: HttpCommand, help_: str, **kw) -> argparse.ArgumentParser:
        s = self.sub.add_parser(name, help=help_, description=help_, parents=[self.common], **kw)
        s.set_defaults(func=run_http(func))
        return s

    def local(self, name: str, func, help_: str, **kw) -> argparse.ArgumentParser:
        s = self.sub.add_parser(name, help=help_, description=help_, **kw)
        s.set_defaults(func=run_local(func))
        return s

    def group(self, name: str, help_: str) -> "Commands":
        inner = self.sub.add_parser(name, help=help_, description=help_).add_subparsers(
            dest=f"{name}_command", required=True, metavar="SUBCOMMAND")
        return Commands(inner, self.common)


def emit(args, data: Any, human: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        print(human)
