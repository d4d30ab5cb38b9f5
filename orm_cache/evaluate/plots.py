"""Optional PNG plots of an eval report (matplotlib is an optional extra: pip install '.[plot]')."""

from __future__ import annotations

from pathlib import Path

import click


def require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise click.ClickException("--plot-dir needs matplotlib: pip install 'orm-cache[plot]'") from None


def write_plots(report: dict, out_dir) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..outputs import atomic_path

    out = Path(out_dir)
    paths = []

    def save(fig, name):
        paths.append(out / name)
        with atomic_path(paths[-1]) as tmp:
            fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        plt.close(fig)

    rel = report["calibration"]["reliability"]
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    ax.plot([b["confidence"] for b in rel], [b["accuracy"] for b in rel], "o-")
    ax.set(xlabel="predicted P(first wins)", ylabel="observed", title=f"reliability (ECE {report['calibration']['ece']:.3f})")
    save(fig, "reliability.png")

    buckets = [b for b in report["length_buckets"] if b["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar([b["bucket"] for b in buckets], [b["accuracy"] for b in buckets])
    ax.set(ylim=(0, 1), xlabel="tokens (longer trace)", ylabel="pairwise accuracy", title="accuracy by length")
    save(fig, "accuracy_by_length.png")

    h = report["margin_histogram"]
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.stairs(h["counts"], h["edges"], fill=True)
    ax.axvline(0, color="k", lw=1)
    ax.set(xlabel="margin Δ = score(chosen) - score(rejected)", ylabel="pairs", title="margin histogram")
    save(fig, "margins.png")
    return paths

