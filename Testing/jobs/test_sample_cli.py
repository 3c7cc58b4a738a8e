"""cmrsynth sample: exact geometry of an oblique mask, determinism, synthetic markers, DICOM, bad input."""

import json

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from CMRSynthLib.data.volume import Volume, read_volume, write_volume
from training_fixtures import oblique_mask, phantom, tiny_flow  # noqa: F401 - fixtures


@pytest.fixture
def mask_file(tmp_path):
    return write_volume(oblique_mask(), tmp_path / "masks" / "heart.nii.gz")


def sample(run_cli, model, mask, out, *extra):
    return run_cli("sample", "--model", model, "--mask", mask, "--out", out, "--vendor", "Siemens", "--steps", "3",
                   "--device", "cpu", *extra)


def test_output_has_the_oblique_mask_geometry_and_a_marker(run_cli, tiny_flow, mask_file, tmp_path):  # noqa: F811
    code, out, err = sample(run_cli, tiny_flow, mask_file, tmp_path / "out", "--seed", "5")
    assert code == 0, err
    image = read_volume(tmp_path / "out" / "heart_synth_Siemens_5.nii.gz")
    mask = read_volume(mask_file)
    # NIfTI stores the direction as a float32 quaternion: positions agree to float32 precision
    assert image.shape == mask.shape and np.allclose(image.ijk_to_ras, mask.ijk_to_ras, rtol=0, atol=1e-5)
    assert image.metadata["descrip"].startswith("SYNTHETIC CMRSynth flow seed=5 vendor=Siemens model=")
    assert np.isfinite(image.array).all() and image.array.std() > 0


