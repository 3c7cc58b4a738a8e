"""The phantom's anatomy: one patient's heart and thorax drawn on a short-axis stack (DESIGN §7).

Frame (millimetres): ``x`` along the image columns (towards the patient's left: RV on the left of the image,
LV lateral wall on the right), ``y`` along the image rows (towards the inferior wall and the spine: anterior
chest wall at the top), ``z`` along the long axis from the end-diastolic base plane towards the apex.

The LV is two nested half-ellipsoids of revolution (endocardium inside epicardium) sharing the base plane,
with a per-patient angular shape ``P(θ)`` and wall-thickness profile ``T(θ)``. The RV is an ellipse beside the
LV minus the LV epicardium (a crescent wrapping the septum) that tapers faster than the LV, so it vanishes first
towards the apex. At end-systole the apex stays put, the base descends (longitudinal shortening) and the
endocardium moves in by a factor solved in closed form to hit the patient's target ejection fraction; the wall
thickens so that its cross-section is conserved. An infarct segment (MINF) is thin and akinetic: it keeps its
end-diastolic position. Every structure is a signed distance ``d`` (mm, negative inside): labels are ``d < 0``
and the image uses the anti-aliased membership ``clip(0.5 - d / pixel, 0, 1)``, so image and label agree.

Label convention: papillary muscles and trabeculae lie inside the LV blood pool label (1), as in ACDC and
M&Ms; they are drawn dark in the image. The thin RV free wall and all fat are background (0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

# Tissues the renderer paints; a vendor style gives each one a signal relative to blood.
TISSUES = ("blood", "myo", "fat", "muscle", "lung", "liver", "marrow", "bone", "csf", "soft", "pericardium")

# Per-group anatomy and function: (LV endocardial base radius mm, endocardial length mm, wall mm, LV EF range %,
# longitudinal shortening (ES length / ED length), RV offset δ, RV semi-axes (αu, αv) in LV-epicardial radii,
# RV length / LV length, nominal RV EF range % (it sets the RV's systolic scale; the labelled RV EF lands near it,
# higher for HCM's small hearts, hence its lower nominal range)).
_GROUPS = {
    "NOR": dict(radius=27.0, length=95.0, wall=8.5, ef=(57, 68), shortening=0.87, rv=(0.80, 1.00, 1.55),
                rv_length=0.85, rv_ef=(50, 62)),
    "DCM": dict(radius=36.0, length=108.0, wall=7.0, ef=(16, 34), shortening=0.95, rv=(0.80, 1.00, 1.55),
                rv_length=0.85, rv_ef=(35, 50)),
    "HCM": dict(radius=22.0, length=85.0, wall=11.5, ef=(70, 80), shortening=0.88, rv=(0.82, 0.98, 1.50),
                rv_length=0.82, rv_ef=(38, 50)),
    "MINF": dict(radius=32.0, length=100.0, wall=8.5, ef=(24, 37), shortening=0.94, rv=(0.80, 1.00, 1.55),
                 rv_length=0.85, rv_ef=(40, 55)),
    "ARV": dict(radius=26.0, length=92.0, wall=8.5, ef=(55, 66), shortening=0.88, rv=(0.90, 1.40, 1.85),
                rv_length=0.95, rv_ef=(20, 34)),
}
LV_TAPER = 2.5  # LV radius ∝ sqrt(1 - (z/L)^2.5): a bullet, fuller than an ellipsoid near the base
RV_TAPER = 2.0


@dataclass(frozen=True)
class Anatomy:
    """One patient's sampled anatomy (all lengths in mm, angles in radians, fractions in [0, 1])."""

    group: str
    sex: str
    height: float  # cm
    weight: float  # kg
    radius: float  # LV endocardial radius at the ED base
    length: float  # LV endocardial length, base plane to apex (ED)
    wall: float  # mean wall thickness at the base
    apex_wall: float  # extra epicardial length at the apex
    shape: tuple[float, float, float, float]  # a2, φ2, a3, φ3 of P(θ) = 1 + a2 cos 2(θ-φ2) + a3 cos 3(θ-φ3)
    septal: tuple[float, float]  # extra septal thickness (HCM), its angle
    infarct: tuple[float, float, float, float]  # residual thickness, angle, concentration κ, apical start (MINF)
    ef: float  # target LV ejection fraction
    shortening: float
    rv: tuple[float, float, float, float, float]  # δ, αu, αv, length fraction, angle θ_rv
    rv_ef: float
    centre: tuple[float, float]  # LV centre in the image plane at mid-stack
    tilt: tuple[float, float]  # drift of the LV centre per mm of z
    rotation: float  # in-plane rotation of the whole anatomy
    papillary: tuple[float, float, float]  # radius, anterolateral angle, posteromedial angle
    trabeculae: tuple[float, float, float]  # lobes, phase, depth (mm at the apex)
    fat: tuple[float, float, float]  # baseline, groove and apical epicardial fat thickness
    body: tuple[float, float, float, float]  # body semi-axes (lateral, AP), subcutaneous fat, chest-wall muscle
    spine: tuple[float, float]  # vertebral body centre
    liver: tuple[float, float]  # liver centre
    last_slice: float  # where the last slice falls past the epicardial apex, in slice spacings


