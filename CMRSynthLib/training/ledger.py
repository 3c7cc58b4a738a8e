"""The privacy ledger: what a DP run spent, stored in the checkpoint card's ``"privacy"`` field.

The ledger keeps Opacus's accountant history, a list of ``(noise_multiplier, sample_rate, steps)``, so ε can be
recomputed by anyone with Opacus (:func:`recompute_epsilon`). Resuming a run continues that history, and a DP
fine-tune starts from the spend of every DP ancestor in its lineage that saw some of its patients (each
ancestor's own run, :func:`own_history`): ε is never reset. Histories of different units (slice, patient) are
never mixed (:func:`~CMRSynthLib.training.privacy.init_privacy`).

Slice-level DP (only with ``--slice-level``) records unit ``"slice"`` and the patient-level guarantee implied by
group privacy for the largest number ``m`` of slices any patient has. The bound used is the standard one for
(ε, δ)-DP (Dwork & Roth 2014; Vadhan 2017, Lemma 2.2): a group of ``m`` records gets
``(m·ε, m·e^{(m−1)ε}·δ)``. It is exact as a bound and conservative; its δ is often ≥ 1, i.e. no meaningful
patient-level guarantee, which is why patient-level sampling is the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from CMRSynthLib.models.config import FrozenConfig, strict_from_dict
from CMRSynthLib.training.privacy_planner import History, epsilon_of

MECHANISM = "DP-SGD (Opacus)"
UNITS = ("patient", "slice")
# keys of ledgers written before lineage records: the --init's path and its guarantee (the card's lineage now
# holds every ancestor's ledger); read and dropped, so that such a model still loads
LEGACY_KEYS = ("init_checkpoint", "init_guarantee")


@dataclass(frozen=True)
class Ledger(FrozenConfig):
    """A DP run's receipt (``to_dict``/``from_dict``: JSON, unknown keys refused). ``history`` is Opacus's
    accountant history; ``epsilon`` is what it spends at ``delta``.

    Attributes:
        slices_per_patient: the declared bound k on slices (or stacks) one unit contributes to one step; with
            unit "patient" they are averaged into one gradient before clipping.
        noise_multiplicity: K noise/timestep draws per slice, averaged before clipping (DPDM).
        max_slices_per_patient: m, the most slices any patient has (group privacy of slice-level runs).
        group_epsilon, group_delta: the patient-level guarantee of a slice-level run (None for unit "patient").
        init_model: the ``model_id`` of the model the run started from (``--init``), if any (never a path).
        composed_from: the ``model_id`` of every DP ancestor whose own run saw some of this run's patients:
            their histories come first in ``history``, and ``epsilon`` is the total.
        run_steps: the steps of this run alone (its own history is ``(noise_multiplier, sample_rate,
            run_steps)``); None in ledgers written before lineage records.
    """

    accountant: str
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    unit: str
    patients: int
    slices_per_patient: int
    history: tuple[tuple[float, float, int], ...]
    target_epsilon: float | None = None
    noise_multiplicity: int = 1
    max_slices_per_patient: int | None = None
    group_epsilon: float | None = None
    group_delta: float | None = None
    init_model: str | None = None
    composed_from: tuple[str, ...] = ()
    run_steps: int | None = None
    mechanism: str = MECHANISM

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"ledger unit must be one of {UNITS}, got {self.unit!r}")
        object.__setattr__(self, "history", tuple((float(s), float(q), int(n)) for s, q, n in self.history))

    @classmethod
    def from_dict(cls, data: dict) -> "Ledger":
        """Strictly (unknown keys refused), except the :data:`LEGACY_KEYS` of older ledgers."""
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in LEGACY_KEYS}
            composed = data.get("composed_from")
            data["composed_from"] = [composed] if isinstance(composed, str) else composed or []  # older: one path
        return strict_from_dict(cls, data)

    def own_history(self) -> History:
        """The accountant history of this ledger's own run, without what it composed; the whole history when
        the ledger predates ``run_steps`` (which can only overstate a later composition)."""
        if self.run_steps is None:
            return self.history
        return ((self.noise_multiplier, self.sample_rate, self.run_steps),) if self.run_steps else ()


def make_ledger(history, *, accountant: str, delta: float, unit: str, max_slices_per_patient: int | None = None,
                **details) -> Ledger:
    """A ledger whose ε (and, for unit "slice", group-privacy ε/δ) is computed from ``history`` by Opacus.

    ``details`` are the remaining :class:`Ledger` fields (noise_multiplier, max_grad_norm, ...); ``steps`` is the
    total number of steps in ``history``.
    """
    history = tuple((float(s), float(q), int(n)) for s, q, n in history)
    eps = epsilon_of(history, delta=delta, accountant=accountant)
    group = group_privacy(eps, delta, max_slices_per_patient) if unit == "slice" else (None, None)
    return Ledger(accountant=accountant, epsilon=eps, delta=delta, unit=unit, history=history,
                  steps=sum(n for _, _, n in history), max_slices_per_patient=max_slices_per_patient,
                  group_epsilon=group[0], group_delta=group[1], **details)


def patient_level(ledger: dict | None) -> tuple[float | None, float | None]:
    """The (ε, δ) per PATIENT of a card's ledger dict: its own for unit "patient", its group-privacy ones for a
    slice-level run (whose own ε is per slice and would understate a patient's); (None, None) without DP. What
    to show wherever a model's privacy is one number."""
    if not ledger:
        return None, None
    if ledger.get("unit") == "slice":
        return ledger.get("group_epsilon"), ledger.get("group_delta")
    return ledger.get("epsilon"), ledger.get("delta")


def recompute_epsilon(ledger: Ledger) -> float:
    """ε of the ledger's accountant history, recomputed with Opacus."""
    return epsilon_of(ledger.history, delta=ledger.delta, accountant=ledger.accountant)


def group_privacy(epsilon: float, delta: float, m: int | None) -> tuple[float, float]:
    """(ε, δ)-DP per slice → ``(m·ε, m·e^{(m−1)ε}·δ)`` for a patient with ``m`` slices (δ capped at 1)."""
    if m is None or m < 1:
        raise ValueError(f"group privacy needs the largest number of slices per patient m ≥ 1, got {m}")
    exponent = (m - 1) * epsilon
    group_delta = 1.0 if exponent > 700 else min(1.0, m * math.exp(exponent) * delta)
    return m * epsilon, group_delta
