"""The built-in phantom cohort: determinism, physiology per group, vendor styles, files and the command."""

import csv
import json

import numpy as np
import pytest
from scipy import ndimage

from CMRSynthLib.data.conventions import GROUPS
from CMRSynthLib.data.phantom import (DESCRIP, VENDORS, make_phantom_cohort, make_phantom_patient,
                                      write_phantom_cohort)
from CMRSynthLib.data.volume import read_volume
from CMRSynthLib.errors import InputError

SHAPE = (8, 64, 64)


@pytest.fixture(scope="module")
def cohort():
    """40 patients (each group 8 times, each vendor 10 times) on a small grid."""
    return make_phantom_cohort(40, seed=3, shape=SHAPE)


def by_patient(cases):
    pairs = {}
    for case in cases:
        pairs.setdefault(case.patient, {})[case.phase] = case
    return [(p["ED"], p["ES"]) for p in pairs.values()]


def volume_ml(case, value):
    return np.count_nonzero(case.label.array == value) * case.label.voxel_volume_ml


def mid_wall_mm(case):
    """Largest myocardial wall thickness on the mid-ventricular slice: twice the deepest point of the ring."""
    ring = case.label.array[case.label.shape[0] // 2] == 2
    return 2.0 * ndimage.distance_transform_edt(ring).max() * case.label.spacing[0]


def noise_sigma(ed, es):
    """Noise standard deviation by the difference of two acquisitions (NEMA), away from the beating heart,
    in tissue bright enough that the Rician bias is negligible."""
    heart = ndimage.binary_dilation((ed.label.array > 0) | (es.label.array > 0), iterations=6)
    blood = ed.image.array[ed.label.array == 1].mean()
    bright = (ed.image.array + es.image.array) / 2 > 0.25 * blood
    return (ed.image.array - es.image.array)[~heart & bright].std() / np.sqrt(2)


# -- determinism and bookkeeping -------------------------------------------------------------------
def test_same_seed_gives_identical_bytes_and_patients_do_not_depend_on_cohort_size():
    a = make_phantom_cohort(3, seed=11, shape=(4, 32, 32))
    b = make_phantom_cohort(5, seed=11, shape=(4, 32, 32))
    for x, y in zip(a, b[:6]):
        assert x.image.array.tobytes() == y.image.array.tobytes()
        assert x.label.array.tobytes() == y.label.array.tobytes()
        assert np.array_equal(x.image.ijk_to_ras, y.image.ijk_to_ras)
        assert x.record == y.record
    other = make_phantom_patient(0, seed=12, shape=(4, 32, 32))
    assert not np.array_equal(other[0].image.array, a[0].image.array)


def test_records_labels_and_images(cohort):
    assert [c.patient for c in cohort[:4]] == ["phantom000-seed3", "phantom000-seed3", "phantom001-seed3",
                                               "phantom001-seed3"]
    assert [c.patient for c in make_phantom_cohort(1, seed=0, shape=(4, 32, 32))] == ["phantom000"] * 2
    assert [c.phase for c in cohort[:2]] == ["ED", "ES"]
    assert [c.vendor for c in cohort[0:8:2]] == list(VENDORS)
    groups = [c.group for c in cohort[::2]]
    assert {g: groups.count(g) for g in GROUPS} == {g: 8 for g in GROUPS}
    for case in cohort:
        assert case.record.simulated and case.image.metadata["descrip"] == DESCRIP
        assert case.image.array.dtype == np.float32 and case.image.shape == SHAPE
        assert case.label.array.dtype == np.uint8 and case.image.same_geometry(case.label)
        assert set(np.unique(case.label.array)) <= {0, 1, 2, 3}
        assert np.all(np.isfinite(case.image.array)) and case.image.array.min() > 0
        assert {"height", "weight", "ef"} <= set(case.attributes)
        assert 140 < case.attributes["height"] < 210 and 35 < case.attributes["weight"] < 180


def test_geometry_is_an_oblique_short_axis_stack(cohort):
    case = cohort[0]
    direction, spacing = case.image.direction, case.image.spacing
    assert np.allclose(direction.T @ direction, np.eye(3), atol=1e-9)
    assert 6.0 < spacing[2] < 12.0 and np.isclose(spacing[0], spacing[1])
    long_axis = direction[:, 2]  # base → apex: towards the patient's left, anterior and inferior
    assert long_axis[0] < 0 and long_axis[1] > 0 and long_axis[2] < 0
    assert max(abs(long_axis)) < 0.9  # oblique, not a scanner axis


def test_anatomy_sits_the_right_way_round_in_the_patient(cohort):
    """In RAS, the RV lies to the patient's right of and anterior to the LV, the apex left-anterior-inferior."""
    for case in cohort[::2]:
        lab = case.label.array

        def centroid(mask):
            k, j, i = np.nonzero(mask)
            return (case.label.ijk_to_ras @ np.stack([i, j, k, np.ones_like(i)]).astype(float))[:3].mean(1)

        mid = np.zeros_like(lab)
        mid[2] = lab[2]  # a basal-to-mid slice: the RV beside the LV
        lv, rv = centroid(mid == 1), centroid(mid == 3)
        assert rv[0] > lv[0] and rv[1] > lv[1], case.patient
        base, apex = centroid(lab[:2] > 0), centroid(np.concatenate([0 * lab[:-3], lab[-3:]]) > 0)
        assert apex[0] < base[0] and apex[1] > base[1] and apex[2] < base[2], case.patient


def test_bad_arguments_raise():
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(ValueError):
            make_phantom_cohort(bad)
    with pytest.raises(ValueError):
        make_phantom_patient(0, shape=(4, 8, 8))
    with pytest.raises(ValueError):
        make_phantom_patient(0, vendor="Bruker")


# -- physiology ------------------------------------------------------------------------------------
EF_RANGES = {"NOR": (55, 70), "DCM": (10, 40), "HCM": (65, 85), "MINF": (20, 40), "ARV": (50, 70)}


def test_ejection_fraction_within_the_range_of_each_group(cohort):
    for ed, es in by_patient(cohort):
        ef = 100 * (1 - volume_ml(es, 1) / volume_ml(ed, 1))
        lo, hi = EF_RANGES[ed.group]
        assert lo <= ef <= hi, (ed.patient, ed.group, ef)
        assert ed.attributes["ef"] == pytest.approx(ef, abs=0.06)


def group_values(cohort, group, measure):
    return np.array([measure(ed, es) for ed, es in by_patient(cohort) if ed.group == group])


def test_dilated_hearts_are_large_and_hypertrophic_walls_thick(cohort):
    lv_nor = group_values(cohort, "NOR", lambda ed, es: volume_ml(ed, 1))
    lv_dcm = group_values(cohort, "DCM", lambda ed, es: volume_ml(ed, 1))
    assert lv_dcm.mean() > 1.6 * lv_nor.mean() and np.median(lv_dcm) > lv_nor.max()
    assert 80 < lv_nor.mean() < 200
    wall_nor = group_values(cohort, "NOR", lambda ed, es: mid_wall_mm(ed))
    wall_hcm = group_values(cohort, "HCM", lambda ed, es: mid_wall_mm(ed))
    assert wall_hcm.min() > 15.0 and wall_hcm.min() > wall_nor.max()
    rv_nor = group_values(cohort, "NOR", lambda ed, es: volume_ml(ed, 3))
    rv_arv = group_values(cohort, "ARV", lambda ed, es: volume_ml(ed, 3))
    assert rv_arv.mean() > 1.4 * rv_nor.mean()


def test_myocardium_thickens_in_systole_except_the_infarct(cohort):
    for ed, es in by_patient(cohort):
        assert volume_ml(es, 2) > 0.9 * volume_ml(ed, 2)  # myocardium is (roughly) conserved
    wall_minf = group_values(cohort, "MINF", lambda ed, es: mid_wall_mm(es) / mid_wall_mm(ed))
    assert np.all(wall_minf > 0.9)


def test_rv_vanishes_towards_the_apex_before_the_lv(cohort):
    eds = [c for c in cohort if c.phase == "ED"]
    rv_base = np.mean([(c.label.array[0] == 3).any() for c in eds])
    rv_apex = np.mean([(c.label.array[-1] == 3).any() for c in eds])
    lv_apex = np.mean([(c.label.array[-2] > 0).any() for c in eds])
    assert rv_base == 1.0 and rv_apex < rv_base and lv_apex == 1.0


# -- vendor styles ---------------------------------------------------------------------------------
def test_blood_brighter_than_myocardium_for_every_vendor(cohort):
    for case in cohort:
        img, lab = case.image.array, case.label.array
        assert img[lab == 1].mean() > 1.5 * img[lab == 2].mean(), (case.patient, case.vendor)


def test_vendor_styles_are_told_apart_by_two_simple_features(cohort):
    """Myocardium/blood ratio and relative noise: nearest-centroid, leave-one-out, on 10 patients each."""
    features, vendors = [], []
    for ed, es in by_patient(cohort):
        blood = ed.image.array[ed.label.array == 1].mean()
        features.append([ed.image.array[ed.label.array == 2].mean() / blood, noise_sigma(ed, es) / blood])
        vendors.append(ed.vendor)
    features, vendors = np.array(features), np.array(vendors)
    features = (features - features.mean(0)) / features.std(0)
    correct = 0
    for i in range(len(vendors)):
        keep = np.arange(len(vendors)) != i
        centroids = {v: features[keep & (vendors == v)].mean(0) for v in VENDORS}
        guess = min(centroids, key=lambda v: np.sum((features[i] - centroids[v]) ** 2))
        correct += guess == vendors[i]
    assert correct / len(vendors) >= 0.9
    # and the scanners differ in scale and field of view as well
    scale = {v: np.median([c.image.array[c.label.array == 1].mean() for c in cohort if c.vendor == v])
             for v in VENDORS}
    assert len({round(np.log2(s)) for s in scale.values()}) >= 3
    pixel = {v: np.median([c.image.spacing[0] for c in cohort if c.vendor == v]) for v in VENDORS}
    assert sorted(pixel, key=pixel.get) == ["Philips", "Siemens", "Canon", "GE"]


# -- files and the command -------------------------------------------------------------------------
def test_written_cohort_round_trips(tmp_path):
    out = write_phantom_cohort(tmp_path / "cohort", 2, seed=4, shape=(4, 32, 32))
    memory = make_phantom_cohort(2, seed=4, shape=(4, 32, 32))
    with open(out / "cohort.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0])[:9] == ["patient", "vendor", "phase", "group", "image", "label", "height", "weight",
                                 "simulated"]
    assert len(rows) == 4
    for row, case in zip(rows, memory):
        assert (row["patient"], row["phase"], row["vendor"], row["group"]) == (case.patient, case.phase,
                                                                               case.vendor, case.group)
        image, label = read_volume(out / row["image"]), read_volume(out / row["label"])
        assert image.same_geometry(case.image, atol=1e-4) and label.same_geometry(case.label, atol=1e-4)
        assert np.array_equal(image.array, case.image.array) and np.array_equal(label.array, case.label.array)
        assert image.metadata.get("descrip") == DESCRIP and row["simulated"] == "true"
    assert json.loads((out / "phantom.json").read_text(encoding="utf-8"))["seed"] == 4
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial leftovers


def test_written_cohort_opens_as_a_cmrsynth_cohort(tmp_path):
    from CMRSynthLib.data.cohorts import open_cohort

    out = write_phantom_cohort(tmp_path / "c", 1, seed=0, shape=(4, 32, 32))
    opened = open_cohort(out)
    assert opened.layout == "cmrsynth" and len(opened.records) == 2
    assert all(r.simulated for r in opened.records) and opened.records[0].vendor == "Siemens"


def test_write_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not empty"):
        write_phantom_cohort(tmp_path / "busy", 1, seed=0, shape=(4, 32, 32))
    assert sorted(p.name for p in (tmp_path / "busy").iterdir()) == ["notes.txt"]


def test_command_writes_reuses_and_refuses(run_cli, tmp_path):
    out = tmp_path / "ph"
    args = ("phantom", "--out", out, "--patients", "2", "--seed", "1", "--shape", "4", "32", "32",
            "--progress", "none")
    code, stdout, _ = run_cli(*args)
    assert code == 0 and "cohort.csv" in stdout
    assert len(list(csv.DictReader(open(out / "cohort.csv")))) == 4
    stamp = (out / "cohort.csv").stat().st_mtime_ns
    code, _, stderr = run_cli(*args)
    assert code == 0 and "reusing" in stderr and (out / "cohort.csv").stat().st_mtime_ns == stamp
    code, _, stderr = run_cli("phantom", "--out", out, "--patients", "3", "--shape", "4", "32", "32")
    assert code == 2 and str(out) in stderr


@pytest.mark.parametrize("flags", [("--patients", "0"), ("--patients", "-3"), ("--patients", "2.5"),
                                   ("--patients", "many"), ("--seed", "-1"), ("--shape", "4", "8", "32")])
def test_command_rejects_bad_flags_and_writes_nothing(run_cli, tmp_path, flags):
    code, _, stderr = run_cli("phantom", "--out", tmp_path / "x", *flags)
    assert code == 2 and flags[0] in stderr
    assert not (tmp_path / "x").exists()
