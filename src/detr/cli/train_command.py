"""``detr train``: one flag per :class:`~detr.engine.config.TrainConfig` field, over a config file or a recipe."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from typing import Any

HELP = "train on a dataset in any format read (see the README; flags override --config)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.recipes import RECIPES  # the standard library only: start-up stays light

    parser.add_argument("--config", help="YAML or JSON file of training settings (any flag below)")
    parser.add_argument(
        "--recipe",
        choices=tuple(RECIPES),
        default=None,
        help="preset of the settings not given: reference (the DETR paper's, the defaults below) or scratch "
        "(fast training from nothing on a CPU, adapted to --data's image size and crowding; see the README)",
    )
    add_config_flags(parser)


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field; defaults are suppressed so that only given flags override the file."""
    from ..engine.config import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = repr(default) if default == "" else default
        help_text = f"{f.metadata.get('help', '')} (default: {shown})"
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(hint) is list:
            parser.add_argument(flag, type=int, nargs="+", default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(hint) is dict:
            parser.add_argument(flag, type=json.loads, default=argparse.SUPPRESS, help=f"JSON object {help_text}")
        else:
            kind = {int: int, float: float}.get(hint, str)
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)


def train_config(args: argparse.Namespace):
    """The TrainConfig the arguments describe: --config's file (or the resumed run's settings), the recipe, then
    the flags given."""
    from ..engine.config import TrainConfig, read_config_file, resume_config

    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names or k == "recipe" and v is not None})
    if values.get("resume"):  # the run folder recorded its settings: what is given here changes only those named
        out = values.get("output_dir", TrainConfig.output_dir)
        config, changed = resume_config(out, values)
        shown = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items()) or "none"
        print(f"resuming {out} with the settings it recorded; changed on the command line: {shown}")
        return config
    config = TrainConfig.from_dict(values)
    if values.get("recipe", "reference") != "reference":
        layers = config.model_kwargs.get("backbone_layers", 4)
        print(
            f"recipe {values['recipe']}: {config.model}, backbone to layer{layers} (stride {2 ** (layers + 1)}), "
            f"{config.num_queries} queries, train {config.train_scales} / eval {config.eval_size} px (max "
            f"{config.max_size}), batch {config.batch_size}, lr {config.lr:g}; flags given override it"
        )
    return config


def run(args: argparse.Namespace) -> int:
    from ..engine.evaluate import format_metrics
    from ..engine.train import TrainingDiverged, train

    config = train_config(args)
    try:
        summary = train(config)
    except TrainingDiverged as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    if summary.get("finished_before"):
        return 0  # the trainer said there was nothing left to do
    if summary.get("stopped"):
        return 128 + summary["stopped"]  # the trainer said where it stopped and how to resume; as a shell reports it
    if "metrics" in summary:
        print(f"final validation: {format_metrics(summary['metrics'])}")
    print(
        f"done: {summary['epochs']} epochs, {summary['steps']} steps in {summary['seconds']}s; "
        f"outputs in {summary['output_dir']}"
    )
    return 0
