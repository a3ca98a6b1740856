"""benchmarks/paired.py: paired seed differences, checked against the closed form of Student's t."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_three_seeds_match_the_closed_form_of_t_with_two_degrees_of_freedom():
    from paired import describe, paired, significant

    s = paired([0.01, 0.02, 0.03])
    t = 0.02 / (0.01 / math.sqrt(3))
    # For 2 degrees of freedom the two-sided p value is 1 - t / sqrt(2 + t^2).
    assert s["t"] == pytest.approx(t)
    assert s["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert not significant(s)
    assert describe(s) == "+0.0200 ± 0.0100, t(2) = 3.46, p = 0.074"


def test_consistent_large_gaps_are_significant_and_signs_are_kept():
    from paired import paired, significant

    s = paired([-0.030, -0.031, -0.029])
    assert s["mean"] < 0 and s["t"] < 0 and significant(s)


def test_one_seed_or_identical_gaps_give_no_test():
    from paired import describe, paired

    assert paired([0.01])["t"] is None and describe(paired([0.01])) == "+0.0100"
    assert paired([0.01, 0.01])["p"] is None
    with pytest.raises(ValueError):
        paired([])
