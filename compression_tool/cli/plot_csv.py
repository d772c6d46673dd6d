#!/usr/bin/env python
"""Plot a sensitivity CSV: one curve per layer, metric vs. sparsity (PNG next to the CSV by default); when the CSV
has ``<metric>_lo,<metric>_hi`` columns (``pruning.py --mode sa --ci``), each curve gets its confidence band."""
from __future__ import annotations

from pathlib import Path

from compression_tool.cli.parser import ArgumentParser
from compression_tool.engine.sensitivity import load_csv  # noqa: E402
from compression_tool.io.errors import UserError, cli_main  # noqa: E402
from compression_tool.io.files import atomic_save_with, check_writable  # noqa: E402


def figure(csv_path: str, metric: str | None = None):
    """(matplotlib figure, number of confidence bands drawn) of a sensitivity CSV."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics, data = load_csv(csv_path)
    metric = metric or metrics[0]
    if metric not in metrics:
        raise UserError(f"--metric {metric!r} is not a column of {csv_path} (columns: {', '.join(metrics)})")
    lo_key, hi_key = f"{metric}_lo", f"{metric}_hi"
    fig, ax = plt.subplots(figsize=(9, 5.5))
    bands = 0
    for layer, curve in data.items():
        xs = [s for s, _ in curve]
        (line,) = ax.plot(xs, [m[metric] for _, m in curve], marker="o", ms=3, label=layer)
        if all(lo_key in m and hi_key in m for _, m in curve):
            ax.fill_between(xs, [m[lo_key] for _, m in curve], [m[hi_key] for _, m in curve],
                            color=line.get_color(), alpha=0.12, linewidth=0)
            bands += 1
    if bands:
        ax.text(0.99, 0.99, "bands: 95 % interval of each measurement", transform=ax.transAxes, ha="right",
                va="top", fontsize=7)
    ax.set_xlabel("sparsity (fraction of channels removed)")
    ax.set_ylabel(metric)
    ax.set_title(f"sensitivity: {Path(csv_path).stem}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2 if len(data) > 12 else 1, loc="lower left")
    fig.tight_layout()
    return fig, bands


def plot(csv_path: str, out: Path, metric: str | None = None, force: bool = False) -> Path:
    check_writable(out, force)   # an existing plot is not overwritten without --force
    import matplotlib.pyplot as plt

    fig, _ = figure(csv_path, metric)
    atomic_save_with(out, lambda tmp: fig.savefig(tmp, dpi=120))
    plt.close(fig)
    return out


@cli_main
def main(argv=None) -> Path:
    p = ArgumentParser(description=__doc__)
    p.add_argument("csv", help="sensitivity CSV from pruning.py --mode sa")
    p.add_argument("--metric", default=None, help="column to plot (default: the first metric column)")
    p.add_argument("--output", default=None, help="PNG path (default: the CSV path with .png)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --output")
    args = p.parse_args(argv)
    out = plot(args.csv, Path(args.output or Path(args.csv).with_suffix(".png")), args.metric, args.force)
    print(f"plot: {out}")
    return out


if __name__ == "__main__":
    main()