def test_same_seed_same_bytes_and_count(run_cli, tiny_flow, mask_file, tmp_path):  # noqa: F811
    for folder in ("a", "b"):
        assert sample(run_cli, tiny_flow, mask_file, tmp_path / folder, "--count", "2", "--seed", "1")[0] == 0
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["heart_synth_Siemens_1.nii.gz", "heart_synth_Siemens_2.nii.gz"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    one, two = (read_volume(tmp_path / "a" / n).array for n in names)
    assert not np.array_equal(one, two)


def test_nrrd_keeps_every_key_and_a_folder_gives_one_image_per_mask(run_cli, tiny_flow, mask_file, tmp_path):  # noqa: F811
    write_volume(oblique_mask(shape=(2, 36, 40)), mask_file.parent / "second.nrrd")
    code, out, err = sample(run_cli, tiny_flow, mask_file.parent, tmp_path / "out", "--format", "nrrd")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["heart_synth_Siemens_0.nrrd",
                                                                    "second_synth_Siemens_0.nrrd"]
    header = sitk.ReadImage(str(tmp_path / "out" / "second_synth_Siemens_0.nrrd"))
    assert header.GetMetaData("cmrsynth_synthetic") == "true" and header.GetMetaData("cmrsynth_steps") == "3"
    assert header.GetSize() == (40, 36, 2)
    synthetic, source = read_volume(tmp_path / "out" / "second_synth_Siemens_0.nrrd"), read_volume(mask_file.parent / "second.nrrd")
    assert np.allclose(synthetic.ijk_to_ras, source.ijk_to_ras, rtol=0, atol=1e-9)  # NRRD: full precision


def test_dicom_series_is_marked_synthetic_with_fresh_uids(run_cli, tiny_flow, mask_file, tmp_path):  # noqa: F811
    assert sample(run_cli, tiny_flow, mask_file, tmp_path / "out", "--format", "dicom")[0] == 0
    folder = tmp_path / "out" / "heart_synth_Siemens_0"
    files = sorted(folder.iterdir())
    assert len(files) == 3
    datasets = [pydicom.dcmread(f) for f in files]
    for ds in datasets:
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds.SeriesDescription.startswith("SYNTHETIC") and "SYNTHETIC" in ds.ImageComments
        assert str(ds.PatientName) == "SYNTHETIC^CMRSYNTH" and ds.Modality == "MR"
    assert len({ds.SOPInstanceUID for ds in datasets}) == 3 and len({ds.SeriesInstanceUID for ds in datasets}) == 1
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    series = reader.Execute()
    mask = sitk.ReadImage(str(mask_file))
    assert series.GetSize() == mask.GetSize()
    assert np.allclose(series.GetOrigin(), mask.GetOrigin(), atol=1e-3)
    assert np.allclose(series.GetDirection(), mask.GetDirection(), atol=1e-5)
    assert np.allclose(series.GetSpacing(), mask.GetSpacing(), atol=1e-4)
    nifti = tmp_path / "nifti"
    assert sample(run_cli, tiny_flow, mask_file, nifti)[0] == 0
    expected = read_volume(nifti / "heart_synth_Siemens_0.nii.gz").array
    assert np.abs(sitk.GetArrayFromImage(series) - expected).max() <= 0.5  # whole-number storage


def test_bf16_precision_is_close_to_fp32_and_recorded(run_cli, tiny_flow, mask_file, tmp_path):  # noqa: F811
    for precision in ("fp32", "bf16"):
        assert sample(run_cli, tiny_flow, mask_file, tmp_path / precision, "--precision", precision,
                      "--format", "nrrd")[0] == 0
    name = "heart_synth_Siemens_0.nrrd"  # NRRD keeps every header key (a NIfTI descrip has 80 characters)
    fp32, bf16 = (read_volume(tmp_path / p / name) for p in ("fp32", "bf16"))
    assert not np.array_equal(fp32.array, bf16.array)  # bf16 really ran
    scale = np.ptp(fp32.array)
    assert np.abs(fp32.array - bf16.array).max() <= 0.1 * scale
    assert "bf16" in json.dumps(bf16.metadata)


def _four_d(path):
    frames = [sitk.GetImageFromArray(oblique_mask().array) for _ in range(2)]
    sitk.WriteImage(sitk.JoinSeries(frames), str(path))
    return path


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: write_volume(oblique_mask().with_array(np.where(oblique_mask().array == 3, 5, oblique_mask().array)
                                                      .astype(np.uint8)), p), (), r"label values \[5\]"),
    (lambda p: write_volume(oblique_mask().with_array(np.zeros((3, 40, 36), np.uint8)), p), (), "mask is empty"),
    (_four_d, (), "is 4D"),
    (lambda p: p, (), "file not found"),
    (lambda p: write_volume(oblique_mask(), p), ("--vendor", "Hitachi"), "unknown vendor 'Hitachi'; this model knows"),
    (lambda p: write_volume(oblique_mask(), p), ("--steps", "0"), "--steps must be a positive"),
    (lambda p: write_volume(oblique_mask(), p), ("--guidance", "-1"), "--guidance must be ≥ 0"),
    (lambda p: write_volume(oblique_mask(), p), ("--count", "0"), "--count must be a positive"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_cli, tiny_flow, tmp_path, make, extra, message):  # noqa: F811
    mask = make(tmp_path / "bad.nii.gz")
    code, out, err = run_cli("sample", "--model", tiny_flow, "--mask", mask, "--out", tmp_path / "out",
                             "--vendor", "Siemens", "--device", "cpu", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "error:" in err and __import__("re").search(message, err), err
    assert not (tmp_path / "out").exists()


def test_pickled_or_missing_models_exit_2(run_cli, mask_file, tmp_path):
    (tmp_path / "model.pt").write_bytes(b"\x80\x04")
    code, out, err = run_cli("sample", "--model", tmp_path / "model.pt", "--mask", mask_file, "--out", tmp_path / "o")
    assert code == 2 and "never unpickles" in err
    code, out, err = run_cli("sample", "--model", "no-such-model", "--mask", mask_file, "--out", tmp_path / "o")
    assert code == 2 and "no checkpoint folder or starter model" in err


def test_starter_models_load_by_name(run_cli, mask_file, tmp_path):
    from CMRSynthLib.training.starters import STARTERS

    for name in STARTERS:
        generator, card = __import__("CMRSynthLib.training.checkpoint", fromlist=["x"]).load_checkpoint(name)
        assert card["starter"]["name"] == name and card["data"]["simulated"] is True
        assert not set(card["members"]) & set(card["holdout"])
    code, out, err = run_cli("sample", "--model", "phantom-tiny-flow", "--mask", mask_file, "--out", tmp_path / "o",
                             "--vendor", "GE", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "o" / "heart_synth_GE_0.nii.gz").is_file()


def test_new_anatomy_draws_masks_then_images(run_cli, tiny_flow, tmp_path):  # noqa: F811
    code, out, err = run_cli("sample", "--model", tiny_flow, "--new-anatomy", "2", "--anatomy-model", "phantom-anatomy",
                             "--group", "DCM", "--phase", "ED", "--vendor", "Siemens", "--steps", "3",
                             "--out", tmp_path / "o", "--device", "cpu", "--seed", "4")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert names == ["anatomy000_DCM_ED_4_mask.nii.gz", "anatomy000_DCM_ED_4_synth_Siemens_4.nii.gz",
                     "anatomy001_DCM_ED_5_mask.nii.gz", "anatomy001_DCM_ED_5_synth_Siemens_4.nii.gz"]
    mask = read_volume(tmp_path / "o" / names[0])
    image = read_volume(tmp_path / "o" / names[1])
    assert set(np.unique(mask.array)) <= {0, 1, 2, 3} and (mask.array == 1).any() and (mask.array == 2).any()
    assert image.same_geometry(mask, atol=1e-5) and image.metadata["descrip"].startswith("SYNTHETIC")
    code, out, err = run_cli("sample", "--model", tiny_flow, "--new-anatomy", "1", "--anatomy-model", tiny_flow,
                             "--out", tmp_path / "p", "--device", "cpu")
    assert code == 2 and "not an anatomy generator" in err and not (tmp_path / "p").exists()


# -- issue 32: outputs, masks where users keep them, label conventions, phantom models on real grids --------------
IMAGE_MODELS = ("acdc-ldm", "acdc-flow", "acdc-ddpm", "acdc-hybrid", "phantom-flow", "phantom-ddpm", "phantom-ldm",
                "phantom-hybrid", "phantom-tiny-flow")


def test_every_shipped_image_model_is_covered():
    from CMRSynthLib.training.checkpoint import models_dir

    shipped = {p.name for p in models_dir().iterdir() if (p / "card.json").is_file()}
    assert shipped - {"acdc-anatomy", "phantom-anatomy"} == set(IMAGE_MODELS)


@pytest.mark.parametrize("model", IMAGE_MODELS)
def test_dicom_keeps_the_grey_range_of_every_shipped_model(run_cli, model, tmp_path):
    """The real models' images lie in [0, 1]: rounded to whole numbers they were black and white."""
    mask = write_volume(oblique_mask(shape=(2, 48, 48), spacing=(1.5625, 1.5625, 10.0)), tmp_path / "heart.nii.gz")
    for fmt in ("dicom", "nifti"):
        code, out, err = run_cli("sample", "--model", model, "--mask", mask, "--out", tmp_path / fmt, "--steps", "2",
                                 "--device", "cpu", "--format", fmt, "--progress", "none")
        assert code == 0, err
    float_image = read_volume(tmp_path / "nifti" / "heart_synth_unconditional_0.nii.gz").array
    folder = tmp_path / "dicom" / "heart_synth_unconditional_0"
    datasets = [pydicom.dcmread(f) for f in sorted(folder.iterdir())]
    step = float(datasets[0].RescaleSlope)
    decoded = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in datasets])
    assert len(np.unique(decoded)) > 100
    assert np.abs(decoded - float_image).max() <= step
    low, high = np.percentile(float_image, [1, 99])
    width = float(datasets[0].WindowWidth)
    assert float(datasets[0].WindowCenter) == pytest.approx((low + high) / 2, abs=step + 1e-6 * width)
    assert width == pytest.approx(high - low, abs=step + 1e-6 * width)


