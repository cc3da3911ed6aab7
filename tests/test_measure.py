"""hpdm_cli.eval.measure: the pixel measurements of many clips, in worker processes, are the serial ones."""

import json
from functools import partial

import numpy as np
import pytest

from hpdm_cli.drivers.evaluate import render_real
from hpdm_cli.eval import measure
from hpdm_cli.eval.faithfulness import read_clip
from hpdm_cli.eval.seams import seam_steps, seam_summary
from hpdm_cli.eval.texture import stripe_fit, stripe_summary

TILE = (4, 8, 8)


def same(readings, others) -> bool:
    """Readings equal field by field, NaN equal to NaN (a NaN that went through a pipe is another object)."""
    return [json.dumps(r.as_dict()) for r in readings] == [json.dumps(r.as_dict()) for r in others]


@pytest.fixture(scope="module")
def clips():
    """32 real `shapes` clips of 8x32x32 and a flat one (no object, no measurable stripes) among them."""
    videos = list(render_real(32, 0, (8, 32, 32), "heldout").videos)
    videos[5] = np.full_like(videos[5], 128)
    return videos


def test_measures_are_each_clips_own_readings_in_order(clips):
    got = measure.measure_clips(clips, TILE, workers=1)
    assert same(got.readings, [read_clip(c) for c in clips])
    np.testing.assert_array_equal(got.stripes, [stripe_fit(c) for c in clips])
    assert got.seams == [seam_steps(c, TILE) for c in clips]
    assert got.stripe_summary() == stripe_summary(clips)
    assert got.seam_summary() == seam_summary(clips, TILE)
    assert not got.readings[5].valid and got.readings[0].valid


def test_worker_processes_give_the_serial_result(clips):
    one = partial(measure.measure_clip, tile=TILE)
    pooled = measure._in_pool(one, clips, 2)           # the pool itself, not a silent fallback to the serial loop
    assert pooled is not None
    assert same([p[0] for p in pooled], [read_clip(c) for c in clips])
    got = measure.measure_clips(clips, TILE, workers=2)
    serial = measure.measure_clips(clips, TILE, workers=1)
    assert same(got.readings, serial.readings)
    np.testing.assert_array_equal([[s[k] for k in s] for s in got.seams], [[s[k] for k in s] for s in serial.seams])
    np.testing.assert_array_equal(got.stripes, serial.stripes)


def test_worker_count_is_checked_and_capped_by_the_clips():
    with pytest.raises(ValueError, match="workers = 0: expected at least 1"):
        measure.measure_clips([], TILE, workers=0)
    from hpdm_cli.device import available_cpus
    assert available_cpus() >= 1
    # fewer than CLIPS_PER_WORKER clips a worker: measured in this process (no pool to start)
    started = []
    orig = measure._in_pool
    measure._in_pool = lambda *a: started.append(a) or orig(*a)
    try:
        clip = np.zeros((4, 16, 16, 3), np.uint8)
        assert len(measure.measure_clips([clip] * 3, TILE, workers=8).readings) == 3
    finally:
        measure._in_pool = orig
    assert started == []
