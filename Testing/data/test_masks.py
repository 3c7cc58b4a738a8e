"""Where sample finds its masks (the layouts inspect and train read) and how their label convention is told;
the swapped-structure check on synthetic and phantom masks."""

import numpy as np
import pytest

from cohort_fixtures import canonical_label, make_acdc, make_mnms1, make_phantom_layout, matrix

from CMRSynthLib.data.conventions import looks_swapped, myocardial_border
from CMRSynthLib.data.masks import find_masks, read_mask, read_reference
from CMRSynthLib.data.volume import Volume, write_volume
from CMRSynthLib.errors import InputError


def test_an_acdc_cohort_gives_its_labels_in_acdc_numbering_with_their_images(tmp_path):
    sources = find_masks(make_acdc(tmp_path / "ACDC"))
    assert [s.name for s in sources] == ["patient001_frame01", "patient001_frame03", "patient002_frame01",
                                         "patient002_frame02"]
    assert {s.convention for s in sources} == {"acdc"} and {s.convention_from for s in sources} == {"the acdc layout"}
    assert all(s.path.endswith("_gt.nii.gz") and s.reference.endswith(f"{s.name}.nii.gz") for s in sources)
    np.testing.assert_array_equal(read_mask(sources[0]).array, canonical_label("ED"))  # remapped to canonical
    assert read_reference(sources[0]).shape == read_mask(sources[0]).shape


def test_a_4d_mnms1_label_gives_one_mask_per_labelled_phase(tmp_path):
    sources = find_masks(make_mnms1(tmp_path / "mnms"))
    assert [s.name for s in sources] == ["A0S9V9_sa_ED", "A0S9V9_sa_ES", "B1C2D3_sa_ED", "B1C2D3_sa_ES"]
    np.testing.assert_array_equal(read_mask(sources[1]).array, canonical_label("ES"))


def test_the_phantom_layout_and_a_lone_acdc_named_file(tmp_path):
    assert [s.name for s in find_masks(make_phantom_layout(tmp_path / "p"))] == [
        "phantom000_ED", "phantom000_ES", "phantom001_ED", "phantom001_ES"]
    lone = write_volume(Volume(canonical_label(), matrix()), tmp_path / "x" / "patient007_frame04_gt.nii.gz")
    (source,) = find_masks(lone)
    assert (source.name, source.convention, source.convention_from, source.reference) == (
        "patient007_frame04", "acdc", "the ACDC file name", None)
    assert find_masks(lone, convention="canonical")[0].convention == "canonical"


def test_a_folder_of_masks_and_a_name_clash(tmp_path):
    for folder in ("a", "b"):
        write_volume(Volume(canonical_label(), matrix()), tmp_path / "masks" / folder / "heart.nrrd")
    assert sorted(s.name for s in find_masks(tmp_path / "masks")) == ["a_heart", "b_heart"]
    with pytest.raises(InputError, match="unknown; choose one of acdc, canonical, mnms"):
        find_masks(tmp_path / "masks", convention="ukbb")


def test_a_symlinked_patient_folder_inside_a_cohort_is_followed_once(tmp_path):
    cohort = make_acdc(tmp_path / "ACDC")
    (cohort / "patient001" / "loop").symlink_to(cohort, target_is_directory=True)  # a link back up the tree
    linked = tmp_path / "mine"
    linked.mkdir()
    (linked / "patient002").symlink_to(cohort / "patient002", target_is_directory=True)
    assert [s.name for s in find_masks(linked)] == ["patient002_frame01", "patient002_frame02"]


def ring(lv=1, rv=3):
    """A myocardial ring (2) around the pool ``lv`` and the pool ``rv`` beside it, on 2 slices."""
    yy, xx = np.mgrid[:40, :40]
    r = np.hypot(yy - 20, xx - 24)
    label = np.zeros((2, 40, 40), np.uint8)
    label[:, r < 9] = 2
    label[:, r < 6] = lv
    label[:, (np.hypot(yy - 20, xx - 12) < 7) & (r >= 9)] = rv
    return label


def test_swapped_structures_are_seen_on_synthetic_and_phantom_masks():
    from CMRSynthLib.data.phantom import make_phantom_patient

    assert myocardial_border(ring(), 1) == 1.0 and myocardial_border(ring(), 3) < 0.5
    assert not looks_swapped(ring()) and looks_swapped(ring(lv=3, rv=1))
    assert not looks_swapped(canonical_label())  # no ring at all: nothing to tell
    for case in make_phantom_patient(2, seed=0):
        label = case.label.array
        swapped = np.choose(label, [0, 3, 2, 1]).astype(np.uint8)
        assert not looks_swapped(label) and looks_swapped(swapped)