def sample_anatomy(rng: np.random.Generator, group: str) -> Anatomy:
    """Draw one patient of ``group`` (a key of the group table: NOR, DCM, HCM, MINF, ARV)."""
    if group not in _GROUPS:
        raise ValueError(f"group must be one of {sorted(_GROUPS)}, got {group!r}")
    g = _GROUPS[group]
    u, n = rng.uniform, rng.normal
    sex = "M" if rng.random() < 0.55 else "F"
    height = float(np.clip(n(176.0, 7.0) if sex == "M" else n(163.0, 6.5), 145.0, 205.0))
    weight = float(np.clip(n(25.5, 3.5), 17.5, 40.0) * (height / 100.0) ** 2)
    bsa = np.sqrt(height * weight / 3600.0)  # Mosteller, m²
    size = float((bsa / 1.9) ** (1 / 3) * (1.04 if sex == "M" else 0.97) * n(1.0, 0.04))
    hcm = group == "HCM"
    minf = group == "MINF"
    return Anatomy(
        group=group, sex=sex, height=round(height, 1), weight=round(weight, 1),
        radius=g["radius"] * size * n(1.0, 0.04), length=g["length"] * size * n(1.0, 0.04),
        wall=g["wall"] * n(1.0, 0.07), apex_wall=u(5.0, 8.0),
        shape=(u(0.02, 0.07), u(0, np.pi), u(0.0, 0.03), u(0, 2 * np.pi)),
        septal=(u(7.0, 11.0) if hcm else 0.0, np.pi + u(-0.45, 0.15)),
        # MINF: an anterior, inferior or lateral scar
        infarct=(u(2.5, 4.0), float(rng.choice([-1.5, 1.4, 0.2])) + u(-0.3, 0.3), u(2.0, 4.0), u(0.2, 0.45))
        if minf else (0.0, 0.0, 0.0, 1.0),
        ef=u(*g["ef"]) / 100.0, shortening=g["shortening"] * n(1.0, 0.015),
        rv=(g["rv"][0] * n(1.0, 0.04), g["rv"][1] * n(1.0, 0.05), g["rv"][2] * n(1.0, 0.05),
            g["rv_length"] * n(1.0, 0.03), np.pi + u(0.1, 0.4)),
        rv_ef=u(*g["rv_ef"]) / 100.0,
        centre=(u(5.0, 15.0), u(0.0, 10.0)), tilt=(n(0.0, 0.06), n(0.0, 0.06)), rotation=n(0.0, 0.12),
        papillary=(u(3.5, 5.0) * size, -0.75 + n(0, 0.15), 1.35 + n(0, 0.15)),
        trabeculae=(float(rng.integers(13, 21)), u(0, 2 * np.pi), u(2.0, 4.0)),
        fat=(u(0.0, 0.5), u(1.5, 4.0), u(1.0, 3.0)),
        body=(u(150.0, 185.0), u(100.0, 120.0), u(6.0, 16.0), u(9.0, 14.0)),
        spine=(u(-12.0, 4.0), u(76.0, 86.0)), liver=(u(-75.0, -55.0), u(60.0, 80.0)),
        last_slice=u(-0.4, 0.6),
    )


