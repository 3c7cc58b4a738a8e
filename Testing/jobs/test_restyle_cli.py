"""cmrsynth restyle: round trip to the same vendor, another vendor, an output folder in every format, and bad
input."""

import os

import numpy as np
import pytest
import torch

from CMRSynthLib.data.volume import Volume, read_volume, write_volume
from training_fixtures import phantom, tiny_flow  # noqa: F401 - fixtures


@pytest.fixture
def case(phantom):  # noqa: F811
    from CMRSynthLib.data.cohorts import open_cohort

    record = open_cohort(phantom).records[0]
    return record.image_path, record.label_path, record.vendor


def test_restyle_writes_the_image_grid_marked_synthetic(run_cli, tiny_flow, case, tmp_path):  # noqa: F811
    image, mask, vendor = case
    out = tmp_path / "restyled.nii.gz"
    code, stdout, err = run_cli("restyle", "--model", tiny_flow, "--image", image, "--mask", mask, "--vendor", vendor,
                                "--source-vendor", vendor, "--steps", "8", "--out", out, "--device", "cpu")
    assert code == 0, err
    result, original = read_volume(out), read_volume(image)
    assert result.same_geometry(original, atol=1e-5)
    assert result.metadata["descrip"].startswith("SYNTHETIC CMRSynth flow")
    assert np.median(np.abs(result.array - original.array)) < 0.02 * np.ptp(original.array)


def test_bad_input_exits_2_and_writes_nothing(run_cli, tiny_flow, case, tmp_path):  # noqa: F811
    image, mask, vendor = case
    source = read_volume(image)
    nan = source.array.astype(np.float32).copy()
    nan[1, 2, 3] = np.nan
    nan_file = write_volume(Volume(nan, source.ijk_to_ras), tmp_path / "nan.nrrd")
    shifted = source.ijk_to_ras.copy()
    shifted[:3, 3] += 4.0
    moved_mask = write_volume(Volume(read_volume(mask).array, shifted), tmp_path / "moved_gt.nii.gz")
    from CMRSynthLib.generators import build_generator, config_from_dict
    from CMRSynthLib.training.checkpoint import read_checkpoint, save_checkpoint

    card = read_checkpoint(tiny_flow).card
    ddpm = build_generator("ddpm", config_from_dict("ddpm", {k: card["config"][k] for k in
                                                             ("spatial_dims", "image_size", "vocabulary")}))
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "ddpm", ddpm, {k: card[k] for k in ("vocabulary", "preprocessing")})
    cases = [(("--image", nan_file, "--mask", mask, "--model", tiny_flow), "NaN"),
             (("--image", image, "--mask", moved_mask, "--model", tiny_flow), "geometry differs"),
             (("--image", image, "--mask", mask, "--model", tmp_path / "ddpm"), "needs a flow-matching model"),
             (("--image", tmp_path / "none.nii.gz", "--mask", mask, "--model", tiny_flow), "file not found")]
    for args, message in cases:
        code, stdout, err = run_cli("restyle", *args, "--vendor", vendor, "--out", tmp_path / "o.nii.gz")
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "o.nii.gz").exists()
    code, stdout, err = run_cli("restyle", "--image", image, "--mask", mask, "--model", tiny_flow, "--vendor", "Hitachi",
                                "--out", tmp_path / "o.nii.gz")
    assert code == 2 and "unknown vendor 'Hitachi'" in err


@pytest.mark.parametrize("fmt, suffix", [("nifti", ".nii.gz"), ("nrrd", ".nrrd"), ("dicom", "")])
def test_out_is_a_folder_as_samples_in_every_format(run_cli, tiny_flow, case, tmp_path, fmt, suffix):  # noqa: F811
    image, mask, vendor = case
    code, stdout, err = run_cli("restyle", "--model", tiny_flow, "--image", image, "--mask", mask, "--vendor", vendor,
                                "--steps", "2", "--out", tmp_path / "restyled", "--format", fmt, "--device", "cpu")
    assert code == 0, err
    name = os.path.basename(image).split(".")[0]
    written = tmp_path / "restyled" / f"{name}_restyled_{vendor}{suffix}"
    assert [p.name for p in (tmp_path / "restyled").iterdir()] == [written.name]
    if fmt == "dicom":  # a series folder, one file per slice
        assert len(list(written.glob("*.dcm"))) == read_volume(image).array.shape[0]
    else:
        assert read_volume(written).same_geometry(read_volume(image), atol=1e-4)


def test_a_file_out_of_another_format_is_refused(run_cli, tiny_flow, case, tmp_path):  # noqa: F811
    image, mask, _ = case
    code, _, err = run_cli("restyle", "--model", tiny_flow, "--image", image, "--mask", mask, "--vendor", "GE",
                           "--out", tmp_path / "o.nii.gz", "--format", "dicom")
    assert code == 2 and "--format dicom: --out names a file of another format" in err
    assert not (tmp_path / "o.nii.gz").exists()
