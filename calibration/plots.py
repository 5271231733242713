"""PNG plots of a calibration sweep (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _panel(ax, points, chosen, original, xattr: str, xlabel: str, target: dict | None, front_on: bool):
    glob = [p for p in points if p.kind == "global"]
    refined = [p for p in points if p.kind == "refined" and p is not chosen]
    none = [p for p in points if p.kind == "no-removal"]
    xs = lambda ps: [getattr(p, xattr) for p in ps]  # noqa: E731
    ys = lambda ps: [p.accuracy * 100 for p in ps]  # noqa: E731
    ax.scatter(xs(glob), ys(glob), s=22, color="tab:blue", label="global scale s (eta * s)", zorder=3)
    for p in glob:
        if not p.pareto:  # label the front only: dominated points pile up
            continue
        ax.annotate(f"{p.scale:g}", (getattr(p, xattr), p.accuracy * 100), fontsize=6, xytext=(3, 3),
                    textcoords="offset points", color="tab:blue")
    if refined:
        ax.scatter(xs(refined), ys(refined), s=10, marker="x", color="tab:gray", label="per-layer refinement",
                   zorder=2)
    if none:
        ax.scatter(xs(none), ys(none), s=50, marker="s", color="black", label="no removal", zorder=4)
    if front_on:
        front = sorted([p for p in points if p.pareto], key=lambda p: getattr(p, xattr))
        ax.plot(xs(front), ys(front), "-", color="tab:orange", lw=1.5, label="Pareto front (acc vs FLOPs)", zorder=1)
    if original is not None:
        ax.scatter([getattr(original, xattr)], [original.accuracy * 100], s=80, facecolors="none",
                   edgecolors="tab:green", linewidths=1.5, label="checkpoint eta (s=1)", zorder=5)
    if chosen is not None:
        ax.scatter([getattr(chosen, xattr)], [chosen.accuracy * 100], s=160, marker="*", color="tab:red",
                   label=f"chosen ({chosen.accuracy * 100:.1f}%, {getattr(chosen, xattr):.2f}x)", zorder=6)
    if target:
        if target.get("kind") == "speedup" and xattr == "flops_speedup":
            ax.axvline(target["flops_speedup"], color="tab:red", ls="--", lw=0.8, label="target speedup")
        elif target.get("kind") == "max_accuracy_drop":
            ax.axhline((target["reference_accuracy"] - target["points"] / 100) * 100, color="tab:red", ls="--",
                       lw=0.8, label=f"accuracy floor ({target['reference']} - {target['points']:g} pts)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("dev accuracy (%)")
    ax.grid(alpha=0.3)


def plot_tradeoff(points, chosen, path: Path, target: dict | None = None, original=None) -> Path:
    """Accuracy vs FLOPs speedup (and vs measured speedup where measured), Pareto front and chosen point."""
    plt = _pyplot()
    measured = [p for p in points if p.measured_speedup is not None]
    fig, axes = plt.subplots(1, 2 if measured else 1, figsize=(12 if measured else 7, 5), squeeze=False)
    _panel(axes[0][0], points, chosen, original, "flops_speedup", "FLOPs speedup (x)", target, True)
    axes[0][0].set_title("accuracy vs FLOPs speedup")
    axes[0][0].legend(fontsize=7, loc="lower left")
    if measured:
        measured_chosen = chosen if chosen is not None and chosen.measured_speedup is not None else None
        measured_original = original if original is not None and original.measured_speedup is not None else None
        _panel(axes[0][1], measured, measured_chosen, measured_original, "measured_speedup",
               "measured speedup vs keep-all chain (ONNX Runtime, batch 1)", target, False)
        axes[0][1].set_title("accuracy vs measured speedup")
        axes[0][1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def plot_kept_per_layer(original, chosen, path: Path, mean_input_length: float | None = None) -> Path:
    """Mean tokens each layer runs on: chosen point vs the checkpoint's eta; eta per layer beside it."""
    import numpy as np

    plt = _pyplot()
    layers = np.arange(len(original.kept_per_layer))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.38 if chosen is not None else 0.6
    ax.bar(layers - (width / 2 if chosen is not None else 0), original.kept_per_layer, width,
           label="checkpoint eta", color="tab:green")
    if chosen is not None:
        ax.bar(layers + width / 2, chosen.kept_per_layer, width, label=f"chosen ({chosen.label})", color="tab:red")
    if mean_input_length is not None:
        ax.axhline(mean_input_length, color="black", ls="--", lw=0.8, label="mean input length")
    ax.set_xlabel("encoder layer")
    ax.set_ylabel("mean tokens kept (layer input)")
    ax.set_xticks(layers)
    ax.set_title("tokens kept per layer")
    ax.legend(fontsize=7)
    ax2.plot(layers, original.eta, "o-", color="tab:green", label="checkpoint eta")
    if chosen is not None:
        ax2.plot(layers, chosen.eta, "s-", color="tab:red", label="chosen eta")
    ax2.set_ylim(0, 1.05)
    ax2.set_xticks(layers)
    ax2.set_xlabel("link / layer")
    ax2.set_ylabel("eta (keep iff s~ >= eta / n)")
    ax2.set_title("thresholds")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
