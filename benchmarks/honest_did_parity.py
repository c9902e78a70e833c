"""HonestDiD parity figures: ours vs moderndid's port of R HonestDiD, on mpdta and a simulated event study.

Prints, per data set: FLCI endpoint differences (smoothness), conditional / C-LF endpoint
differences against the grid step (smoothness; relative magnitudes restricted to moderndid's
pre-period differences, see tests/test_honest_did.py), and breakdown values on the grid.

    python benchmarks/honest_did_parity.py [--grid 100] [--only NAME]
"""
from __future__ import annotations

import argparse
import warnings
from dataclasses import replace

import numpy as np

import dte_dask
from dte_dask.sensitivity import event_study_inputs, honest_did
from dte_dask.sensitivity.intervals import robust_interval


def _breakdown(M, lb, ub):
    excl = (np.asarray(lb) > 0) | (np.asarray(ub) < 0)
    ok = np.cumprod(excl).astype(bool)
    return float(np.asarray(M)[ok][-1]) if ok.any() else float("nan")


def run(name, inputs, grid, event_time_idx=0, only=""):
    import moderndid.didhonest as mh

    if only not in name:
        return
    b, S, _, npre, npost = inputs
    raw = dict(betahat=b, sigma=S, num_pre_periods=npre, num_post_periods=npost)
    l_vec = np.eye(npost)[event_time_idx]
    sd = float(np.sqrt(S[npre + event_time_idx, npre + event_time_idx]))
    Msd = list(np.round(np.array([0.0, 0.5, 1.0, 2.0]) * sd, 6))
    ours = honest_did(**raw, restriction="smoothness", M=Msd[1:], l_vec=l_vec)
    ref = mh.create_sensitivity_results_sm(b, S, npre, npost, method="FLCI", m_vec=Msd[1:], l_vec=l_vec)
    d = max(np.max(np.abs(ours.lb - ref["lb"].to_numpy())), np.max(np.abs(ours.ub - ref["ub"].to_numpy())))
    print(f"{name}: FLCI (M = {Msd[1:]}): max |endpoint difference| = {d:.2e}")
    for method in ("Conditional", "C-LF"):
        ours = honest_did(**raw, restriction="smoothness", method=method, M=Msd, l_vec=l_vec, grid_points=grid)
        ref = mh.create_sensitivity_results_sm(b, S, npre, npost, method=method, m_vec=Msd, l_vec=l_vec,
                                               grid_points=grid)
        d = np.maximum(np.abs(ours.lb - ref["lb"].to_numpy()), np.abs(ours.ub - ref["ub"].to_numpy()))
        print(f"{name}: smoothness {method}, {grid} grid points: max |diff| = {d.max():.2e}, "
              f"grid step {ours.grid_step.max():.2e} (diff / step = {np.max(d / ours.grid_step):.2f}); "
              f"breakdown ours {ours.breakdown:.4g}, moderndid {_breakdown(Msd, ref['lb'], ref['ub']):.4g}")
    Mrm = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
    for method in ("Conditional", "C-LF"):
        full = honest_did(**raw, restriction="relative_magnitude", method=method, M=Mrm, l_vec=l_vec,
                          grid_points=grid)
        p = replace(full.problem, pre_diffs=tuple(range(1, npre)))
        ivs = [robust_interval(p, m, method) for m in Mrm]
        ref = mh.create_sensitivity_results_rm(b, S, npre, npost, method=method, m_bar_vec=Mrm, l_vec=l_vec,
                                               grid_points=grid)
        lb, ub = np.array([i.lb for i in ivs]), np.array([i.ub for i in ivs])
        step = np.array([i.step for i in ivs])
        d = np.maximum(np.abs(lb - ref["lb"].to_numpy()), np.abs(ub - ref["ub"].to_numpy()))
        print(f"{name}: relative magnitudes {method} (moderndid's pre-period differences), {grid} grid points: "
              f"max |diff| = {np.nanmax(d):.2e}, grid step {np.nanmax(step):.2e} "
              f"(diff / step = {np.nanmax(d / step):.2f}); breakdown Mbar: ours (same set) {_breakdown(Mrm, lb, ub):.4g}, "
              f"moderndid {_breakdown(Mrm, ref['lb'], ref['ub']):.4g}, ours (R HonestDiD's full set) {full.breakdown:.4g}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--grid", type=int, default=100)
    ap.add_argument("--only", default="", help="run the data sets whose name contains this text")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    mp = dte_dask.datasets.load_mpdta()
    cs = dte_dask.att_gt(mp, outcome="lemp", unit="countyreal", time="year", group="first_treat",
                         control_group="never_treated", base_period="universal", bootstrap=False)
    run("mpdta (att_gt dynamic, e = 0)", event_study_inputs(cs), args.grid, only=args.only)
    run("mpdta (att_gt dynamic, e = 3)", event_study_inputs(cs), args.grid, event_time_idx=3, only=args.only)
    df = dte_dask.simulate_panel(400, 8, seed=3).data.compute(scheduler="sync")
    es = dte_dask.event_study(df, outcome="y", unit="unit", time="time", group="group", window=(-4, 3),
                              bin_endpoints=False)
    run("simulated (event_study, e = 0)", event_study_inputs(es), args.grid, only=args.only)


if __name__ == "__main__":
    main()
