#!/usr/bin/python3
"""PNG plots from a results folder, made from the raw data only:
latency-cdf.png (one-way latency CDF per loss level, all arms, pooled over repeats) and
goodput-vs-loss.png (median goodput with interquartile bars, log scale).
Needs matplotlib (Debian: python3-matplotlib); run with /usr/bin/python3."""

import gzip
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import ARM_LABEL, ARM_ORDER, goodput_of  # noqa: E402
from stats import iqr, median  # noqa: E402

COLOURS = {"cubic": "tab:blue", "reno": "tab:cyan", "bbr": "tab:purple",
           "weft-hbh": "tab:red", "weft-e2e": "tab:orange", "udp": "tab:gray"}


def latencies(folder, row, warmup_ns):
    path = folder / row["raw"]
    if not path.exists():
        return []
    samples = []
    with gzip.open(path, "rt") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3:
                samples.append((int(parts[1]), int(parts[2])))
    if not samples:
        return []
    cutoff = min(s for s, _ in samples) + warmup_ns
    return [(r - s) / 1e6 for s, r in samples if s >= cutoff]


def latency_cdf(folder, results):
    rows = results.get("latency", [])
    if not rows:
        return None
    warmup_ns = results.get("meta", {}).get("warmup_ms", 0) * 1_000_000
    levels = list(dict.fromkeys(r["level"] for r in rows))
    cols = min(3, len(levels))
    nrows = (len(levels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(max(9, 5 * cols), 3.6 * nrows + 1),
                             squeeze=False)
    for ax, level in zip(axes.flat, levels):
        for arm in ARM_ORDER:
            values = []
            for r in rows:
                if r["level"] == level and r["arm"] == arm:
                    values += latencies(folder, r, warmup_ns)
            if not values:
                continue
            values.sort()
            n = len(values)
            ax.plot(values, [(i + 1) / n for i in range(n)], label=ARM_LABEL[arm],
                    color=COLOURS[arm], linewidth=1.4)
        lo, hi = ax.get_xlim()
        # A log axis only pays off for heavy tails; narrow ranges read better linearly.
        if hi > 3 * max(lo, 1e-3):
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(ScalarFormatter())
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"loss {level} per link")
        ax.set_xlabel("one-way latency (ms)")
        ax.set_ylabel("CDF")
        ax.set_ylim(0, 1.001)
        ax.grid(True, which="both", alpha=0.3)
    for ax in list(axes.flat)[len(levels):]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), frameon=False)
    fig.suptitle("200-byte messages at 50/s over 4 hops × (10 ms, 10 Mbit/s)")
    fig.tight_layout(rect=(0, 0.1, 1, 0.95))
    path = folder / "latency-cdf.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def goodput_vs_loss(folder, results):
    rows = results.get("loss_goodput", [])
    if not rows:
        return None
    levels = list(dict.fromkeys(r["level"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    arms = [a for a in ARM_ORDER if any(r["arm"] == a for r in rows)]
    for k, arm in enumerate(arms):
        xs, ys, lo, hi = [], [], [], []
        for i, level in enumerate(levels):
            values = [goodput_of(r) for r in rows if r["level"] == level and r["arm"] == arm]
            m = median(values)
            if m is None:
                continue
            q1, q3 = iqr(values)
            # A small sideways offset per arm keeps the error bars apart.
            xs.append(i + (k - (len(arms) - 1) / 2) * 0.06)
            ys.append(m)
            lo.append(m - q1)
            hi.append(q3 - m)
        ax.errorbar(xs, ys, yerr=[lo, hi], label=ARM_LABEL[arm], color=COLOURS[arm],
                    marker="o", capsize=3, linewidth=1.4)
    ax.set_xticks(range(len(levels)))
    ax.set_xticklabels(levels)
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(ScalarFormatter())
    ax.set_xlabel("loss per link")
    ax.set_ylabel("goodput (Mbit/s), median and IQR")
    ax.set_title("iperf3 goodput, 4 hops × (10 ms, 10 Mbit/s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = folder / "goodput-vs-loss.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    folder = Path(sys.argv[1])
    results = json.loads((folder / "results.json").read_text())
    made = [p for p in (latency_cdf(folder, results), goodput_vs_loss(folder, results)) if p]
    print("plots: " + ", ".join(str(p) for p in made) if made else "plots: no data")


if __name__ == "__main__":
    main()
