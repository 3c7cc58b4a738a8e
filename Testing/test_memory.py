"""The cmrsynth process keeps the memory it frees (CMRSynthLib.memory): a network's large activations, allocated
and freed at every evaluation, are not page-faulted in anew each time."""

import subprocess
import sys

import pytest

SCRIPT = """
import resource, sys, torch
from CMRSynthLib.memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
for step in range(24):  # as a sampler's evaluations: the same large blocks allocated and freed again and again
    if step == 12:  # the second half, once the heap has grown to hold them
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    activations = torch.ones(12_500_000)  # 50 MB: above glibc's largest mmap threshold
    del activations
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def page_faults(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_freed_activations_are_reused_not_faulted_in_again():
    _, plain = page_faults("plain")
    applied, kept = page_faults("keep")
    assert applied == "True"
    assert plain > 12 * 10_000  # every 50 MB block (12,200 pages) faulted in anew: the case under test
    assert kept < plain / 3


def test_the_command_line_keeps_freed_memory(monkeypatch):
    from CMRSynthLib import cli

    calls = []
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: calls.append(1) or True)
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert calls == [1]


def test_a_user_short_of_memory_can_keep_the_defaults(monkeypatch):
    from CMRSynthLib.memory import RELEASE_ENV, keep_freed_memory

    monkeypatch.setenv(RELEASE_ENV, "1")
    assert keep_freed_memory() is False
