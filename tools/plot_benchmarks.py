#!/usr/bin/python3
"""Plots and a markdown table from the output of `tconst bench` (scripts/benchmarks runs it).

  /usr/bin/python3 tools/plot_benchmarks.py --trace docs/bench_trace.csv \
      --bench docs/bench.json --out-dir docs --markdown docs/benchmarks.md

--trace    CSV from `tconst bench --trace-steps N --trace-out FILE` (arch,depth,step,ms,resync)
           -> OUT/latency_trace.png: per-token latency against token position, log y, resync
           steps marked.
--bench    JSON array from `tconst bench --json`
           -> OUT/cache_bytes.png: cache bytes against context length per architecture, log-log;
           -> the table in --markdown, between the lines <!-- bench-table --> and
           <!-- /bench-table --> (everything between them is replaced).
--machine  one line describing the run (CPU, threads, commit), printed under the table.

Needs matplotlib (Debian: python3-matplotlib) only for the plots; the table needs nothing.
"""

import argparse
import csv
import json
import os
import sys

BEGIN = "<!-- bench-table -->"
END = "<!-- /bench-table -->"

# `tconst bench` fills the baseline's cache with synthetic keys and values above this depth
# (kBaselineRealPrefillMax in examples/tconst/bench.hpp); used when the JSON has no "synthetic" field.
BASELINE_REAL_PREFILL_MAX = 4096

ARCH_LABELS = {"tconstformer": "TConstFormer", "tlinformer": "TLinFormer",
               "transformer": "Transformer (baseline)"}
ARCH_STYLE = {"tconstformer": ("tab:blue", "o"), "tlinformer": ("tab:orange", "s"),
              "transformer": ("tab:green", "^")}


def label(arch):
    return ARCH_LABELS.get(arch, arch)


def read_trace(path):
    """{(arch, depth): [(step, ms, resync)]} in file order."""
    series = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            key = (row["arch"], int(row["depth"]))
            series.setdefault(key, []).append(
                (int(row["step"]), float(row["ms"]), int(row["resync"]) != 0))
    if not series:
        raise ValueError(f"{path}: no trace rows")
    return series


def read_bench(path):
    with open(path) as f:
        rows = json.load(f)
    if not isinstance(rows, list) or not rows:
        raise ValueError(f"{path}: expected a non-empty JSON array from `tconst bench --json`")
    return rows


def median(values):
    v = sorted(values)
    n = len(v)
    if n == 0:
        return float("nan")
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def fmt_num(v):
    return f"{v:.0f}" if v >= 100 else f"{v:.3g}"


def plain_log_ticks(axis, lo, hi):
    """Tick labels 0.5, 10, 200 ... instead of powers of ten; the minor ticks labelled too when
    the data [lo, hi] spans too little for the decades alone."""
    from matplotlib.ticker import FuncFormatter
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(plain)
    axis.set_minor_formatter(plain if hi < 20 * lo else FuncFormatter(lambda v, _: ""))


