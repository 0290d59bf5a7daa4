"""`fervid timeline CAMERA --plot out.png`: stacked area of emotion shares per bucket (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fervid.contracts import EMOTIONS, parse_utc

COLOURS = {
    "angry": "#d62728",
    "disgust": "#8c564b",
    "fear": "#9467bd",
    "happy": "#2ca02c",
    "sad": "#1f77b4",
    "surprise": "#ff7f0e",
    "neutral": "#7f7f7f",
}


def plot_timeline(buckets: list[dict[str, Any]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    if not buckets:
        from fervid.errors import NotFound

        raise NotFound("no faces in that range: nothing to plot")
    times = [parse_utc(b["start"]) for b in buckets]
    shares = [[b["counts"][e] / b["faces"] for b in buckets] for e in EMOTIONS]
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=110)
    # matplotlib's stubs leave out the datetimes its date converter plots (the x axis is a date axis).
    ax.stackplot(times, shares, labels=list(EMOTIONS), colors=[COLOURS[e] for e in EMOTIONS], alpha=0.85, step=None)  # type: ignore[arg-type]
    ax.set_ylim(0, 1)
    ax.set_xlim(times[0], times[-1] if len(times) > 1 else times[0])  # type: ignore[arg-type]
    ax.set_ylabel("share of faces")
    ax.set_xlabel("time (UTC)")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
