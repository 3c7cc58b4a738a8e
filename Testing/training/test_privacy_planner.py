"""The DP planner agrees with Opacus's own accountants, never overshoots a target, and refuses bad input."""

import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from CMRSynthLib.errors import InputError
from CMRSynthLib.training.privacy_planner import (EPSILON_TOLERANCE, MAX_NOISE, calibrate_noise, epsilon_of,
                                                  max_steps, plan_epsilon, plan_noise, steps_for)


def opacus_epsilon(accountant_class, noise, rate, steps, delta):
    """ε the way an Opacus user gets it: step the accountant once per optimizer step."""
    accountant = accountant_class()
    for _ in range(steps):
        accountant.step(noise_multiplier=noise, sample_rate=rate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(accountant.get_epsilon(delta))


# Pinned with Opacus 1.6 (RDPAccountant / PRVAccountant stepped 1000 / 125 times).
@pytest.mark.parametrize("patients, batch, epochs, noise, delta, accountant, steps, expected", [
    (1000, 10, 10, 1.0, 1e-5, "rdp", 1000, 2.1013652716430564),
    (50, 4, 10, 0.8, 1e-3, "rdp", 125, 7.940732224931866),
    (50, 4, 10, 0.8, 1e-3, "prv", 125, 6.697404338325875),
])
def test_plan_epsilon_pinned(patients, batch, epochs, noise, delta, accountant, steps, expected):
    plan = plan_epsilon(patients, batch, epochs, noise, delta, accountant)
    assert plan.steps == steps and plan.sample_rate == batch / patients
    assert plan.epsilon == pytest.approx(expected, rel=1e-9)
    assert plan.unit == "patient" and plan.accountant == accountant and plan.noise_multiplier == noise


@pytest.mark.parametrize("patients, batch, epochs, noise, delta", [
    (100, 10, 5, 1.1, 1e-3), (20, 4, 3, 0.7, 1e-2), (300, 30, 2.5, 2.0, 1e-4)])
def test_plan_epsilon_matches_a_stepped_opacus_accountant(patients, batch, epochs, noise, delta):
    from opacus.accountants import RDPAccountant

    plan = plan_epsilon(patients, batch, epochs, noise, delta, "rdp")
    assert plan.steps == int(epochs / (batch / patients))
    assert plan.epsilon == pytest.approx(opacus_epsilon(RDPAccountant, noise, batch / patients, plan.steps, delta),
                                         rel=1e-12)


def test_plan_noise_is_opacus_calibration_and_tight():
    from opacus.accountants.utils import get_noise_multiplier

    plan = plan_noise(1000, 10, 10, 3.0, 1e-5, "rdp")
    assert plan.noise_multiplier == get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.01,
                                                         epochs=10, accountant="rdp",
                                                         epsilon_tolerance=EPSILON_TOLERANCE)
    assert 3.0 - EPSILON_TOLERANCE <= plan.epsilon <= 3.0
    assert plan.epsilon == epsilon_of([(plan.noise_multiplier, 0.01, 1000)], delta=1e-5, accountant="rdp")


def test_plan_noise_prv():
    plan = plan_noise(20, 5, 1, 2.0, 1e-2, "prv")
    assert plan.steps == 4 and 2.0 - EPSILON_TOLERANCE <= plan.epsilon <= 2.0
    assert plan.noise_multiplier < plan_noise(20, 5, 1, 2.0, 1e-2, "rdp").noise_multiplier  # PRV is tighter


@settings(max_examples=6, deadline=None)
@given(patients=st.integers(10, 2000), batch_fraction=st.floats(0.01, 0.5), epochs=st.floats(0.5, 20),
       target=st.floats(0.5, 20), delta_exponent=st.integers(4, 8))
def test_calibrated_noise_never_overshoots(patients, batch_fraction, epochs, target, delta_exponent):
    batch = max(1, int(patients * batch_fraction))
    delta = min(10.0 ** -delta_exponent, 0.5 / patients)
    try:
        plan = plan_noise(patients, batch, epochs, target, delta, "rdp")
    except InputError:  # unreachable: check that it really is
        q = batch / patients
        assert epsilon_of([(MAX_NOISE, q, steps_for(epochs, patients, batch))], delta=delta,
                          accountant="rdp") > target
        return
    assert plan.epsilon <= target
    assert epsilon_of([(plan.noise_multiplier, plan.sample_rate, plan.steps)], delta=delta, accountant="rdp") <= target


def test_calibration_on_a_partly_spent_budget_composes():
    spent = [(1.0, 0.1, 50)]
    before = epsilon_of(spent, delta=1e-3, accountant="rdp")
    sigma = calibrate_noise(sample_rate=0.05, steps=200, target_epsilon=before + 2.0, delta=1e-3, accountant="rdp",
                            spent=spent)
    total = epsilon_of([*spent, (sigma, 0.05, 200)], delta=1e-3, accountant="rdp")
    assert before + 2.0 - EPSILON_TOLERANCE <= total <= before + 2.0
    with pytest.raises(InputError, match="already spent"):
        calibrate_noise(sample_rate=0.05, steps=200, target_epsilon=before * 0.9, delta=1e-3, accountant="rdp",
                        spent=spent)


def test_max_steps_is_the_last_step_within_budget():
    n = max_steps(noise_multiplier=1.0, sample_rate=0.1, target_epsilon=2.0, delta=1e-3, accountant="rdp",
                  limit=2_000)
    assert 0 < n < 2_000
    assert epsilon_of([(1.0, 0.1, n)], delta=1e-3, accountant="rdp") <= 2.0
    assert epsilon_of([(1.0, 0.1, n + 1)], delta=1e-3, accountant="rdp") > 2.0
    assert max_steps(noise_multiplier=1.0, sample_rate=0.1, target_epsilon=2.0, delta=1e-3, accountant="rdp",
                     limit=n - 3) == n - 3
    assert max_steps(noise_multiplier=0.3, sample_rate=1.0, target_epsilon=0.01, delta=1e-3, accountant="rdp",
                     limit=5) == 0


@pytest.mark.parametrize("kwargs, flag", [
    (dict(patients=0), "--patients"), (dict(patients=-3), "--patients"),
    (dict(batch_size=0), "--batch-size"), (dict(batch_size=101), "--batch-size"),
    (dict(epochs=0), "--epochs"), (dict(epochs=-1), "--epochs"), (dict(epochs=math.inf), "--epochs"),
    (dict(delta=0.0), "--delta"), (dict(delta=-1e-5), "--delta"), (dict(delta=0.01), "--delta"),
    (dict(delta=0.5), "--delta"), (dict(target_epsilon=0.0), "--epsilon"), (dict(target_epsilon=-2.0), "--epsilon"),
    (dict(accountant="gdp"), "--accountant"), (dict(epochs=0.001), "--epochs"),
])
def test_bad_planner_input(kwargs, flag):
    args = dict(patients=100, batch_size=10, epochs=5, target_epsilon=4.0, delta=1e-3, accountant="rdp") | kwargs
    with pytest.raises(InputError, match=flag):
        plan_noise(args["patients"], args["batch_size"], args["epochs"], args["target_epsilon"], args["delta"],
                   args["accountant"])


def test_bad_noise_and_unreachable_target():
    with pytest.raises(InputError, match="--noise-multiplier"):
        plan_epsilon(100, 10, 5, 0.0, 1e-3)
    with pytest.raises(InputError, match="cannot be reached.*raise --epsilon"):
        plan_noise(100, 10, 50, 1e-4, 1e-3)