def infarct_profile(cos_delta, kappa: float):
    """Weight of the infarct at angular distance ``acos(cos_delta)`` from its centre: a plateau of full
    thinning that fades out over about ``1/√κ`` rad."""
    return np.minimum(1.6 * np.exp(kappa * (cos_delta - 1.0)), 1.0)


def slice_positions(anatomy: Anatomy, slices: int) -> np.ndarray:
    """``(K,)`` slice centres in mm along the long axis: from just below the end-systolic base (so every
    slice holds LV at both phases) to about the epicardial apex, like a planned short-axis stack."""
    first = anatomy.length * (1.0 - anatomy.shortening) + 1.0
    last_epi = anatomy.length + anatomy.apex_wall
    if slices == 1:
        return np.array([(first + last_epi) / 2.0])
    spacing = (last_epi - first) / (slices - 1 + anatomy.last_slice)
    return first + spacing * np.arange(slices)


def _taper(z: np.ndarray, length: float, power: float = LV_TAPER) -> np.ndarray:
    """Radius at depths ``z`` below the base of a unit-radius solid ``r = sqrt(1 - (z/L)^power)``."""
    return np.sqrt(np.clip(1.0 - np.abs(z / length) ** power, 0.0, 1.0))


class _Angles:
    """Per-pixel polar coordinates around the LV centre and the angular profiles they carry, ``(K, H, W)``."""

    def __init__(self, a: Anatomy, x: np.ndarray, y: np.ndarray, z: np.ndarray):
        cx = a.centre[0] + a.tilt[0] * (z - z.mean())
        cy = a.centre[1] + a.tilt[1] * (z - z.mean())
        self.dx = (x[None] - cx[:, None, None]).astype(np.float32)
        self.dy = (y[None] - cy[:, None, None]).astype(np.float32)
        self.r = np.hypot(self.dx, self.dy)
        inv = 1.0 / np.maximum(self.r, 1e-3)
        self.c, self.s = self.dx * inv, self.dy * inv
        a2, p2, a3, p3 = a.shape
        c2, s2 = self.c * self.c - self.s * self.s, 2 * self.c * self.s
        c3, s3 = self.c * (4 * self.c * self.c - 3), self.s * (3 - 4 * self.s * self.s)
        self.shape = 1 + a2 * (c2 * math.cos(2 * p2) + s2 * math.sin(2 * p2)) + a3 * (
            c3 * math.cos(3 * p3) + s3 * math.sin(3 * p3))
        self.thickness = a.wall + (a.septal[0] * self.bump(a.septal[1], 3.0) if a.septal[0] else 0.0)
        self.infarct = (infarct_profile(self.c * math.cos(a.infarct[1]) + self.s * math.sin(a.infarct[1]),
                                        a.infarct[2]) if a.infarct[2] else None)
        fat_base, fat_groove, _ = a.fat
        rv_angle = a.rv[4]
        self.fat = fat_base + fat_groove * (self.bump(rv_angle + 1.2, 8.0) + self.bump(rv_angle - 1.3, 8.0)
                                            + 0.3 * self.bump(rv_angle, 3.0))
        lobes, phase, _ = a.trabeculae
        theta = np.arctan2(self.dy, self.dx)
        self.trabecular = np.clip(2.5 * np.cos(lobes * theta + phase) * np.cos(0.5 * lobes * theta + 2 * phase)
                                  - 0.4, 0.0, 1.0) * (0.4 + 0.6 * self.bump(0.2, 1.0))

    def bump(self, angle: float, kappa: float) -> np.ndarray:
        """Von Mises bump ``exp(κ (cos(θ - angle) - 1))``: 1 at ``angle``, width about ``1/√κ`` rad."""
        return np.exp(kappa * (self.c * math.cos(angle) + self.s * math.sin(angle) - 1.0))


