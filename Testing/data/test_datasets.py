"""Slice and stack datasets: items, conditions, tokens, patients, depth fitting and collation."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from CMRSynthLib.data.case import Case, CaseRecord
from CMRSynthLib.data.datasets import SliceDataset, StackDataset, collate, fit_depth, one_hot
from CMRSynthLib.data.preprocess import PreprocessConfig, prepare_case
from CMRSynthLib.data.volume import Volume
from CMRSynthLib.generators.base import Conditions, Vocabulary

VOCABULARY = Vocabulary(vendors=("GE", "Philips", "Siemens"))
CONFIG = PreprocessConfig(spacing=(1.5, 1.5), size=(32, 32))


def synthetic_case(patient, *, vendor="Siemens", phase="ED", group="NOR", slices=4, empty=(), seed=0):
    """A (slices, 40, 40) stack at 1.5 mm: LV disc in a myocardial ring and an RV blob; slices listed in
    ``empty`` have no heart."""
    jj, ii = np.mgrid[0:40, 0:40]
    d = np.hypot(ii - 22, jj - 20)
    labels = np.zeros((slices, 40, 40), np.uint8)
    for z in range(slices):
        if z in empty:
            continue
        labels[z][np.hypot(ii - 10, (jj - 20) / 1.5) < 6] = 3
        labels[z][d < 8] = 2
        labels[z][d < 5] = 1
    rng = np.random.default_rng(seed)
    image = np.choose(labels, [40.0, 300.0, 90.0, 280.0]) + rng.normal(0, 5, labels.shape)
    matrix = np.diag([1.5, 1.5, 8.0, 1.0])
    record = CaseRecord(patient=patient, phase=phase, image_path=f"{patient}.nii.gz", vendor=vendor, group=group,
                        label_path=f"{patient}_gt.nii.gz")
    return prepare_case(Case(record, Volume(image.astype(np.float32), matrix), Volume(labels, matrix)), CONFIG)


@pytest.fixture(scope="module")
def cases():
    return [synthetic_case("p1", vendor="Siemens", phase="ED", group="DCM", empty=(0,)),
            synthetic_case("p1", vendor="Siemens", phase="ES", group="DCM", empty=(0, 3), seed=1),
            synthetic_case("p2", vendor="Canon", phase="ED", group="unknown", slices=6, seed=2),
            synthetic_case("p3", vendor="GE", phase="ES", group="HCM", slices=2, seed=3)]


def test_one_hot_sums_to_one_and_keeps_labels():
    labels = np.random.default_rng(0).integers(0, 4, size=(3, 5, 7))
    for mask in (labels, torch.from_numpy(labels)):
        encoded = one_hot(mask)
        assert encoded.shape == (4, 3, 5, 7) and encoded.dtype == torch.float32
        assert torch.all(encoded.sum(0) == 1)
        assert torch.equal(encoded.argmax(0), torch.from_numpy(labels))
    with pytest.raises(ValueError, match="canonical labels"):
        one_hot(np.full((2, 2), 4))


def test_slice_items_carry_image_mask_tokens_and_patient(cases):
    dataset = SliceDataset(cases, VOCABULARY)
    assert len(dataset) == 3 + 2 + 6 + 2  # empty slices dropped
    item = dataset[0]
    assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (4, 32, 32) and torch.all(item["mask"].sum(0) == 1)
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert (item["patient"], item["case"], item["slice"]) == ("p1", "p1_ED", 1)
    assert torch.equal(item["mask"].argmax(0), torch.from_numpy(cases[0].mask[1]).long())
    assert torch.equal(item["image"][0], torch.from_numpy(cases[0].image[1]))
    assert (item["vendor"].item(), item["phase"].item(), item["group"].item()) == (3, 1, 2)
    assert item["vendor"].dtype == torch.long and item["vendor"].shape == ()
    canon = dataset[5]
    assert canon["patient"] == "p2"
    assert (canon["vendor"].item(), canon["phase"].item(), canon["group"].item()) == (0, 1, 0)  # unknown → null
    assert [dataset[i]["patient"] for i in range(len(dataset))] == ["p1"] * 5 + ["p2"] * 6 + ["p3"] * 2


def test_skip_empty_can_be_switched_off(cases):
    dataset = SliceDataset(cases, VOCABULARY, skip_empty=False)
    assert len(dataset) == 4 + 4 + 6 + 2
    assert dataset[0]["slice"] == 0 and torch.all(dataset[0]["mask"][0] == 1)
    kept = SliceDataset(cases, VOCABULARY)
    assert all(kept[i]["mask"][1:].sum() > 0 for i in range(len(kept)))


def test_patient_index_groups_items_by_patient(cases):
    for dataset in (SliceDataset(cases, VOCABULARY), StackDataset(cases, VOCABULARY)):
        index = dataset.patient_index()
        assert sorted(i for items in index.values() for i in items) == list(range(len(dataset)))
        for patient, items in index.items():
            assert all(dataset[i]["patient"] == patient for i in items)
    assert {p: len(i) for p, i in SliceDataset(cases, VOCABULARY).patient_index().items()} == \
        {"p1": 5, "p2": 6, "p3": 2}
    assert StackDataset(cases, VOCABULARY).patient_index() == {"p1": [0, 1], "p2": [2], "p3": [3]}


def test_stack_items_are_padded_to_the_deepest_case(cases):
    dataset = StackDataset(cases, VOCABULARY)
    assert len(dataset) == 4 and dataset.depth == 6
    item = dataset[3]  # 2 slices padded to 6: two background slices before, two after
    assert item["image"].shape == (1, 6, 32, 32) and item["mask"].shape == (4, 6, 32, 32)
    assert item["slice"] == -2
    assert torch.all(item["image"][0, :2] == -1) and torch.all(item["image"][0, 4:] == -1)
    assert torch.all(item["mask"][0, :2] == 1) and torch.all(item["mask"][0, 4:] == 1)
    assert torch.equal(item["image"][0, 2:4], torch.from_numpy(cases[3].image))
    assert (item["vendor"].item(), item["phase"].item(), item["group"].item()) == (1, 2, 3)


def test_stack_crop_keeps_the_heart(cases):
    dataset = StackDataset(cases, VOCABULARY, depth=3)
    item = dataset[1]  # heart on slices 1, 2 of 4: the window is slices 0..2 (or 1..3)
    heart = item["mask"][1:].sum((0, 2, 3)) > 0
    assert item["slice"] in (0, 1) and heart.sum() == 2
    assert torch.equal(item["image"][0], torch.from_numpy(cases[1].image[item["slice"]:item["slice"] + 3]))
    with pytest.raises(ValueError, match="depth"):
        StackDataset(cases, VOCABULARY, depth=0)


@pytest.mark.parametrize("k, depth, start", [(5, 5, 0), (2, 5, -1), (3, 6, -1), (8, 4, 4)])
def test_fit_depth_maps_output_slices_to_input_slices(k, depth, start):
    image = np.arange(k, dtype=np.float32)[:, None, None] * np.ones((1, 2, 2), np.float32)
    mask = np.zeros((k, 2, 2), np.uint8)
    mask[-2:] = 1  # the heart sits at the end of the stack
    out_image, out_mask, got = fit_depth(image, mask, depth)
    assert got == start and out_image.shape == (depth, 2, 2) and out_mask.shape == (depth, 2, 2)
    for d in range(depth):
        if 0 <= start + d < k:
            assert out_image[d, 0, 0] == start + d and out_mask[d, 0, 0] == mask[start + d, 0, 0]
        else:
            assert out_image[d, 0, 0] == -1 and out_mask[d, 0, 0] == 0


def test_collate_builds_valid_conditions(cases):
    for dataset, shape in ((SliceDataset(cases, VOCABULARY), (1, 32, 32)),
                           (StackDataset(cases, VOCABULARY, depth=4), (1, 4, 32, 32))):
        loader = DataLoader(dataset, batch_size=3, shuffle=False, collate_fn=collate)
        images, cond, patients = next(iter(loader))
        assert isinstance(cond, Conditions) and len(cond) == 3
        assert images.shape == (3, *shape) and cond.mask.shape == (3, 4, *shape[1:])
        assert cond.vendor.dtype == torch.long and cond.vendor.shape == (3,)
        assert patients == [dataset[i]["patient"] for i in range(3)]
        assert torch.equal(cond.group, torch.stack([dataset[i]["group"] for i in range(3)]))


def test_cases_of_different_sizes_are_refused(cases):
    other = PreprocessConfig(spacing=(1.5, 1.5), size=(16, 16))
    record = CaseRecord(patient="p9", phase="ED", image_path="p9.nii.gz")
    labels = np.zeros((2, 20, 20), np.uint8)
    labels[:, 8:12, 8:12] = 1
    small = prepare_case(Case(record, Volume(np.random.rand(2, 20, 20).astype(np.float32), np.eye(4)),
                              Volume(labels, np.eye(4))), other)
    with pytest.raises(ValueError, match="in-plane size"):
        SliceDataset([*cases, small], VOCABULARY)