def _pair(folder, stem, label, *, image=None, spacing=(1.5, 1.5, 8.0)):
    """``stem.nii.gz`` (int16 0-1000 image, or ``image``) and ``stem_gt.nii.gz`` (``label``) in ``folder``."""
    matrix = np.diag([*spacing, 1.0])
    if image is None:
        image = np.rint(np.linspace(0, 1000, label.size).reshape(label.shape)).astype(np.int16)
    write_volume(Volume(image, matrix), folder / f"{stem}.nii.gz")
    return write_volume(Volume(label, matrix), folder / f"{stem}_gt.nii.gz")


def ring_mask(shape=(2, 40, 40), lv=1, rv=3):
    """A short-axis mask: myocardium (2) ringing the blood pool ``lv``, the crescent-like pool ``rv`` beside it."""
    k, h, w = shape
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2 - 4)
    label = np.zeros(shape, np.uint8)
    label[:, r < 9] = 2
    label[:, r < 6] = lv
    label[:, (np.hypot(yy - h / 2, xx - w / 2 + 8) < 7) & (r >= 9)] = rv
    return label


def sample_tiny(run_cli, mask, out, *extra):
    return run_cli("sample", "--model", "phantom-tiny-flow", "--mask", mask, "--out", out, "--steps", "2",
                   "--device", "cpu", "--vendor", "Siemens", *extra)