def _profile_area(a: Anatomy, endo_a: np.ndarray, endo_b: np.ndarray, weight: np.ndarray) -> tuple:
    """Coefficients of Σ_k ∫ ½ (A + ρ B)² dθ, a quadratic in ρ (slice areas summed, mm²)."""
    theta = np.linspace(-np.pi, np.pi, 96, endpoint=False)[None]
    a2, p2, a3, p3 = a.shape
    shape = 1 + a2 * np.cos(2 * (theta - p2)) + a3 * np.cos(3 * (theta - p3))
    w = 0.0
    if a.infarct[2]:
        w = infarct_profile(np.cos(theta - a.infarct[1]), a.infarct[2]) * weight[:, None]
    fixed = shape * endo_a[:, None] * w
    moving = shape * endo_b[:, None] * (1 - w)
    step = 2 * np.pi / theta.size
    return 0.5 * step * np.sum(moving ** 2), step * np.sum(fixed * moving), 0.5 * step * np.sum(fixed ** 2)


@dataclass(frozen=True)
class Phase:
    """Per-slice radii of one phase, ``(K,)`` each, and the wall-thickening and infarct weights."""

    endo_fixed: np.ndarray  # ED endocardial radius (the akinetic infarct keeps it)
    endo: np.ndarray  # moving endocardial radius
    epi_fixed: np.ndarray
    epi: np.ndarray  # epicardial taper: radius = (R ρ P(θ) + T(θ) thickening) × taper
    contraction: float  # ρ: the moving endocardium's radius relative to ED (1 at ED)
    thickening: float
    infarct_weight: np.ndarray  # how much of the infarct profile applies at each slice
    rv: np.ndarray  # (K, 3): RV centre offset, semi-axis towards the RV, semi-axis across
    papillary: np.ndarray  # (K,) papillary radius (0 where absent)


