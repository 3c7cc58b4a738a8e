"""Every command's help page: each option shows its default (or says in words what it is), --device offers the
same devices with the same default everywhere, --precision offers fp32 and bf16 everywhere, restyle writes the
formats sample writes, and train says its size defaults are the phantom's."""

import argparse
import re

import pytest

from CMRSynthLib.cli import COMMANDS, HelpFormatter, build_parser
from CMRSynthLib.training.config import DEVICES


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The options a default applies to: not flags, not required, not one of a required either-or group."""
    either_or = {a for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
    return {a.option_strings[-1]: a for a in parser._actions
            if a.option_strings and not a.required and a not in either_or and a.nargs != 0}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_shows_its_default(command):
    parser = subparsers()[command]
    formatter = HelpFormatter(command)
    silent = [flag for flag, action in options(parser).items()  # no help: argparse shows no line, no default
              if not action.help or not re.search(r"\b(default|required)\b", formatter._get_help_string(action))]
    assert silent == [], f"cmrsynth {command}: {silent} say nothing of their default"


def test_devices_and_precisions_agree_across_commands():
    parsers = subparsers()
    devices = {name: options(p)["--device"] for name, p in parsers.items() if "--device" in options(p)}
    assert {"train", "sample", "restyle", "audit", "reid"} <= set(devices)
    assert {name: (tuple(a.choices), a.default) for name, a in devices.items()} == \
        {name: (DEVICES, "auto") for name in devices}
    precisions = {name: options(p)["--precision"] for name, p in parsers.items() if "--precision" in options(p)}
    assert {"train", "sample"} <= set(precisions)
    assert all({"fp32", "bf16"} <= set(a.choices) for a in precisions.values())


def test_restyle_writes_what_sample_writes_and_train_names_the_phantom_defaults():
    parsers = subparsers()
    assert options(parsers["restyle"])["--format"].choices == options(parsers["sample"])["--format"].choices
    train = options(parsers["train"])
    assert "phantom" in train["--image-size"].help and "phantom" in train["--spacing"].help
    assert not parsers["train"]._option_string_actions["--generator"].required  # implied by --init
