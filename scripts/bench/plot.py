#!/usr/bin/python3
"""PNG plots from a results folder, made from the raw data only:
latency-cdf.png (one-way latency CDF per loss level, all arms, pooled over repeats),
goodput-vs-loss.png (median goodput with interquartile bars, log scale) and failover.png
(bulk goodput and probe latency around the cut, first repeat).
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
           "weft-hbh": "tab:red", "weft-e2e": "tab:orange", "weft-insecure": "tab:pink", "udp": "tab:gray"}


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


def failover_timeline(folder, results):
    """Per arm (first repeat): bulk delivery rate and probe one-way latency around the cut."""
    rows = [r for r in results.get("failover", []) if r.get("rep") == 0]
    if not rows:
        return None
    arms = [a for a in ARM_ORDER if any(r["arm"] == a for r in rows)]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    bin_ms = 50
    for arm in arms:
        r = next(x for x in rows if x["arm"] == arm)
        cut, heal = r["cut_ns"], r["heal_ns"]
        bulk_raw = (r.get("bulk") or {}).get("raw")
        if bulk_raw and (folder / bulk_raw).exists():
            with gzip.open(folder / bulk_raw, "rt") as f:
                t = json.load(f)
            per = max(1, int(bin_ms * 1e6 // t["bin_ns"]))
            xs, ys = [], []
            for i in range(0, len(t["bins"]), per):
                start = t["start_ns"] + i * t["bin_ns"]
                xs.append((start - cut) / 1e9)
                ys.append(sum(t["bins"][i:i + per]) * 8 / (per * t["bin_ns"] / 1e9) / 1e6)
            axes[0].step(xs, ys, where="post", label=ARM_LABEL[arm], color=COLOURS[arm],
                         linewidth=1.2)
        probe_raw = folder / f"raw/failover-rep0-{arm}.txt.gz"
        if probe_raw.exists():
            pts = []
            with gzip.open(probe_raw, "rt") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 3:
                        pts.append(((int(parts[1]) - cut) / 1e9, (int(parts[2]) - int(parts[1])) / 1e6))
            axes[1].scatter([p[0] for p in pts], [p[1] for p in pts], s=1.5, color=COLOURS[arm],
                            label=ARM_LABEL[arm])
        heal_s = (heal - cut) / 1e9
    for ax in axes:
        ax.axvline(0, color="black", linestyle="--", linewidth=0.8)
        ax.axvline(heal_s, color="black", linestyle=":", linewidth=0.8)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(f"bulk goodput (Mbit/s, {bin_ms} ms bins)")
    axes[0].legend(fontsize=8, loc="lower right")
    axes[1].set_yscale("log")
    axes[1].yaxis.set_major_formatter(ScalarFormatter())
    axes[1].set_ylabel("1 kHz probe one-way latency (ms)")
    axes[1].set_xlabel("send / delivery time relative to the cut of s–a (s); dotted: heal")
    fig.suptitle("Diamond failover: bulk transfer and probe, cut at 0")
    fig.tight_layout()
    path = folder / "failover.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main():
    folder = Path(sys.argv[1])
    results = json.loads((folder / "results.json").read_text())
    made = [p for p in (latency_cdf(folder, results), goodput_vs_loss(folder, results),
                        failover_timeline(folder, results)) if p]
    print("plots: " + ", ".join(str(p) for p in made) if made else "plots: no data")


if __name__ == "__main__":
    main()