def plot_trace(series, out_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    top, bottom = 0.0, float("inf")
    for (arch, depth), rows in series.items():
        color = ARCH_STYLE.get(arch, ("tab:gray", "o"))[0]
        pos = [depth + step for step, _, _ in rows]  # tokens in the context when the step runs
        ms = [m for _, m, _ in rows]
        top, bottom = max(top, max(ms)), min(bottom, min(ms))
        hits = [m for _, m, r in rows if not r]
        ax.plot(pos, ms, color=color, linewidth=0.7,
                label=f"{label(arch)}: per-token step (median cache hit {fmt_num(median(hits))} ms)")
        rpos = [depth + step for step, _, r in rows if r]
        rms = [m for _, m, r in rows if r]
        if rpos:
            gaps = [b - a for a, b in zip(rpos, rpos[1:])]
            every = f", every {int(median(gaps))} tokens" if gaps else ""
            for x in rpos:
                ax.axvline(x, color="tab:red", alpha=0.15, linewidth=0.8)
            ax.scatter(rpos, rms, color="tab:red", marker="v", s=30, zorder=3,
                       label=f"{label(arch)}: resync steps ({len(rpos)}{every}; "
                             f"median {fmt_num(median(rms))} ms)")
    ax.set_yscale("log")
    ax.set_ylim(top=top * 6)  # room for the legend above the spikes
    plain_log_ticks(ax.yaxis, bottom, top * 6)
    ax.set_xlabel("token position (context length when the token is fed)")
    ax.set_ylabel("step latency (ms, log scale)")
    ax.set_title("Per-token latency, paper-41M shape (random weights, float)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def plot_cache(rows, out_png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    archs = []
    for r in rows:
        if r["arch"] not in archs:
            archs.append(r["arch"])
    for arch in archs:
        pts = sorted((r["depth"], r["cache_bytes"]) for r in rows if r["arch"] == arch)
        color, marker = ARCH_STYLE.get(arch, ("tab:gray", "o"))
        ax.plot([p[0] for p in pts], [p[1] / 1e6 for p in pts], color=color, marker=marker,
                label=label(arch))
    depths = sorted({r["depth"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(depths)
    ax.set_xticklabels([str(d) for d in depths])
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    mb = [r["cache_bytes"] / 1e6 for r in rows]
    plain_log_ticks(ax.yaxis, min(mb), max(mb))
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("key/value cache (MB = 10^6 bytes, log scale)")
    ax.set_title("Cache size against context length, paper-41M shape (float)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


def is_synthetic(r):
    if "synthetic" in r:
        return bool(r["synthetic"])
    return r["arch"] == "transformer" and r["depth"] > BASELINE_REAL_PREFILL_MAX


def fmt_ms(v):
    if v is None:
        return "–"
    return f"{v:.3f}" if v < 100 else f"{v:.1f}"


def table(rows, machine=None):
    lines = [
        "| Architecture | Context length | Threads | Cache-hit step, median (ms) "
        "| Resync, over a hit (ms) | Amortized (ms/token) | Cache (MB) | Peak RSS (MB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    any_synthetic = False
    for r in rows:
        synthetic = is_synthetic(r)
        any_synthetic |= synthetic
        mark = " \\*" if synthetic else ""
        lines.append(
            f"| {label(r['arch'])} | {r['depth']}{mark} | {r['threads']} "
            f"| {fmt_ms(r['hit_ms_median'])} | {fmt_ms(r.get('resync_ms'))} "
            f"| {fmt_ms(r['amortized_ms_per_token'])} | {r['cache_bytes'] / 1e6:.2f} "
            f"| {r['peak_rss_bytes'] / 1e6:.1f} |")
    notes = []
    if any_synthetic:
        notes.append("\\* The baseline's key/value cache at this depth is filled with synthetic "
                     "values instead of a real O(depth²) prefill; the per-token cost does not "
                     "depend on the values.")
    if machine:
        notes.append(f"Measured on: {machine}")
    if notes:
        lines.append("")
        lines.extend(notes)
    return "\n".join(lines)


def replace_table(md_path, text):
    with open(md_path) as f:
        doc = f.read()
    b = doc.find(BEGIN)
    e = doc.find(END)
    if b < 0 or e < 0 or e < b:
        raise ValueError(f"{md_path}: markers {BEGIN} ... {END} not found")
    doc = doc[:b + len(BEGIN)] + "\n" + text + "\n" + doc[e:]
    with open(md_path, "w") as f:
        f.write(doc)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trace", help="CSV from tconst bench --trace-out")
    p.add_argument("--bench", help="JSON from tconst bench --json")
    p.add_argument("--out-dir", default="docs", help="where the PNGs go (default: docs)")
    p.add_argument("--markdown", help="markdown file whose bench-table block is replaced")
    p.add_argument("--machine", help="one line about the machine and run, shown under the table")
    args = p.parse_args(argv)
    if not args.trace and not args.bench:
        p.error("give --trace and/or --bench")
    if args.markdown and not args.bench:
        p.error("--markdown needs --bench")
    os.makedirs(args.out_dir, exist_ok=True)
    try:
        if args.trace:
            out = os.path.join(args.out_dir, "latency_trace.png")
            plot_trace(read_trace(args.trace), out)
            print(f"wrote {out}")
        if args.bench:
            rows = read_bench(args.bench)
            out = os.path.join(args.out_dir, "cache_bytes.png")
            plot_cache(rows, out)
            print(f"wrote {out}")
            if args.markdown:
                replace_table(args.markdown, table(rows, args.machine))
                print(f"updated the table in {args.markdown}")
    except (OSError, ValueError, KeyError) as e:
        print(f"plot_benchmarks: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