def phases(a: Anatomy, z: np.ndarray) -> dict[str, Phase]:
    """End-diastole and end-systole radii on the slices ``z`` (mm), with the ES contraction solved so that
    the labelled LV volume has the patient's target ejection fraction."""
    length_epi = a.length + a.apex_wall
    ed_endo = a.radius * _taper(z, a.length)
    ed_epi_taper = _taper(z, length_epi)
    depth = np.clip(z / length_epi, 0, 1)
    infarct = np.clip((depth - a.infarct[3]) / 0.15, 0.0, 1.0) if a.infarct[2] else np.zeros_like(z)
    es_length = a.length * a.shortening
    es_base = a.length - es_length
    es_endo = a.radius * _taper(z - es_base, es_length)
    es_epi_taper = _taper(z - es_base, es_length + a.apex_wall * 1.15)
    # ESV(ρ) = Σ ∫ ½ (fixed + ρ moving)² dθ: solve ESV = (1 - EF) EDV for ρ (positive root).
    edv = sum(_profile_area(a, ed_endo, ed_endo, np.zeros_like(z)))
    qa, qb, qc = _profile_area(a, ed_endo, es_endo, infarct)
    qc -= (1.0 - a.ef) * edv
    rho = (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    # wall thickening at the base from conserved myocardial volume, (E² - R²) √L constant (√L rather than L:
    # the stack is fixed while the base descends, so the labelled myocardium keeps about its ED volume)
    r_ed, e_ed = a.radius, a.radius + a.wall
    r_es = a.radius * rho
    e_es = np.sqrt(r_es ** 2 + (e_ed ** 2 - r_ed ** 2) * np.sqrt(length_epi / (es_length + a.apex_wall * 1.15)))
    thickening = float((e_es - r_es) / a.wall)

    def rv(epi_radius, taper_len, scale):
        delta, au, av, _, _ = a.rv
        rv_taper = _taper(taper_len[0], taper_len[1], RV_TAPER)
        return np.stack([delta * epi_radius, au * scale * epi_radius * rv_taper,
                         av * np.sqrt(scale) * epi_radius * rv_taper], axis=1)

    rv_scale = np.sqrt((1.0 - a.rv_ef) / 0.9)
    pap_ed = a.papillary[0] * np.clip(np.sin(np.pi * (z / a.length - 0.2) / 0.6), 0, None)
    ed = Phase(ed_endo, ed_endo, ed_epi_taper, ed_epi_taper, 1.0, 1.0, infarct,
               rv(ed_epi_taper * e_ed, (z, a.length * a.rv[3]), 1.0), pap_ed)
    es = Phase(ed_endo, es_endo * rho, ed_epi_taper, es_epi_taper, float(rho), thickening, infarct,
               rv(es_epi_taper * e_es, (z - es_base, es_length * a.rv[3]), rv_scale), pap_ed * 1.2)
    return {"ED": ed, "ES": es}


@lru_cache(maxsize=16)
def _interpolation(fine: int, coarse: int) -> np.ndarray:
    """``(fine, coarse)`` float32 matrix of linear interpolation from ``coarse`` evenly spread samples."""
    positions = np.linspace(0.0, coarse - 1.0, fine)
    return np.maximum(1.0 - np.abs(positions[:, None] - np.arange(coarse)[None]), 0.0).astype(np.float32)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], cell: int, *,
                 density: float | None = None) -> np.ndarray:
    """A ``(K, H, W)`` float32 field drawn on a grid of about ``cell`` pixels and linearly interpolated in
    plane: standard normal values, or (with ``density``) sparse unit spikes, i.e. small blobs."""
    k, h, w = shape
    coarse = (k, h // cell + 2, w // cell + 2)
    if density is None:
        low = rng.standard_normal(coarse, dtype=np.float32)
    else:
        low = (rng.random(coarse, dtype=np.float32) < density).astype(np.float32)
    return _interpolation(h, coarse[1]) @ low @ _interpolation(w, coarse[2]).T


def _soft(d: np.ndarray, pixel: float) -> np.ndarray:
    """Anti-aliased membership of ``d < 0`` (a one-pixel ramp), float32 like ``d``."""
    m = d * np.float32(-1.0 / pixel)
    m += np.float32(0.5)
    return np.clip(m, 0.0, 1.0, out=m)


def _paint(image: np.ndarray, d: np.ndarray, value: float, pixel: float) -> None:
    """Blend ``value`` into ``image`` (in place) where ``d < 0``."""
    delta = np.float32(value) - image
    delta *= _soft(d, pixel)
    image += delta


def _ellipse(x, y, cx, cy, ax, ay):
    """Approximate signed distance (mm) to an axis-aligned ellipse: (q² - 1) / |∇ q²|."""
    u, v = (x - cx) / ax, (y - cy) / ay
    f = u * u + v * v - 1
    return f / np.maximum(2 * np.hypot(u / ax, v / ay), np.float32(1e-6))


def _col(values) -> np.ndarray:
    """Per-slice scalars ``(K,)`` as a float32 ``(K, 1, 1)`` column that broadcasts over the slice."""
    return np.asarray(values, np.float32)[:, None, None]


class Renderer:
    """Draws one patient on a ``(K, H, W)`` grid; the thorax is computed once and shared by ED and ES.

    The heart is computed only inside a window that holds it at both phases (about half the pixels).
    """

    def __init__(self, anatomy: Anatomy, z: np.ndarray, *, rows: int, cols: int, pixel: float):
        a = self.anatomy = anatomy
        self.z, self.pixel, self.shape = z, pixel, (z.size, rows, cols)
        self._cos, self._sin = math.cos(a.rotation), math.sin(a.rotation)
        xs = (np.arange(cols, dtype=np.float32) - (cols - 1) / 2) * np.float32(pixel)
        ys = (np.arange(rows, dtype=np.float32) - (rows - 1) / 2) * np.float32(pixel)
        self.x = self._cos * xs[None] - self._sin * ys[:, None]
        self.y = self._sin * xs[None] + self._cos * ys[:, None]
        self.phases = phases(a, z)
        self.window = self._heart_window()
        self.angles = _Angles(a, self.x[self.window], self.y[self.window], z)

    def _heart_window(self) -> tuple[slice, slice]:
        """Rows and columns that hold the heart, its fat and the anti-aliasing ramp at every slice and phase."""
        a = self.anatomy
        z = self.z - self.z.mean()
        cx, cy = a.centre[0] + a.tilt[0] * z, a.centre[1] + a.tilt[1] * z
        reach = a.radius * (1 + a.shape[0] + a.shape[2]) + (a.wall + a.septal[0]) * 2.0
        margin = a.fat[0] + 2.3 * a.fat[1] + a.fat[2] + 6.0 + 3 * self.pixel
        boxes = []
        for p in self.phases.values():
            ca, sa = math.cos(a.rv[4]), math.sin(a.rv[4])
            rcx, rcy = cx + p.rv[:, 0] * ca, cy + p.rv[:, 0] * sa
            hx = np.hypot(p.rv[:, 1] * ca, p.rv[:, 2] * sa)
            hy = np.hypot(p.rv[:, 1] * sa, p.rv[:, 2] * ca)
            boxes += [cx - reach, cx + reach, rcx - hx, rcx + hx], [cy - reach, cy + reach, rcy - hy, rcy + hy]
        xs = np.concatenate(boxes[0::2])
        ys = np.concatenate(boxes[1::2])
        x0, x1, y0, y1 = xs.min() - margin, xs.max() + margin, ys.min() - margin, ys.max() + margin
        corners = np.array([[x0, y0], [x0, y1], [x1, y0], [x1, y1]])
        # back from the rotated anatomy frame to pixel columns and rows
        cols = (self._cos * corners[:, 0] + self._sin * corners[:, 1]) / self.pixel + (self.shape[2] - 1) / 2
        rows = (-self._sin * corners[:, 0] + self._cos * corners[:, 1]) / self.pixel + (self.shape[1] - 1) / 2
        r0, r1 = max(int(np.floor(rows.min())), 0), min(int(np.ceil(rows.max())) + 1, self.shape[1])
        c0, c1 = max(int(np.floor(cols.min())), 0), min(int(np.ceil(cols.max())) + 1, self.shape[2])
        return slice(r0, max(r1, r0 + 1)), slice(c0, max(c1, c0 + 1))

    def thorax(self, values: dict, rng: np.random.Generator) -> np.ndarray:
        """``(K, H, W)`` signal of everything but the heart: body, fat, chest wall, lungs with their vessels,
        posterior mediastinum, spine, descending aorta and the liver rising into the apical slices."""
        a, x, y, px = self.anatomy, self.x, self.y, self.pixel
        lateral, ap, subcut, muscle = a.body
        img = np.zeros(x.shape, np.float32)
        lung = np.zeros(x.shape, np.float32)  # how much of each pixel is still lung

        def paint(d, tissue):
            _paint(img, d, values[tissue], px)
            lung[...] = _soft(d, px) if tissue == "lung" else lung * (1.0 - _soft(d, px))

        body_cy, inner, (sx, sy) = ap - 70.0, subcut + muscle, a.spine
        paint(_ellipse(x, y, 0.0, body_cy, lateral, ap), "fat")
        paint(_ellipse(x, y, 0.0, body_cy, lateral - subcut, ap - subcut), "muscle")
        paint(_ellipse(x, y, 0.0, body_cy, lateral - inner, ap - inner), "lung")
        for angle in (-0.42, -0.8, -1.15, -1.57, -1.99, -2.34, -2.72):  # sternum (top centre) and ribs
            bx = (lateral - subcut - muscle / 2) * math.cos(angle) - 8.0
            by = body_cy + (ap - subcut - muscle / 2) * math.sin(angle)
            size = (14.0, 5.0) if angle == -1.57 else (6.5, 4.5)
            paint(_ellipse(x, y, bx, by, *size), "bone")
            paint(_ellipse(x, y, bx, by, size[0] - 2.0, size[1] - 2.0), "marrow")
        paint(_ellipse(x, y, sx + 5, sy - 25, 32.0, 24.0), "soft")  # posterior mediastinum
        paint(_ellipse(x, y, sx, sy + 22, 48.0, 26.0), "muscle")  # paraspinal muscles
        paint(np.hypot(x - sx, y - sy) - 17.0, "bone")
        paint(np.hypot(x - sx, y - sy) - 15.0, "marrow")
        paint(np.hypot(x - sx, y - sy - 26.0) - 6.5, "csf")
        paint(np.hypot(x - sx - 24.0, y - sy + 28.0) - 11.0, "blood")  # descending aorta
        img = np.repeat(img[None], self.z.size, axis=0)
        depth = np.clip(self.z / (a.length + a.apex_wall), 0, 1)
        grow = _col(np.clip(1.4 * depth - 0.25, 0.02, 1.0))  # the liver rises into the apical slices
        d_liver = _ellipse(x, y, a.liver[0], a.liver[1] + 40 * (1 - grow), 70 * grow, 45 * grow)
        _paint(img, d_liver, values["liver"], px)
        vessels = smooth_field(rng, img.shape, 3, density=0.025)
        vessels *= lung * (1.0 - _soft(d_liver, px))
        img += vessels * np.float32(0.3 * values["blood"] - values["lung"])
        return img

    def heart(self, phase: str, thorax: np.ndarray, values: dict) -> tuple[np.ndarray, np.ndarray]:
        """Paint the heart of ``phase`` over the thorax: ``(image float32, label uint8)``, both ``(K, H, W)``."""
        a, g, p, px = self.anatomy, self.angles, self.phases[phase], self.pixel
        endo = _col(p.endo) * g.shape
        thickness = g.thickness
        if g.infarct is not None:  # the scar is thin at both phases and akinetic: at ES it keeps its ED place
            w = g.infarct * _col(p.infarct_weight)
            thickness = g.thickness - (g.thickness - a.infarct[0]) * w
        epi = (a.radius * p.contraction * g.shape + thickness * p.thickening) * _col(p.epi)
        if g.infarct is not None and phase == "ES":
            endo += (_col(p.endo_fixed) * g.shape - endo) * w
            epi += ((a.radius * g.shape + thickness) * _col(p.epi_fixed) - epi) * w
        d_endo, d_epi = g.r - endo, g.r - epi
        # the RV in a frame turned towards it: u along the LV → RV direction
        ca, sa = math.cos(a.rv[4]), math.sin(a.rv[4])
        u = g.dx * ca + g.dy * sa
        v = g.dy * ca - g.dx * sa
        rv = np.maximum(p.rv, 1e-2)
        d_rv = _ellipse(u, v, _col(rv[:, 0]), 0.0, _col(rv[:, 1]), _col(rv[:, 2]))
        d_rv_wall = d_rv - 3.0
        envelope = np.minimum(d_epi, d_rv_wall)
        envelope -= g.fat + a.fat[2] * _col(np.clip(self.z / (a.length + a.apex_wall), 0, 1))
        image = thorax.copy()
        img = image[:, self.window[0], self.window[1]]  # a view: painting it paints the image
        _paint(img, envelope - 1.0, values["pericardium"], px)
        _paint(img, envelope, values["fat"], px)
        _paint(img, d_rv_wall, values["myo"], px)
        _paint(img, d_epi, values["myo"], px)
        _paint(img, np.maximum(d_rv, -d_epi), values["blood"], px)
        _paint(img, d_endo, values["blood"], px)
        self._papillaries(img, p, values["myo"])
        self._trabeculae(img, d_endo, values["myo"])
        wall = d_epi < 0
        crop = wall.view(np.uint8) * np.uint8(2) - (d_endo < 0).view(np.uint8)
        crop += ((d_rv < 0) & ~wall).view(np.uint8) * np.uint8(3)
        label = np.zeros(self.shape, np.uint8)
        label[:, self.window[0], self.window[1]] = crop
        return image, label

    def _papillaries(self, img: np.ndarray, p: Phase, dark: float) -> None:
        """Two dark papillary muscles against the wall (inside the LV label), on the slices that have them."""
        g = self.angles
        present = np.flatnonzero(p.papillary > 0.5)
        if present.size == 0:
            return
        ks = slice(present[0], present[-1] + 1)
        radius = _col(p.papillary[ks])
        reach = _col(p.endo[ks]) - 1.1 * radius
        for angle in self.anatomy.papillary[1:]:
            d = np.hypot(g.dx[ks] - math.cos(angle) * reach, g.dy[ks] - math.sin(angle) * reach) - radius
            _paint(img[ks], d, dark, self.pixel)

    def _trabeculae(self, img: np.ndarray, d_endo: np.ndarray, dark: float) -> None:
        """Dark trabecular fingers in the outer few mm of the blood pool, deeper towards the apex."""
        a = self.anatomy
        reach = _col(1.0 + a.trabeculae[2] * np.clip(self.z / a.length, 0, 1))
        inside = np.clip(1.0 + d_endo / reach, 0.0, 1.0)
        inside *= d_endo < 0
        inside *= self.angles.trabecular
        img -= (img - np.float32(dark)) * (0.8 * inside)
