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
