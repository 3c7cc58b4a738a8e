"""Scene ↔ file geometry without Slicer: vtkMatrix4x4 ↔ numpy IJK-to-RAS, checked against SimpleITK and vtk
on an oblique, anisotropic volume; the segment → canonical label mapping; output node names."""

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from CMRSynthLib.data.conventions import LV, MYO, RV
from CMRSynthLib.data.volume import read_volume, write_volume
from CMRSynthLib.errors import InputError
from CMRSynthLib.gui import scene


def rotation(a, b, c):
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    rx = np.array([[1, 0, 0], [0, ca, -sa], [0, sa, ca]])
    ry = np.array([[cb, 0, sb], [0, 1, 0], [-sb, 0, cb]])
    rz = np.array([[cc, -sc, 0], [sc, cc, 0], [0, 0, 1]])
    return rz @ ry @ rx


@pytest.fixture
def oblique(tmp_path):
    """An oblique short-axis-like stack written by SimpleITK (LPS): (K, J, I) = (5, 7, 9)."""
    array = np.arange(5 * 7 * 9, dtype=np.float32).reshape(5, 7, 9)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.9, 1.3, 7.5))
    image.SetOrigin((12.3, -40.1, 88.0))
    image.SetDirection(tuple(rotation(0.4, -0.7, 1.1).ravel()))
    path = tmp_path / "oblique.nii.gz"
    sitk.WriteImage(image, str(path))
    return sitk.ReadImage(str(path)), path


def vtk_ijk_to_ras(image) -> vtk.vtkMatrix4x4:
    """What a Slicer volume node holds, computed by vtk alone: index-to-physical (LPS), then LPS → RAS."""
    data = vtk.vtkImageData()
    data.SetDimensions(image.GetSize())
    data.SetSpacing(image.GetSpacing())
    data.SetOrigin(image.GetOrigin())
    data.SetDirectionMatrix(image.GetDirection())
    flip = vtk.vtkMatrix4x4()
    flip.SetElement(0, 0, -1)
    flip.SetElement(1, 1, -1)
    result = vtk.vtkMatrix4x4()
    vtk.vtkMatrix4x4.Multiply4x4(flip, data.GetIndexToPhysicalMatrix(), result)
    return result


def test_vtk_matrix_of_an_oblique_volume_equals_our_ijk_to_ras(oblique):
    image, path = oblique
    volume = read_volume(path)
    assert np.allclose(scene.matrix_to_array(vtk_ijk_to_ras(image)), volume.ijk_to_ras, atol=1e-5)
    assert not np.allclose(volume.direction, np.eye(3), atol=0.1)  # really oblique


def test_points_map_like_simpleitk(oblique):
    image, path = oblique
    matrix = scene.array_to_matrix(read_volume(path).ijk_to_ras)
    for index in [(0, 0, 0), (8, 6, 4), (3, 1, 2), (5, 6, 0)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(index))
        ras = np.array(matrix.MultiplyPoint((*index, 1.0))[:3])
        assert np.allclose(ras, lps * [-1, -1, 1], atol=1e-4)


def test_voxel_order_is_kji_like_array_from_volume(oblique):
    image, path = oblique
    array = read_volume(path).array
    data = vtk.vtkImageData()  # how Slicer stores voxels: i fastest
    data.SetDimensions(image.GetSize())
    data.AllocateScalars(vtk.VTK_FLOAT, 1)
    flat = sitk.GetArrayFromImage(image).ravel()
    for n, value in enumerate(flat):
        data.GetPointData().GetScalars().SetValue(n, value)
    for i, j, k in [(0, 0, 0), (8, 0, 0), (0, 6, 0), (2, 3, 4)]:
        assert data.GetScalarComponentAsDouble(i, j, k, 0) == array[k, j, i]


def test_round_trips_between_vtk_and_numpy():
    a = np.array([[0.5, -0.2, 0.1, 10.0], [0.1, 0.9, 0.3, -5.0], [0.0, 0.2, 6.0, 1.5], [0, 0, 0, 1]])
    assert np.array_equal(scene.matrix_to_array(scene.array_to_matrix(a)), a)
    with pytest.raises(ValueError, match="4x4"):
        scene.array_to_matrix(np.eye(3))


def test_exported_mask_keeps_the_reference_geometry(oblique, tmp_path):
    image, path = oblique
    reference = read_volume(path)
    k, j, i = np.indices(reference.shape)
    binaries = {LV: (np.hypot(j - 3, i - 4) < 2), MYO: (np.hypot(j - 3, i - 4) >= 2) & (np.hypot(j - 3, i - 4) < 3),
                RV: (i >= 7)}
    mask, overlap = scene.mask_volume(binaries, reference.ijk_to_ras)
    written = sitk.ReadImage(str(write_volume(mask, tmp_path / "mask.nii.gz")))
    assert overlap == 0
    assert np.allclose(written.GetSpacing(), image.GetSpacing(), atol=1e-5)
    assert np.allclose(written.GetOrigin(), image.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetDirection(), image.GetDirection(), atol=1e-5)
    labels = sitk.GetArrayFromImage(written)
    assert set(np.unique(labels)) == {0, LV, MYO, RV} and np.array_equal(labels == LV, binaries[LV])


def test_combining_structures_counts_overlaps_and_refuses_nothing():
    a = np.zeros((1, 2, 3), bool)
    lv, myo = a.copy(), a.copy()
    lv[0, 0, :2] = True
    myo[0, 0, 1:] = True
    labels, overlap = scene.combine_structures({MYO: myo, LV: lv})
    assert overlap == 1 and labels[0, 0].tolist() == [LV, MYO, MYO]  # the higher label wins
    with pytest.raises(InputError, match="no segment is mapped"):
        scene.combine_structures({})
    with pytest.raises(ValueError, match="differ in shape"):
        scene.combine_structures({LV: lv, RV: np.zeros((2, 2, 3))})


@pytest.mark.parametrize("name, terminology, label", [
    ("LV blood pool", "", LV), ("Left ventricle", "", LV), ("left_ventricle_cavity", "", LV),
    ("Myocardium", "", MYO), ("LV myocardium", "", MYO), ("lv_myo", "", MYO), ("RV", "", RV),
    ("Right ventricle", "", RV), ("Segment_1", "", None), ("Segment_2", "SCT^1^Tissue~SCT^2^Myocardium", MYO),
    ("Liver", "", None),
])
def test_structure_guess_from_names_and_terminology(name, terminology, label):
    assert scene.guess_structure(name, terminology) == label


def test_mapping_takes_the_first_segment_per_structure():
    segments = {"s1": ("LV", ""), "s2": ("Myocardium", ""), "s3": ("Left ventricle", ""), "s4": ("Liver", "")}
    assert scene.guess_mapping(segments) == {LV: "s1", MYO: "s2"}


def test_synthetic_node_names_follow_the_sample_file_names():
    assert scene.parse_synthetic_name("/o/mask_synth_Philips_12.nii.gz") == ("Philips", 12)
    assert scene.synthetic_node_name("cine", "/o/p1_ED_gt_synth_GE-Healthcare_3.nrrd") == "cine_synth_GE-Healthcare_3"
    with pytest.raises(ValueError, match="not named"):
        scene.parse_synthetic_name("/o/mask.nii.gz")
