"""The nearest-neighbour check flags copies of real images (of members or of held-out patients)."""

import numpy as np
from audit_helpers import make_slices

from CMRSynthLib.audit.memorisation import nearest_neighbours, pairwise_rms


def test_pairwise_rms_by_hand():
    a = np.array([[0.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0]])
    np.testing.assert_allclose(pairwise_rms(a, b), [[np.sqrt(2.0)], [1.0]])


def test_generator_returning_held_out_images_is_flagged():
    real = make_slices(16, seed=0)
    members = {f"p{i:02d}" for i in range(8)}
    held_out = real.take(~np.isin(real.patients, list(members)))
    copies = nearest_neighbours(held_out, real, members, n_boot=50)
    assert copies["pixel"]["near_copies"] == len(held_out)
    assert copies["pixel"]["near_copies_of_non_members"] == len(held_out)
    assert copies["pixel"]["median_ratio_d1_d2"] < 0.01
    assert all(pair["near_copy"] and not pair["member"] for pair in copies["gallery"])
    distances = [pair["distance"] for pair in copies["gallery"]]
    assert distances == sorted(distances)


def test_fresh_images_are_not_copies_and_member_copies_are_attributed():
    real = make_slices(16, seed=0)
    members = {f"p{i:02d}" for i in range(8)}
    fresh = nearest_neighbours(make_slices(16, seed=5), real, members, n_boot=50)
    assert fresh["pixel"]["near_copies"] == 0
    assert 0.8 < fresh["pixel"]["median_ratio_d1_d2"] <= 1.0
    member_copies = real.of_patients(members)
    found = nearest_neighbours(member_copies.with_images(member_copies.images + 0.01), real, members, n_boot=50)
    assert found["pixel"]["near_copies_of_members"] == len(member_copies)
