"""Atomic outputs follow the user's umask; private ones stay owner-only whatever the umask."""

import os
import stat

import pytest

from CMRSynthLib.files import atomic_dir, atomic_path, atomic_write_text


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_shared_outputs_follow_the_umask(tmp_path, umask):
    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_path(tmp_path / "b.nii.gz") as tmp:
        tmp.write_bytes(b"x")
    with atomic_dir(tmp_path / "series") as tmp:
        (tmp / "IM0001.dcm").write_bytes(b"x")
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.nii.gz") == 0o666 & ~umask
    assert mode(tmp_path / "series") == 0o777 & ~umask
    assert mode(tmp_path / "series" / "IM0001.dcm") == 0o666 & ~umask


def test_private_outputs_stay_owner_only(tmp_path, umask):
    atomic_write_text(tmp_path / "x.PRIVATE-membership.json", "{}", private=True)
    with atomic_dir(tmp_path / "x.PRIVATE-reid", private=True) as tmp:
        (tmp / "record.json").write_text("{}")
    assert mode(tmp_path / "x.PRIVATE-membership.json") == 0o600
    assert mode(tmp_path / "x.PRIVATE-reid") == 0o700


def test_replacing_a_folder_keeps_no_partial_or_old_copy(tmp_path):
    for text in ("one", "two"):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "f.txt").write_text(text)
    assert (tmp_path / "out" / "f.txt").read_text() == "two"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
