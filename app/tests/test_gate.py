"""The agreement gate (segserve.gate) on constructed logits, where what must pass and what
must fail is known exactly, and on real OpenVINO bfloat16 where this CPU has it."""

from __future__ import annotations

import numpy as np
import pytest

from segserve import gate

# Two photos of different aspect ratios, at a small input size: the gate's own loop.
SIZE = 48


def _images():
    from segserve.convert import equivalence_images

    return equivalence_images()[:2]


def _reference(batch):
    """Deterministic logits with a known margin structure: class 0 leads everywhere, by a
    margin that grows from 0.001 at the left edge to 3 at the right one."""
    _, _, h, w = batch.shape
    logits = np.zeros((1, 21, h, w), dtype=np.float32)
    logits[0, 1] = 1.0
    logits[0, 0] = 1.0 + np.linspace(0.001, 3.0, w, dtype=np.float32)[None, :]
    return logits


def _run(candidate, precision="bf16", **kw):
    return gate.evaluate(
        _reference,
        candidate,
        precision=precision,
        depth=66,
        input_size=SIZE,
        images=_images(),
        **kw,
    )


def test_bound_is_the_stated_formula():
    logits = np.full((1, 2, 4, 4), 3.0, dtype=np.float32)  # rms 3
    u32, u16 = 2.0**-24, 2.0**-8
    assert gate.rounding_bound("fp32", 66, logits) == pytest.approx(
        2 * (66 * u32 + 66**0.5 * u32) * 3
    )
    assert gate.rounding_bound("bf16", 66, logits) == pytest.approx(
        2 * (66 * u32 + 66**0.5 * u16) * 3
    )
    # bf16's bound is about 0.48 of the logits' scale here: 2 * sqrt(66) / 256 * 3.
    assert gate.rounding_bound("bf16", 66, logits) == pytest.approx(0.1905, abs=1e-3)


def test_the_reference_itself_passes():
    result = _run(_reference)
    assert result.passes and result.pixel_agreement == 1.0 and result.decided_flips == 0


def test_swapped_classes_fail_on_decided_pixels():
    """A wrong graph: the leading class changes where the margin is wide."""

    def swapped(batch):
        logits = _reference(batch)
        logits[:, [0, 1]] = logits[:, [1, 0]]
        return logits

    result = _run(swapped)
    assert not result.passes
    assert result.decided_flips > 0
    assert "decided pixels changed class" in result.failures()[0]


def test_ties_may_flip_but_only_up_to_the_share():
    """Flips where the margin is inside the bound are ties at this precision: allowed, but at
    most max_flip_share of any image."""

    def tie_breaker(batch):
        logits = _reference(batch)
        ref = _reference(batch)
        margin = ref[0, 0] - ref[0, 1]
        bound = gate.rounding_bound("bf16", 66, ref)
        # Flip the undecided pixels only: those whose margin is within the bound.
        ties = margin <= bound
        logits[0, 1][ties] = logits[0, 0][ties] + 1e-3
        return logits

    strict = _run(tie_breaker)
    assert strict.decided_flips == 0
    share = 1.0 - strict.min_image_agreement
    assert 0.01 < share < 0.2  # the constructed margins make one column in 48 (2%) ties
    assert not strict.passes and "of their pixels changed" in strict.failures()[0]
    assert _run(tie_breaker, max_flip_share=0.2).passes
    # At float32 the same flips are on decided pixels: a float32 candidate may not do this.
    assert _run(tie_breaker, precision="fp32", max_flip_share=0.2).decided_flips > 0


def test_unknown_precision_is_refused():
    with pytest.raises(ValueError, match="unknown precision"):
        _run(_reference, precision="int4")
