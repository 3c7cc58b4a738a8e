"""The privacy ledger: JSON round trip, ε recomputed from its history, group privacy, exact continuation."""

import json
import math

import pytest

from CMRSynthLib.training.ledger import Ledger, group_privacy, make_ledger, recompute_epsilon
from CMRSynthLib.training.privacy_planner import epsilon_of

DETAILS = dict(noise_multiplier=1.2, max_grad_norm=1.0, sample_rate=0.1, patients=40, slices_per_patient=1)


def test_round_trip_and_recomputed_epsilon():
    history = [(1.5, 0.05, 100), (1.2, 0.1, 30)]  # a composed run: an earlier DP run, then this one
    ledger = make_ledger(history, accountant="rdp", delta=1e-3, unit="patient", target_epsilon=5.0,
                         init_model="0123456789abcdef", composed_from=("fedcba9876543210",), run_steps=30,
                         **DETAILS)
    assert ledger.steps == 130 and ledger.mechanism == "DP-SGD (Opacus)"
    assert ledger.epsilon == epsilon_of(history, delta=1e-3, accountant="rdp") > 0
    assert ledger.group_epsilon is None and ledger.group_delta is None
    text = json.dumps(ledger.to_dict())
    back = Ledger.from_dict(json.loads(text))
    assert back == ledger
    assert recompute_epsilon(back) == ledger.epsilon
    assert recompute_epsilon(Ledger.from_dict({**ledger.to_dict(), "accountant": "prv"})) < ledger.epsilon


def test_recompute_detects_a_tampered_history():
    ledger = make_ledger([(1.2, 0.1, 50)], accountant="rdp", delta=1e-3, unit="patient", **DETAILS)
    tampered = Ledger.from_dict({**ledger.to_dict(), "history": [[1.2, 0.1, 40]]})
    assert recompute_epsilon(tampered) < tampered.epsilon


def test_unknown_keys_and_units_are_refused():
    ledger = make_ledger([(1.2, 0.1, 5)], accountant="rdp", delta=1e-3, unit="patient", **DETAILS)
    with pytest.raises(ValueError, match="unknown Ledger keys"):
        Ledger.from_dict({**ledger.to_dict(), "epsilon_total": 3})
    with pytest.raises(ValueError, match="unit"):
        Ledger.from_dict({**ledger.to_dict(), "unit": "study"})


def test_group_privacy_closed_form():
    assert group_privacy(0.7, 1e-6, 1) == (0.7, 1e-6)
    eps, delta = group_privacy(0.5, 1e-6, 3)
    assert eps == 1.5 and delta == pytest.approx(3 * math.exp(1.0) * 1e-6, rel=1e-12)
    assert group_privacy(2.0, 1e-5, 30) == (60.0, 1.0)  # δ capped: no meaningful patient-level guarantee
    with pytest.raises(ValueError):
        group_privacy(1.0, 1e-5, None)


def test_slice_level_ledger_reports_group_privacy():
    ledger = make_ledger([(1.0, 0.01, 200)], accountant="rdp", delta=1e-6, unit="slice",
                         max_slices_per_patient=4, **DETAILS)
    assert ledger.unit == "slice"
    assert (ledger.group_epsilon, ledger.group_delta) == group_privacy(ledger.epsilon, 1e-6, 4)
    assert ledger.group_epsilon == 4 * ledger.epsilon


def test_continuing_a_serialised_history_is_exact():
    from opacus.accountants import RDPAccountant

    whole, first = RDPAccountant(), RDPAccountant()
    for _ in range(60):
        whole.step(noise_multiplier=0.9, sample_rate=0.07)
    for _ in range(30):
        first.step(noise_multiplier=0.9, sample_rate=0.07)
    saved = json.loads(json.dumps(make_ledger(first.history, accountant="rdp", delta=1e-4, unit="patient",
                                              **DETAILS).to_dict()))
    resumed = RDPAccountant()
    resumed.history = [tuple(h) for h in Ledger.from_dict(saved).history]
    for _ in range(30):
        resumed.step(noise_multiplier=0.9, sample_rate=0.07)
    assert resumed.history == whole.history
    assert epsilon_of(resumed.history, delta=1e-4, accountant="rdp") == whole.get_epsilon(1e-4)


def test_a_ledger_written_before_lineage_records_still_reads():
    ledger = make_ledger([(1.2, 0.1, 5)], accountant="rdp", delta=1e-3, unit="patient", **DETAILS)
    old = {k: v for k, v in ledger.to_dict().items() if k not in ("init_model", "composed_from", "run_steps")}
    back = Ledger.from_dict({**old, "init_checkpoint": "/data/public", "composed_from": "/data/earlier",
                             "init_guarantee": None})
    assert back.composed_from == ("/data/earlier",) and back.run_steps is None
    assert back.own_history() == back.history  # the whole history: it can only overstate a later composition
