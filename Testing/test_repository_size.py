"""The repository stays small enough for the Slicer Extensions Index (issue 29, item 3).

The Index's checker clones the repository in full, history included, and refuses a clone above 100 MB
(SlicerExtensions-Index's check for new and updated extensions). What a full clone weighs is the packed size of
every object reachable from HEAD; this test sums it and fails above a budget that leaves room to grow.
"""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX_LIMIT_MB = 100
BUDGET_MB = 90  # room for a few more commits of weights before the Index's limit


def git(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", "-C", str(ROOT), *args], input=stdin, capture_output=True, check=True).stdout


def clone_megabytes() -> float:
    """Compressed size of every object reachable from HEAD (commits, trees, blobs of all history), in MB."""
    objects = git("rev-list", "--objects", "HEAD")
    ids = b"\n".join(line.split(b" ", 1)[0] for line in objects.splitlines()) + b"\n"
    sizes = git("cat-file", "--batch-check=%(objectsize:disk)", stdin=ids)
    return sum(int(size) for size in sizes.split()) / 1e6


def test_a_full_clone_stays_within_the_budget():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist or an extension build): nothing to measure")
    size = clone_megabytes()
    print(f"a full clone weighs about {size:.1f} MB (budget {BUDGET_MB} MB, Extensions Index limit {INDEX_LIMIT_MB} MB)")
    assert size <= BUDGET_MB, (
        f"a full clone would weigh {size:.1f} MB, over the {BUDGET_MB} MB budget (the Extensions Index refuses more "
        f"than {INDEX_LIMIT_MB} MB): keep new weights out of git history (see README, how weights are kept)")
