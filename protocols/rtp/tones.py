"""Tones and their detection: what the voicemail prompts are made of, and how
tests and the benchmark check what was heard (Goertzel algorithm)."""

from __future__ import annotations

import array
import math
from collections.abc import Sequence

__all__ = ["DTMF_FREQUENCIES", "dtmf_tone", "goertzel_power", "silence", "tone", "tone_share"]

RATE = 8000

#: (low, high) frequency pair of each key (ITU-T Q.23)
DTMF_FREQUENCIES = {
    "1": (697, 1209), "2": (697, 1336), "3": (697, 1477), "A": (697, 1633),
    "4": (770, 1209), "5": (770, 1336), "6": (770, 1477), "B": (770, 1633),
    "7": (852, 1209), "8": (852, 1336), "9": (852, 1477), "C": (852, 1633),
    "*": (941, 1209), "0": (941, 1336), "#": (941, 1477), "D": (941, 1633),
}


def tone(freqs: Sequence[float], ms: int, *, amplitude: int = 8000,
         rate: int = RATE, phase: int = 0) -> array.array[int]:
    """``ms`` milliseconds of the sum of ``freqs`` (each at ``amplitude``/len)."""
    n = rate * ms // 1000
    each = amplitude / max(len(freqs), 1)
    steps = [2 * math.pi * f / rate for f in freqs]
    return array.array("h", (
        int(sum(each * math.sin(w * (i + phase)) for w in steps)) for i in range(n)))


def silence(ms: int, rate: int = RATE) -> array.array[int]:
    return array.array("h", bytes(2 * (rate * ms // 1000)))


def dtmf_tone(digit: str, ms: int = 100) -> array.array[int]:
    return tone(DTMF_FREQUENCIES[digit.upper()], ms)


def goertzel_power(samples: Sequence[int], freq: float, rate: int = RATE) -> float:
    """Power of ``freq`` in ``samples`` (Goertzel), comparable to the block energy."""
    coeff = 2 * math.cos(2 * math.pi * freq / rate)
    s1 = s2 = 0.0
    for x in samples:
        s0 = x + coeff * s1 - s2
        s2, s1 = s1, s0
    return s1 * s1 + s2 * s2 - coeff * s1 * s2


def tone_share(samples: Sequence[int], freq: float, rate: int = RATE) -> float:
    """The share (0..1) of the block's energy that is at ``freq``: near 1
    for a pure tone at that frequency, near 0 for others and noise."""
    n = len(samples)
    if n == 0:
        return 0.0
    energy = sum(x * x for x in samples)
    if energy == 0:
        return 0.0
    return min(1.0, 2 * goertzel_power(samples, freq, rate) / (n * energy))
