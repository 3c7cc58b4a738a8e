"""The ``cmrsynth`` command (DESIGN §9): parse, call the library, print.

Exit codes: 0 success, 2 bad input (one line naming the file and the problem, no traceback), 1 any other
failure. ``--debug`` shows the traceback of a failure.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

# Idle OpenMP threads sleep instead of spinning. With spinning threads (the default), a job that shares the
# cores with another busy process runs up to 40 times slower (measured: a segmenter step 2.6 s instead of
# 57 ms on 2 threads beside other work). Set before torch loads its OpenMP runtime; a user's own value wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from CMRSynthLib import __version__
from CMRSynthLib.errors import InputError
from CMRSynthLib.jobs.progress import MODES, Progress
from CMRSynthLib.memory import keep_freed_memory

# Command name → module in CMRSynthLib.jobs. Each module has HELP, add_arguments(parser), run(args, progress).
COMMANDS: dict[str, str] = {  # in the order of DESIGN §9
    "phantom": "phantom",
    "inspect": "inspect",
    "models": "models",
    "train": "train",
    "cascade": "cascade",
    "sample": "sample",
    "restyle": "restyle",
    "audit": "audit",
    "reid": "reid",
    "privacy-budget": "privacy_budget",
    "demo": "demo",
    "gui": "gui",
}


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says what it is (or that the option is
    required): a default that is None (decided at run time: "the model's") must be worded in the help itself."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        unset = default is None or default is False or default is argparse.SUPPRESS or default == []
        if not action.option_strings or unset or "default" in text.lower() or "required" in text.lower():
            return text
        return f"{text} (default: {default})" if text else "(default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cmrsynth",
        description="Synthetic cardiac MRI from masks, with differential privacy and an audit; in a vendor's style "
                    "where the model knows vendors (the real acdc- models know one, Siemens: cmrsynth models).",
    )
    parser.add_argument("--version", action="version", version=f"cmrsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"CMRSynthLib.jobs.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, formatter_class=HelpFormatter)
        p.add_argument("--progress", choices=MODES, default=None,
                       help="how to report progress: a bar on a terminal (default), plain lines a minute "
                            "apart (default when stderr is not a terminal: batch jobs, nohup), JSON lines for "
                            "programs, or none")
        p.add_argument("--debug", action="store_true", help="show the full traceback of a failure")
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _terminate(signum, frame):  # SIGTERM (GUI Cancel) unwinds like Ctrl-C, so atomic writers clean up
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    keep_freed_memory()  # before the first network evaluation (CMRSynthLib.memory)
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = args.progress or ("bar" if sys.stderr.isatty() else "log")
    progress = Progress(mode)
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args._module.run(args, progress) or 0)
    except InputError as exc:
        progress.error(str(exc), code=2)
        print(f"cmrsynth {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress.error("cancelled", code=130)
        print(f"cmrsynth {args.command}: cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence turns a crash into exit 1
        if args.debug:
            raise
        progress.error(f"{type(exc).__name__}: {exc}", code=1)
        print(f"cmrsynth {args.command}: failed: {type(exc).__name__}: {exc} (run with --debug for details)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