def test_names_drop_the_label_tag_and_say_unconditional(run_cli, tmp_path):
    mask = _pair(tmp_path / "in", "patient001_frame01", ring_mask())
    assert run_cli("sample", "--model", "phantom-tiny-flow", "--mask", mask, "--out", tmp_path / "out",
                   "--steps", "2", "--device", "cpu")[0] == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["patient001_frame01_synth_unconditional_0.nii.gz"]
    image = read_volume(tmp_path / "out" / "patient001_frame01_synth_unconditional_0.nii.gz")
    assert "vendor=unconditional" in image.metadata["descrip"]


@pytest.mark.parametrize("mode", ["none", "log", "bar"])
def test_every_written_path_is_printed_on_stdout(run_cli, tmp_path, mode):
    mask = write_volume(Volume(ring_mask(), np.eye(4)), tmp_path / "masks" / "heart.nii.gz")
    code, out, err = sample_tiny(run_cli, mask, tmp_path / "out", "--count", "2", "--progress", mode)
    assert code == 0, err
    assert out.splitlines() == [str(tmp_path / "out" / f"heart_synth_Siemens_{i}.nii.gz") for i in (0, 1)]
    assert str(tmp_path / "out") not in err


def test_jsonl_stays_machine_readable_with_the_paths_in_artefact_events(run_cli, tmp_path):
    mask = write_volume(Volume(ring_mask(), np.eye(4)), tmp_path / "masks" / "heart.nii.gz")
    code, out, err = sample_tiny(run_cli, mask, tmp_path / "out", "--progress", "jsonl")
    assert code == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert [e["path"] for e in events if e["event"] == "artefact"] == [str(tmp_path / "out" / "heart_synth_Siemens_0.nii.gz")]


def test_outputs_follow_the_umask(run_cli, tmp_path):
    import os
    import stat

    mask = write_volume(Volume(ring_mask(), np.eye(4)), tmp_path / "masks" / "heart.nii.gz")
    old = os.umask(0o022)
    try:
        for fmt in ("nifti", "dicom"):
            assert sample_tiny(run_cli, mask, tmp_path / fmt, "--format", fmt)[0] == 0
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "nifti" / "heart_synth_Siemens_0.nii.gz") == 0o644
    series = tmp_path / "dicom" / "heart_synth_Siemens_0"
    assert mode(series) == 0o755 and {mode(p) for p in series.iterdir()} == {0o644}


def test_an_image_beside_the_mask_gives_its_type_and_range(run_cli, tmp_path):
    mask = _pair(tmp_path / "in", "case", ring_mask())
    code, out, err = sample_tiny(run_cli, mask, tmp_path / "out")
    assert code == 0, err
    image = read_volume(tmp_path / "out" / "case_synth_Siemens_0.nii.gz")
    assert image.array.dtype == np.int16 and image.array.max() > 200 and image.array.min() >= -1000
    assert image.metadata["descrip"].startswith("SYNTHETIC")
    header = sitk.ReadImage(str(tmp_path / "out" / "case_synth_Siemens_0.nii.gz"))
    assert header.GetPixelID() == sitk.sitkInt16
    lone = write_volume(Volume(ring_mask(), np.diag([1.5, 1.5, 8.0, 1.0])), tmp_path / "lone" / "heart.nii.gz")
    assert sample_tiny(run_cli, lone, tmp_path / "lone-out", "--format", "nrrd")[0] == 0
    assert read_volume(tmp_path / "lone-out" / "heart_synth_Siemens_0.nrrd").array.dtype == np.float32


