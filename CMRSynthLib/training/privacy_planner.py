"""The DP planner: ε for a given noise, or the noise for a target ε — pure functions over Opacus's accountants.

Semantics (DESIGN §5): the privacy unit is the patient. One DP-SGD step samples every patient independently
with probability ``q = batch_size / patients`` (Poisson sampling, so ``batch_size`` is the *expected* number of
patients per step) and adds Gaussian noise of standard deviation ``noise_multiplier · max_grad_norm`` to the
sum of per-patient clipped gradients. A run of ``E`` epochs takes ``steps = ⌊E · patients / batch_size⌋`` steps
(:func:`steps_for`, the one count the planner and the trainer share); every step is a step for the accountant,
a draw with no patient included (it is a noise-only step).

An accountant *history* is Opacus's own: a sequence of ``(noise_multiplier, sample_rate, steps)``. All ε
values come from ``opacus.accountants`` (RDP or PRV); nothing here re-implements accounting. The only search
written here is a bisection over noise or steps that *calls* the accountant (for a budget already partly spent,
which :func:`~opacus.accountants.utils.get_noise_multiplier` cannot take).
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from dataclasses import asdict, dataclass
from typing import Sequence

from CMRSynthLib.errors import InputError

ACCOUNTANTS = ("rdp", "prv")
MAX_NOISE = 100.0  # beyond this σ a model learns nothing useful: a target needing more is "unreachable"
EPSILON_TOLERANCE = 1e-3  # calibration stops when the ε reached is within this of the target (never above)

History = Sequence[tuple[float, float, int]]


@dataclass(frozen=True)
class Plan:
    """One planned DP-SGD run (the fields ``cmrsynth privacy-budget --json`` prints)."""

    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float
    steps: int
    accountant: str
    unit: str = "patient"

    def to_dict(self) -> dict:
        return asdict(self)


# -- accounting: the one place ε is computed ------------------------------------------------------------
def epsilon_of(history: History, *, delta: float, accountant: str) -> float:
    """ε spent by an accountant ``history`` of ``(noise_multiplier, sample_rate, steps)`` at ``delta``."""
    from opacus.accountants import create_accountant

    history = [(float(s), float(q), int(n)) for s, q, n in history if int(n) > 0]
    if not history:
        return 0.0
    acc = create_accountant(mechanism=_check_accountant(accountant))
    acc.history = history
    with warnings.catch_warnings():  # RDP warns when the best order is at the edge of its grid; ε is still valid
        warnings.simplefilter("ignore")
        eps = float(acc.get_epsilon(delta=delta))
    # Opacus's RDP→(ε, δ) conversion (Balle et al. 2020) can return ε < 0 for very small RDP; (ε, δ)-DP with
    # ε < 0 implies (0, δ)-DP, so 0 is the sound (and meaningful) value to report.
    return max(0.0, eps)


def sample_rate(patients: int, batch_size: float) -> float:
    """Poisson sampling rate ``q`` of one patient per step."""
    return float(batch_size) / float(patients)


def steps_for(epochs: float, units: int, batch_size: float) -> int:
    """Steps of ``epochs`` epochs over ``units`` patients (slices with --slice-level) at ``batch_size`` expected per
    step: ``⌊epochs · units / batch_size⌋``, in exact arithmetic on the numbers as written (in floating point the
    planner's ``int(epochs / q)`` gave 63 for 45 epochs of 7 patients in batches of 5, the trainer's
    ``epochs · (units / batch_size)`` 62)."""
    return math.floor(Fraction(str(epochs)) * units / Fraction(str(batch_size)))


# -- the two questions a user asks ----------------------------------------------------------------------
def plan_epsilon(patients: int, batch_size: float, epochs: float, noise_multiplier: float, delta: float,
                 accountant: str = "rdp") -> Plan:
    """ε spent by ``epochs`` epochs of patient-level DP-SGD at ``noise_multiplier`` (raises InputError)."""
    q, steps = _checked_schedule(patients=patients, batch_size=batch_size, epochs=epochs, delta=delta,
                                 noise_multiplier=noise_multiplier, accountant=accountant)
    eps = epsilon_of([(noise_multiplier, q, steps)], delta=delta, accountant=accountant)
    return Plan(eps, delta, float(noise_multiplier), q, steps, accountant)


def plan_noise(patients: int, batch_size: float, epochs: float, target_epsilon: float, delta: float,
               accountant: str = "rdp") -> Plan:
    """The smallest noise (within :data:`EPSILON_TOLERANCE`) whose ε after ``epochs`` epochs is ≤ the target."""
    q, steps = _checked_schedule(patients=patients, batch_size=batch_size, epochs=epochs, delta=delta,
                                 target_epsilon=target_epsilon, accountant=accountant)
    sigma = calibrate_noise(sample_rate=q, steps=steps, target_epsilon=target_epsilon, delta=delta,
                            accountant=accountant)
    eps = epsilon_of([(sigma, q, steps)], delta=delta, accountant=accountant)
    return Plan(eps, delta, sigma, q, steps, accountant)


def calibrate_noise(*, sample_rate: float, steps: int, target_epsilon: float, delta: float, accountant: str,
                    spent: History = ()) -> float:
    """Noise multiplier σ such that ``spent`` followed by ``steps`` steps at σ spends at most ``target_epsilon``.

    With nothing spent this is Opacus's ``get_noise_multiplier`` (tolerance :data:`EPSILON_TOLERANCE`); with a
    budget already partly spent (a DP fine-tune composed onto an earlier DP run) it is a bisection over σ that
    asks the same accountant. Either way the result is checked: its ε never exceeds the target.
    Raises InputError when even σ = :data:`MAX_NOISE` overshoots the target.
    """
    from opacus.accountants.utils import get_noise_multiplier

    def eps(sigma: float) -> float:
        return epsilon_of([*spent, (sigma, sample_rate, steps)], delta=delta, accountant=accountant)

    if eps(MAX_NOISE) > target_epsilon:
        already = epsilon_of(spent, delta=delta, accountant=accountant)
        raise InputError(_unreachable(target_epsilon, already))
    if not spent:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sigma = get_noise_multiplier(target_epsilon=target_epsilon, target_delta=delta, sample_rate=sample_rate,
                                         steps=steps, accountant=accountant, epsilon_tolerance=EPSILON_TOLERANCE)
    else:
        sigma = _bisect_noise(eps, target_epsilon)
    if sigma > MAX_NOISE:
        raise InputError(_unreachable(target_epsilon, 0.0))
    reached = eps(sigma)
    if reached > target_epsilon:  # the calibration's promise; never silently exceed a user's budget
        raise RuntimeError(f"noise calibration overshot: σ={sigma} gives ε={reached} > target {target_epsilon}")
    return float(sigma)


def max_steps(*, noise_multiplier: float, sample_rate: float, target_epsilon: float, delta: float,
              accountant: str, limit: int, spent: History = ()) -> int:
    """Most steps (at most ``limit``) at ``(noise_multiplier, sample_rate)`` after ``spent`` that keep
    ε ≤ ``target_epsilon``; 0 when even one step overshoots. ε grows with steps, so bisection is exact."""

    def fits(n: int) -> bool:
        return epsilon_of([*spent, (noise_multiplier, sample_rate, n)], delta=delta,
                          accountant=accountant) <= target_epsilon

    if fits(limit):
        return limit
    if not fits(0):
        return 0
    low, high = 0, limit  # invariant: fits(low), not fits(high)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


# -- input checks (messages name the flag, the value and what is allowed) --------------------------------
def check_inputs(*, patients: int, batch_size: float, epochs: float | None, delta: float,
                 target_epsilon: float | None = None, noise_multiplier: float | None = None,
                 accountant: str = "rdp") -> None:
    """Raise InputError for any planner input that has no meaning."""
    _check_accountant(accountant)
    if not (isinstance(patients, int) and patients > 0):
        raise InputError(f"--patients must be a positive whole number, got {patients}")
    if not (_finite(batch_size) and 0 < batch_size <= patients):
        raise InputError(f"--batch-size (expected patients per step) must be in (0, {patients}] for "
                         f"{patients} patients, got {batch_size}")
    if epochs is not None and not (_finite(epochs) and epochs > 0):
        raise InputError(f"--epochs must be > 0, got {epochs}")
    if not (_finite(delta) and 0 < delta < 1 / patients):
        raise InputError(f"--delta must be > 0 and < 1/patients = {1 / patients:.3g} (a δ ≥ 1/N allows "
                         f"leaking a whole patient), got {delta}; a usual choice is δ ≤ 1/N^1.1")
    if target_epsilon is not None and not (_finite(target_epsilon) and target_epsilon > 0):
        raise InputError(f"--epsilon must be > 0, got {target_epsilon}")
    if noise_multiplier is not None and not (_finite(noise_multiplier) and noise_multiplier > 0):
        raise InputError(f"--noise-multiplier must be > 0, got {noise_multiplier}")


def _checked_schedule(*, patients: int, batch_size: float, epochs: float, **inputs) -> tuple[float, int]:
    """``(q, steps)`` of a planned run, after :func:`check_inputs` (``inputs``: its remaining arguments)."""
    check_inputs(patients=patients, batch_size=batch_size, epochs=epochs, **inputs)
    q = sample_rate(patients, batch_size)
    steps = steps_for(epochs, patients, batch_size)
    if steps < 1:
        raise InputError(f"the run has {steps} steps (epochs × patients / batch size < 1); raise --epochs")
    return q, steps


def _check_accountant(accountant: str) -> str:
    if accountant not in ACCOUNTANTS:
        raise InputError(f"--accountant must be one of {', '.join(ACCOUNTANTS)}, got {accountant!r}")
    return accountant


def _unreachable(target: float, already: float) -> str:
    spent = f" ({already:.3g} of it already spent by the earlier DP run)" if already > 0 else ""
    return (f"--epsilon {target:g} cannot be reached{spent} even with noise multiplier {MAX_NOISE:g}; "
            "raise --epsilon, or lower --epochs/--steps or --batch-size, or use more patients")


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _bisect_noise(eps, target: float) -> float:
    """Smallest σ (to within :data:`EPSILON_TOLERANCE` in ε) with ``eps(σ) ≤ target``, searched like Opacus's
    ``get_noise_multiplier`` (double, then bisect); needs ``eps(MAX_NOISE) ≤ target``."""
    low, high = 0.0, 1.0
    eps_high = eps(high)
    while eps_high > target:
        low, high = high, min(2 * high, MAX_NOISE)
        eps_high = eps(high)
    while target - eps_high > EPSILON_TOLERANCE and high - low > 1e-9:
        mid = (low + high) / 2
        e = eps(mid)
        if e <= target:
            high, eps_high = mid, e
        else:
            low = mid
    return high
