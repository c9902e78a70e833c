"""Blocks and results that cross processes are computed on exactly as at home: distributed's comms can
hand arrays back misaligned, and pickle turns a column-major row slice into a row-major copy; numpy
and BLAS round some products of such arrays differently, which broke threaded == distributed on an
AVX-512 machine (tests/test_robust_did_invariance.py::test_threaded_equals_distributed)."""
from __future__ import annotations

import dataclasses
import warnings

import dask
import numpy as np
import pytest
from distributed.protocol import deserialize, serialize

import dte_dask
import dte_dask.estimators.imputation as imputation
from dte_dask.core.aligned import aligned, keep_order
from dte_dask.core.within import gram_stats
from dte_dask.graph.regress import _piece


def _misaligned(a: np.ndarray, offset: int = 3) -> np.ndarray:
    buf = bytearray(a.nbytes + offset)
    out = np.frombuffer(memoryview(buf)[offset:], dtype=a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _shifted_roundtrip(obj):
    """``obj`` through distributed's serialization, every frame received at an odd address (as
    frames packed into one read buffer can be)."""
    header, frames = serialize(obj)
    moved = []
    for f in frames:
        raw = bytes(f)
        buf = bytearray(len(raw) + 3)
        buf[3:] = raw
        moved.append(memoryview(buf)[3:])
    return deserialize(header, moved)


@dataclasses.dataclass(frozen=True)
class _Box:
    a: np.ndarray
    rest: tuple


def test_aligned_copies_only_misaligned_arrays_in_nested_containers():
    x = np.arange(12.0).reshape(3, 4)
    bad = _misaligned(x)
    assert not bad.flags.aligned
    obj = {"k": [bad, x], "box": _Box(bad, (x, bad)), "n": 3}
    out = aligned(obj)
    for arr in (out["k"][0], out["box"].a, out["box"].rest[1]):
        assert arr.flags.aligned
        np.testing.assert_array_equal(arr, x)
    assert out["k"][1] is x and out["box"].rest[0] is x and out["n"] == 3
    assert obj["box"].a is bad  # the input is left alone
    clean = {"k": [x], "box": _Box(x, (x,))}
    assert aligned(clean) is clean


def test_keep_order_copies_a_column_major_row_slice_column_major():
    y = np.asfortranarray(np.arange(40.0).reshape(10, 4))
    view = y[2:7]
    assert not (view.flags.c_contiguous or view.flags.f_contiguous)
    kept = keep_order(view)
    assert kept.flags.f_contiguous and not kept.flags.c_contiguous
    np.testing.assert_array_equal(kept, view)
    assert keep_order(y) is y


@pytest.fixture(scope="module")
def panel():
    df = dte_dask.simulate_panel(600, 7, seed=4, unbalanced_share=0.15).data.compute(scheduler="sync")
    df["x1"] = df["bmi"] * np.cos(df["time"]) + np.random.default_rng(1).normal(size=len(df))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dte_dask.load_panel(df, unit="unit", time="time", outcome="y", group="group", covariates=["x1"],
                                   npartitions=4, rng_block_size=32, allow_unbalanced_panel=True)


def test_a_block_received_misaligned_gives_the_same_sums(panel):
    spec, _ = imputation._untreated_design(panel, [0], 0)
    blocks = dask.compute(*panel.blocks, scheduler="sync")
    assert any(not b.y.flags.c_contiguous for b in blocks)  # row slices of a column-major pivot
    for blk in blocks:
        moved = _shifted_roundtrip(blk)
        for name in ("ids", "rank", "g", "w", "y", "x"):
            a, b = getattr(blk, name), getattr(moved, name)
            assert b.flags.aligned, name
            np.testing.assert_array_equal(a, b)
            assert (a.strides[0] <= a.strides[-1]) == (b.strides[0] <= b.strides[-1]), name  # same memory order
        here = _piece(blk, 0, 10**9, gram_stats, 32, panel.n_rng_blocks, spec)
        there = _piece(moved, 0, 10**9, gram_stats, 32, panel.n_rng_blocks, spec)
        assert here.nodes.keys() == there.nodes.keys()
        for key, val in here.nodes.items():
            for k in val:
                np.testing.assert_array_equal(val[k], there.nodes[key][k], err_msg=f"{key} {k}")
