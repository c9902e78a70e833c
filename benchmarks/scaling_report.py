"""Scaling study, presentation: the measurement table, the model's rows and checks, the plots and the
printed report."""
from __future__ import annotations

import json
from pathlib import Path

from scaling_common import COLORS, STEPS
from scaling_model import (
    contention,
    default_partitions,
    memory_projection,
    predict_step,
)


# ------------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    lines = ["| units | periods | workers x threads | step | seconds | peak MiB (all processes) | partitions |",
             "|---:|---:|---|---|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["periods"], r["units"], r["config"], r.get("partition_units") or 0,
                                         STEPS.index(r["step"]))):
        cfg = r["config"] + (f" (partitions of {r['partition_units']:,})" if r.get("partition_units") else "")
        if "error" in r:
            lines.append(f"| {r['units']:,} | {r['periods']} | {cfg} | {r['step']} | {r['error']} | | |")
            continue
        lines.append(f"| {r['units']:,} | {r['periods']} | {cfg} | {r['step']} | {r['seconds']:.2f} | "
                     f"{r['peak_mib']:.0f} | {r['partitions']} |")
    return "\n".join(lines)


def model_rows(rows, periods: int, cores_model=(16, 64, 256), units_list=None):
    """Predictions of every step for the model's cluster sizes (one core per worker)."""
    out = []
    sizes = units_list or sorted({r["units"] for r in rows if r["periods"] == periods})
    for units in sizes:
        for step in STEPS:
            for n in sorted({1, 2, 4, 8, 32, 128, *cores_model}):
                p_def = default_partitions(units)
                p_max = -(-units // 16384)
                p_n = min(max(n, p_def), p_max)
                t_def = predict_step(rows, step, periods, units, p_def, n, n)
                t_n = predict_step(rows, step, periods, units, p_n, n, n)
                if t_def is not None:
                    out.append({"units": units, "periods": periods, "step": step, "workers": n,
                                "partitions_default": p_def, "seconds_default": t_def,
                                "partitions_scaled": p_n, "seconds_scaled": t_n})
    return out


def checks(rows, periods_list):
    """Model vs measurement for every non-1x1 run (the model has seen only 1x1 runs)."""
    out = []
    for r in rows:
        if r["config"] == "1x1" or "error" in r:
            continue
        w, t = r["workers"], r["threads"]
        pred = predict_step(rows, r["step"], r["periods"], r["units"], r["partitions"], w * t, r["cores"])
        if pred is not None:
            out.append({**{k: r[k] for k in ("units", "periods", "config", "step", "partitions", "seconds")},
                        "partition_units": r.get("partition_units"), "predicted": pred})
    return out


def plots(rows, model, chk, img: Path, command: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    written = []
    ok = [r for r in rows if "error" not in r and not r.get("partition_units")]
    configs = sorted({r["config"] for r in ok})
    t24 = [r for r in ok if r["periods"] == 24]
    for what, fname, ylabel in (("seconds", "scaling_time.png", "seconds"),
                                ("peak_mib", "scaling_memory.png", "peak RSS, all processes (MiB)")):
        fig, axes = plt.subplots(1, len(STEPS), figsize=(4 * len(STEPS), 3.6), sharey=(what == "peak_mib"))
        for ax, step in zip(axes, STEPS):
            for i, cfg in enumerate(configs):
                pts = sorted((r["units"], r[what]) for r in t24 if r["step"] == step and r["config"] == cfg)
                if pts:
                    ax.plot(*zip(*pts), ("-o", "--s", ":^", "-.v")[i % 4], color=f"C{i}",
                            label=f"{cfg} (workers x threads)")
                big = [r for r in ok if r["periods"] != 24 and r["step"] == step and r["config"] == cfg]
                for r in big:
                    ax.plot([r["units"]], [r[what]], "*", color=f"C{i}", ms=11,
                            label=f"{r['units']:.0e} units x {r['periods']} periods, {cfg}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(step)
            ax.set_xlabel("units (24 periods; stars: 10 periods)")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel(ylabel)
        axes[0].legend(fontsize=7)
        fig.suptitle(f"dte_dask scaling on this machine: {ylabel} vs panel size", fontsize=11)
        fig.text(0.01, 0.005, command, fontsize=7, family="monospace")
        fig.tight_layout(rect=(0, 0.06, 1, 0.95))
        fig.savefig(img / fname, dpi=110)
        plt.close(fig)
        written.append(img / fname)

    if model:
        units = max(m["units"] for m in model if m["periods"] == 24)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
        ax = axes[0]
        for step, c in COLORS.items():
            ms = sorted((m for m in model if m["units"] == units and m["step"] == step), key=lambda m: m["workers"])
            ax.plot([m["workers"] for m in ms], [m["seconds_scaled"] for m in ms], "-o", color=c,
                    label=f"{step}, npartitions = workers")
            ax.plot([m["workers"] for m in ms], [m["seconds_default"] for m in ms], ":", color=c)
        meas = [r for r in ok if r["units"] == units and r["periods"] == 24 and r["threads"] == 1]
        for r in meas:
            ax.plot([r["workers"]], [r["seconds"]], "kx", ms=8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("workers (1 core each)")
        ax.set_ylabel("seconds")
        ax.set_title(f"model at {units:,} units x 24 (dotted: default partitions; x: measured)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        ax = axes[1]
        if chk:
            for r in chk:
                mk = "o" if not r.get("partition_units") else "s"
                ax.plot(r["seconds"], r["predicted"], mk, color=COLORS[r["step"]], alpha=0.8)
            lim = [min(min(r["seconds"], r["predicted"]) for r in chk) * 0.7,
                   max(max(r["seconds"], r["predicted"]) for r in chk) * 1.4]
            ax.plot(lim, lim, "k-", lw=0.8)
            ax.plot(lim, [x * 1.25 for x in lim], "k:", lw=0.6)
            ax.plot(lim, [x / 1.25 for x in lim], "k:", lw=0.6)
            ax.set_xscale("log")
            ax.set_yscale("log")
            for step in STEPS:
                ax.plot([], [], "o", color=COLORS[step], label=step)
            ax.plot([], [], "s", color="grey", label="squares: many small workers (oversubscribed)")
            ax.legend(fontsize=7)
        ax.set_xlabel("measured seconds (configs other than 1x1)")
        ax.set_ylabel("model seconds (from the 1x1 runs + kappa)")
        ax.set_title("model check (dotted: +-25%)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        fig.text(0.01, 0.005, command, fontsize=7, family="monospace")
        fig.tight_layout(rect=(0, 0.07, 1, 1))
        fig.savefig(img / "scaling_model.png", dpi=110)
        plt.close(fig)
        written.append(img / "scaling_model.png")
    return written


def caption(rows, command: str) -> str:
    """The commands that measured the rows (in order of first use) and the one that drew the plot."""
    made = list(dict.fromkeys(r.get("command") for r in rows if r.get("command")))
    text = "measured by: " + " ; ".join(made) if made else ""
    if command not in made:
        text += ("\n" if text else "") + "drawn by: " + command
    return text


def report(rows, args, command: str) -> None:
    command = caption(rows, command)
    periods_list = sorted({r["periods"] for r in rows})
    print(table(rows))
    model = [m for p in periods_list for m in model_rows(rows, p, tuple(args.model_workers))]
    chk = checks(rows, periods_list)
    kap = {st: round(contention(rows, st, args.periods), 2) for st in STEPS}
    print(f"\nkappa (task slow-down with every core busy) per step at {args.periods} periods: {kap}")
    if chk:
        print("\nmodel check (fitted on the 1x1 runs; kappa, the 2-core slow-down, from the widest layout "
              "at the largest size):\n")
        print("| units | config | step | partitions | measured s | model s | model / measured |")
        print("|---:|---|---|---:|---:|---:|---:|")
        for r in chk:
            cfg = r["config"] + (f" (partitions of {r['partition_units']:,})" if r.get("partition_units") else "")
            print(f"| {r['units']:,} x {r['periods']} | {cfg} | {r['step']} | {r['partitions']} | {r['seconds']:.2f} "
                  f"| {r['predicted']:.2f} | {r['predicted'] / r['seconds']:.2f} |")
    if model:
        print("\nmodel: seconds per step for N workers x 1 thread (one core each); "
              "default partitions / npartitions = N (capped at one RNG block each):\n")
        ns = [1, 2, *args.model_workers]
        print("| units | step | " + " | ".join(f"N={n}" for n in ns) + " |")
        print("|---:|---|" + "---:|" * len(ns))
        big = sorted({(m["units"], m["periods"]) for m in model})[-2:]
        for units, periods in big:
            for step in (*STEPS, "total"):
                cells = []
                for n in ns:
                    ms = [m for m in model if m["units"] == units and m["periods"] == periods and m["workers"] == n
                          and (step == "total" or m["step"] == step)]
                    if not ms:
                        cells.append("")
                        continue
                    d = sum(m["seconds_default"] for m in ms)
                    s = sum(m["seconds_scaled"] for m in ms)
                    cells.append(f"{d:.1f} / {s:.1f} ({ms[0]['partitions_scaled']})" if n > 2 else f"{d:.1f}")
                print(f"| {units:,} x {periods} | {step} | " + " | ".join(cells) + " |")
    if model:
        units, periods = max((m["units"], m["periods"]) for m in model if m["periods"] == args.periods) \
            if any(m["periods"] == args.periods for m in model) else (None, None)
        proj = [memory_projection(rows, units, periods, n) for n in (1, 2, *args.model_workers)] if units else []
        if proj and proj[0]:
            print(f"\nmemory per worker at {units:,} x {periods} (MiB; idle worker {proj[0]['idle']:.0f}, "
                  f"panel blocks {proj[0]['blocks']:.0f} in all): default partitions / npartitions = N\n")
            print("| workers | " + " | ".join(str(m["workers"]) for m in proj) + " |")
            print("|---|" + "---:|" * len(proj))
            print("| MiB per worker | " + " | ".join(f"{m['default']:.0f} / {m['scaled']:.0f}" for m in proj) + " |")
    if not args.no_plots:
        for p in plots(rows, model, chk, args.img, command):
            print(f"wrote {p}")
    if args.model_json:
        args.model_json.write_text(json.dumps({"model": model, "checks": chk}, indent=0))
