"""Plots of compared runs: one panel per tag, one line per setting, a band over seeds.

`plot_bands` draws what `zoo.lab.events.over_seeds` computes, against the step
or the wall time, with matplotlib's non-interactive Agg backend (no display
needed), and writes a PNG.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from zoo.lab.events import Band

__all__ = ["plot_bands"]


def plot_bands(
    bands: Mapping[str, Mapping[str, Band]],
    tags: Sequence[str],
    path: str | Path,
    x: Literal["step", "wall"] = "step",
    log_tags: Sequence[str] = (),
    title: str | None = None,
) -> Path | None:
    """Write one figure with a panel per tag: mean over seeds, shaded ± one standard deviation.

    Args:
        bands: setting → tag → `Band`; settings without a tag are left out of its panel.
        tags: the panels, in order; tags no setting has are skipped.
        path: the PNG to write.
        x: ``"step"`` (global step) or ``"wall"`` (seconds since the run started).
        log_tags: tags drawn on a logarithmic y axis (variances, say).
        title: the figure's title.

    Returns:
        The path written, or None when no tag had data (nothing is written).

    Raises:
        ValueError: ``x`` is neither ``"step"`` nor ``"wall"``.
    """
    if x not in ("step", "wall"):
        raise ValueError(f"x must be 'step' or 'wall', got {x!r}")
    tags = [
        t for t in tags if any(t in by_tag and len(by_tag[t].steps) for by_tag in bands.values())
    ]
    if not tags:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(len(tags), 2)
    rows = math.ceil(len(tags) / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5.5 * cols, 3.6 * rows), squeeze=False, layout="constrained"
    )
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, tag in zip(axes.flat, tags, strict=False):
        for i, (setting, by_tag) in enumerate(bands.items()):
            band = by_tag.get(tag)
            if band is None or not len(band.steps):
                continue
            xs = band.steps if x == "step" else band.wall
            color = colors[i % len(colors)]
            style = "-" if i < len(colors) else "--"
            ax.plot(xs, band.mean, style, color=color, label=setting, linewidth=1.4)
            if band.seeds > 1:
                ax.fill_between(
                    xs, band.mean - band.std, band.mean + band.std, color=color, alpha=0.2
                )
        if tag in log_tags:
            ax.set_yscale("log")
        ax.set_title(tag)
        ax.set_xlabel("step" if x == "step" else "wall time (s)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tags) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in list(axes.flat)[1 : len(tags)]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(h)
                labels.append(label)
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    if title:
        fig.suptitle(title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
