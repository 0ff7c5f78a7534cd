"""The ``detr`` command: train, eval, predict, explain, export, serve, convert, check-data, synth, demo, models,
selftest. One module per command (``<name>_command.py``: ``HELP``, ``add_arguments(parser)``, ``run(args) -> int``),
each a thin layer over the library; building the parser imports no torch (the commands import it in ``run``)."""

from __future__ import annotations

import argparse
import sys

from ..hub.download import DownloadError
from . import (
    check_data_command,
    convert_command,
    demo_command,
    eval_command,
    explain_command,
    export_command,
    models_command,
    predict_command,
    selftest_command,
    serve_command,
    synth_command,
    train_command,
)

# the commands, in the order ``detr --help`` lists them
COMMANDS = {
    "models": models_command,
    "train": train_command,
    "eval": eval_command,
    "predict": predict_command,
    "explain": explain_command,
    "export": export_command,
    "serve": serve_command,
    "convert": convert_command,
    "check-data": check_data_command,
    "synth": synth_command,
    "demo": demo_command,
    "selftest": selftest_command,
}


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each flag's default after its help (flags whose default is None or a switch's off say nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, argparse.SUPPRESS) or "default:" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``detr`` parser and its subcommands' parsers (by name)."""
    parser = argparse.ArgumentParser(prog="detr", description="DETR object detection: train, evaluate, predict")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, argparse.ArgumentParser] = {}
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=_HelpFormatter)
        p.set_defaults(func=module.run)
        module.add_arguments(p)
        commands[name] = p
    return parser, commands


def main(argv: list[str] | None = None) -> int:
    import logging

    parser, commands = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # a mistyped flag: the subcommand's usage, not the top level's
        commands[args.command].error(f"unrecognized arguments: {' '.join(unknown)}")
    # this library's messages at INFO; other libraries' (the ONNX optimiser's hundreds of lines) only as
    # warnings, unless --verbose
    logging.basicConfig(
        level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING, format="%(message)s"
    )
    logging.getLogger("detr").setLevel(logging.INFO)
    try:
        return args.func(args)
    except KeyboardInterrupt:  # a second Ctrl-C (the first stops training cleanly): at once, without a traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (
        FileNotFoundError,
        FileExistsError,
        ValueError,
        DownloadError,
    ) as err:  # bad input: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
