"""Seeded generator of vibration-like accelerometer windows.

One window is WINDOW = 64 samples of acceleration (in g) sampled at
FS = 1024 Hz (62.5 ms), from a rotating machine whose shaft turns at f0.

normal
    x(t) = sum_k a_k sin(2 pi k f0 t + phi_k)    k = 1, 2, 3 (shaft harmonics)
         + a_m sin(2 pi 7 f0 t + phi_m)           (7-tooth gear mesh)
         + gaussian noise
    f0 ~ U(45, 55) Hz, a_1 ~ U(0.8, 1.2), a_2 ~ U(0.2, 0.4), a_3 ~ U(0.05, 0.15),
    a_m ~ U(0.05, 0.1), phases ~ U(0, 2 pi), noise sigma ~ U(0.03, 0.06).

anomalies: a normal window with one fault added
    bearing_fault    decaying resonance impulses (ring frequency ~ U(250, 350) Hz,
                     decay 4 ms, amplitude ~ U(0.6, 1.2)) repeating at a defect
                     frequency ~ U(3.0, 3.6) x f0 (outer-race-like), random start.
    frequency_shift  the machine runs off its speed band: f0 ~ U(30, 38) or U(62, 75) Hz.
    amplitude_burst  a broadband burst (rub/impact): gaussian noise with peak sigma
                     ~ U(0.5, 1.0) under a gaussian envelope of 2-4 ms width,
                     centred anywhere in the window.
    imbalance        the 1x component grows: a_1 ~ U(2.0, 3.0).

Everything is drawn from a numpy Generator seeded by the caller, so a seed
gives the same windows on every machine (numpy's PCG64 and its normal and
uniform samplers are stable across platforms).
"""

from __future__ import annotations

import numpy as np

FS = 1024.0
WINDOW = 64
ANOMALY_KINDS = ("bearing_fault", "frequency_shift", "amplitude_burst", "imbalance")

_T = np.arange(WINDOW) / FS


def _machine(rng: np.random.Generator, f0: float, a1: float) -> np.ndarray:
    a = [a1, rng.uniform(0.2, 0.4), rng.uniform(0.05, 0.15)]
    x = np.zeros(WINDOW)
    for k, ak in enumerate(a, start=1):
        x += ak * np.sin(2 * np.pi * k * f0 * _T + rng.uniform(0, 2 * np.pi))
    x += rng.uniform(0.05, 0.1) * np.sin(2 * np.pi * 7 * f0 * _T + rng.uniform(0, 2 * np.pi))
    x += rng.normal(0.0, rng.uniform(0.03, 0.06), WINDOW)
    return x


def normal_window(rng: np.random.Generator) -> np.ndarray:
    return _machine(rng, rng.uniform(45, 55), rng.uniform(0.8, 1.2)).astype(np.float32)


def anomaly_window(rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "frequency_shift":
        f0 = rng.uniform(30, 38) if rng.random() < 0.5 else rng.uniform(62, 75)
        return _machine(rng, f0, rng.uniform(0.8, 1.2)).astype(np.float32)
    if kind == "imbalance":
        return _machine(rng, rng.uniform(45, 55), rng.uniform(2.0, 3.0)).astype(np.float32)
    f0 = rng.uniform(45, 55)
    x = _machine(rng, f0, rng.uniform(0.8, 1.2))
    if kind == "bearing_fault":
        fd = rng.uniform(3.0, 3.6) * f0
        fr = rng.uniform(250, 350)
        amp = rng.uniform(0.6, 1.2)
        start = rng.uniform(0, 1 / fd)
        for t0 in np.arange(start, _T[-1], 1 / fd):
            dt = _T - t0
            on = dt >= 0
            x[on] += amp * np.exp(-dt[on] / 0.004) * np.sin(2 * np.pi * fr * dt[on])
    elif kind == "amplitude_burst":
        centre = rng.uniform(0, _T[-1])
        width = rng.uniform(0.002, 0.004)
        env = np.exp(-0.5 * ((_T - centre) / width) ** 2)
        x += rng.uniform(0.5, 1.0) * env * rng.normal(0.0, 1.0, WINDOW)
    else:
        raise ValueError(f"unknown anomaly kind {kind!r}; known: {', '.join(ANOMALY_KINDS)}")
    return x.astype(np.float32)


def normal_set(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.stack([normal_window(rng) for _ in range(n)])


def anomaly_set(seed: int, n_per_kind: int) -> tuple[np.ndarray, list[str]]:
    """n_per_kind windows of every kind, kinds interleaved; returns (windows, kinds)."""
    rng = np.random.default_rng(seed)
    kinds = [k for _ in range(n_per_kind) for k in ANOMALY_KINDS]
    return np.stack([anomaly_window(rng, k) for k in kinds]), kinds
