"""Shared pytest setup. Tests run two at a time (pytest-xdist) on two cores: one torch thread each."""

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def run_cli(capsys):
    """Run ``cmrsynth`` in-process: returns (exit code, stdout, stderr)."""
    from CMRSynthLib.cli import main

    def run(*argv):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run