def test_an_acdc_numbered_mask_is_warned_about_and_read_with_the_convention(run_cli, tmp_path):
    canonical = write_volume(Volume(ring_mask(), np.eye(4)), tmp_path / "a" / "heart.nii.gz")
    acdc = write_volume(Volume(ring_mask(lv=3, rv=1), np.eye(4)), tmp_path / "b" / "heart.nii.gz")
    code, out, err = sample_tiny(run_cli, acdc, tmp_path / "swapped", "--progress", "none")
    assert code == 0, err
    assert (f"warning: {acdc}: read as canonical labels (the default), its LV and RV look swapped: the myocardium (2) "
            "rings label 3, which canonical calls the RV. If the mask numbers them as ACDC's 1 = RV, 3 = LV, pass "
            "--label-convention acdc") in err
    code, out, err = sample_tiny(run_cli, acdc, tmp_path / "read-as-acdc", "--label-convention", "acdc")
    assert code == 0 and "swapped" not in err, err
    code, out, err = sample_tiny(run_cli, canonical, tmp_path / "canonical")
    assert code == 0 and "swapped" not in err, err
    name = "heart_synth_Siemens_0.nii.gz"
    same = read_volume(tmp_path / "read-as-acdc" / name).array
    assert np.array_equal(same, read_volume(tmp_path / "canonical" / name).array)
    assert not np.array_equal(same, read_volume(tmp_path / "swapped" / name).array)


def test_the_acdc_layout_is_read_as_acdc_labels_and_only_its_labels(run_cli, tmp_path):
    from cohort_fixtures import make_acdc

    cohort = make_acdc(tmp_path / "ACDC")
    code, out, err = sample_tiny(run_cli, cohort / "patient002", tmp_path / "one")  # a patient folder
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == [
        "patient002_frame01_synth_Siemens_0.nii.gz", "patient002_frame02_synth_Siemens_0.nii.gz"]
    code, out, err = sample_tiny(run_cli, cohort, tmp_path / "all", "--label-convention", "canonical")
    assert code == 2 and "contradicts the detected acdc layout" in err
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "patient001").symlink_to(cohort / "patient001", target_is_directory=True)
    code, out, err = sample_tiny(run_cli, linked, tmp_path / "from-link")
    assert code == 0, err
    assert len(out.splitlines()) == 2 and all("patient001_frame0" in line for line in out.splitlines())


def test_a_nested_folder_of_pairs_takes_the_labels(run_cli, tmp_path):
    from cohort_fixtures import make_generic

    code, out, err = sample_tiny(run_cli, make_generic(tmp_path / "generic"), tmp_path / "out")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "caseA_ED_synth_Siemens_0.nii.gz", "caseA_ES_synth_Siemens_0.nii.gz", "caseB_synth_Siemens_0.nii.gz",
        "caseC_synth_Siemens_0.nii.gz"]


@pytest.mark.parametrize("make, message", [
    (lambda root: __import__("cohort_fixtures").write_dicom_series(root / "sax", np.zeros((1, 2, 16, 16), np.int16)),
     "is a DICOM image series, not a mask"),
    (lambda root: (_pair(root, "case", ring_mask()), root / "case.nii.gz")[1],
     "is an image with its label case_gt.nii.gz beside it; give the label with --mask"),
])
def test_what_is_not_a_mask_is_refused_in_one_line(run_cli, tmp_path, make, message):
    code, out, err = sample_tiny(run_cli, make(tmp_path), tmp_path / "out")
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_a_phantom_model_on_a_real_scan_grid_is_warned_about(run_cli, tmp_path):
    real = np.zeros((1, 216, 256), np.uint8)
    real[:, 88:128, 108:148] = ring_mask((1, 40, 40))[0]
    mask = write_volume(Volume(real, np.diag([1.5625, 1.5625, 10.0, 1.0])), tmp_path / "real" / "heart.nii.gz")
    code, out, err = sample_tiny(run_cli, mask, tmp_path / "out", "--progress", "none")
    assert code == 0, err
    assert (f"warning: phantom-tiny-flow is a phantom model (trained on simulated patients only), but {mask} lies on "
            "a real scan's grid (216 × 256 pixels, a 338 × 400 mm field of view; phantom images cover at most 206 mm): "
            "its images will look like the phantom's. For real masks use acdc-ldm, the default (leave out --model)"
            ) in err
    small = write_volume(Volume(ring_mask(), np.diag([1.5625, 1.5625, 10.0, 1.0])), tmp_path / "small" / "h.nii.gz")
    code, out, err = sample_tiny(run_cli, small, tmp_path / "out2")
    assert code == 0 and "phantom model" not in err, err
