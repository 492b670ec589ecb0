"""The registry gate: floor first, then a margin over the champion."""
from pipeline.register import decide


def test_first_model_judged_on_floor_alone():
    d = decide(0.85, None, 0.8, 0.01)
    assert d.promote and d.label == "promoted" and "first model" in d.reason


def test_first_model_below_floor_is_challenger():
    d = decide(0.75, None, 0.8, 0.0)
    assert not d.promote and d.label == "challenger" and "floor" in d.reason


def test_better_by_margin_is_promoted():
    d = decide(0.91, 0.90, 0.8, 0.005)
    assert d.promote and "0.9000" in d.reason and "0.9100" in d.reason


def test_worse_is_challenger():
    assert not decide(0.88, 0.90, 0.8, 0.001).promote


def test_within_margin_is_challenger():
    assert not decide(0.9005, 0.90, 0.8, 0.001).promote


def test_exactly_the_margin_passes_despite_float_rounding():
    assert decide(0.801, 0.800, 0.5, 0.001).promote


def test_below_floor_loses_even_against_a_worse_champion():
    d = decide(0.70, 0.60, 0.8, 0.001)
    assert not d.promote and "floor" in d.reason
