"""PNG figures of the attack report (matplotlib, Agg backend; no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

NOT_INFORMATIVE = "not informative"


def _img(ax: Any, x: torch.Tensor) -> None:
    x = x.detach().float().clamp(0, 1)
    if x.dim() == 3 and x.shape[0] == 1:
        ax.imshow(x[0].numpy(), cmap="gray", vmin=0, vmax=1)
    elif x.dim() == 3:
        ax.imshow(x.permute(1, 2, 0).numpy())
    else:
        ax.imshow(x.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_xticks([])
    ax.set_yticks([])


def _style(item: dict[str, Any]) -> tuple[str, str | None]:
    """Legend label and colour of a row or series: not-informative ones grey and flagged."""
    label = f"{item['party']} {item['level']}" + ("" if item["informative"] else f" ({NOT_INFORMATIVE})")
    return label, None if item["informative"] else "grey"


#: Panels per row of the per-attack figures: a grid a page or a screen shows whole, not one long row.
COLUMNS = 3
#: Font sizes of the per-attack panels: read at 100 % zoom on a report page.
TITLE_SIZE, LABEL_SIZE, LEGEND_SIZE, TICK_SIZE = 12, 10, 8.5, 9


def _panels(n: int, width: float = 5.4, height: float = 4.4) -> tuple[Any, list[Any]]:
    """A figure of ``n`` attack panels in a grid of at most :data:`COLUMNS` columns; the unused cells of the
    last row are hidden. Returns the figure and the ``n`` axes in reading order."""
    cols = min(COLUMNS, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _metric_name(items: list[dict[str, Any]]) -> str:
    """The y-axis name of a panel: its rows' primary metric(s), e.g. ``ssim`` or ``accuracy / auc``."""
    names = list(dict.fromkeys(str(i.get("primary") or "attack metric") for i in items))
    return " / ".join(names)


def _finish_panel(ax: Any, ylabel: str) -> None:
    ax.set_ylabel(ylabel, fontsize=LABEL_SIZE)
    ax.tick_params(labelsize=TICK_SIZE)
    ax.legend(fontsize=LEGEND_SIZE, loc="best", framealpha=0.85)
    ax.grid(alpha=0.3)


def _floor_lines(ax: Any, items: list[dict[str, Any]], colors: dict[str, str]) -> None:
    """Each row's floor as a horizontal dotted line in its colour, labelled; rows sharing one floor value
    share one grey line. A class floor (inversion: what the label alone gives, which the verdict judges
    against) is drawn dash-dotted the same way."""
    for field, name, style in (("floor", "floor", ":"), ("class_floor", "class floor", "-.")):
        floors: dict[float, list[dict[str, Any]]] = {}
        for r in items:
            if r.get(field) is not None:
                floors.setdefault(round(float(r[field]), 4), []).append(r)
        for value, rs in floors.items():
            if len(rs) > 1 or len(floors) == 1:
                who = "" if len(floors) == 1 else " (" + ", ".join(f"{r['party']} {r['level']}" for r in rs) + ")"
                ax.axhline(value, color="grey", linestyle=style, linewidth=1.3, label=f"{name} {value:.3f}{who}")
            else:
                r = rs[0]
                ax.axhline(value, color=colors.get(r["key"], "grey"), linestyle=style, linewidth=1.3,
                           label=f"{name} {value:.3f} ({r['party']} {r['level']})")


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstruction_grid(path: Path, level: str, run_grid: torch.Tensor, base_grid: torch.Tensor | None, *,
                        run_label: str, run_score: float | None, base_score: float | None, floor: float | None,
                        informative: bool) -> None:
    """Rows: originals, the run's reconstructions, (the baseline's originals if different,) the baseline's
    reconstructions. Grids are ``(2, G, C, H, W)``: originals, reconstructions."""
    rows: list[tuple[str, torch.Tensor]] = [("original", run_grid[0]), (run_label, run_grid[1])]
    if base_grid is not None:
        if base_grid.shape != run_grid.shape or not torch.equal(base_grid[0], run_grid[0]):
            rows.append(("original (baseline victims)", base_grid[0]))
        rows.append(("undefended baseline", base_grid[1]))
    g = max(r[1].shape[0] for r in rows)
    fig, axes = plt.subplots(len(rows), g, figsize=(1.2 * g, 1.3 * len(rows) + 0.6), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(g):
            ax = axes[i][j]
            if j < imgs.shape[0]:
                _img(ax, imgs[j])
            else:
                ax.axis("off")
        axes[i][0].set_ylabel(name, fontsize=7)
    def fmt(v: float | None) -> str:
        return "–" if v is None else f"{v:.3f}"

    title = f"inversion {level}: SSIM {run_label} {fmt(run_score)}, baseline {fmt(base_score)} (floor {fmt(floor)})"
    if not informative:
        title += f"\n{NOT_INFORMATIVE.upper()}: the undefended baseline does not beat its floor"
    fig.suptitle(title, fontsize=8, color="black" if informative else "darkred")
    _save(fig, path)


def accuracy_vs_metric(path: Path, rows: list[dict[str, Any]], run_acc: float | None, base_acc: float | None,
                       run_label: str) -> None:
    """One panel per attack, in a grid: each (party, level) as a segment from the baseline (open marker,
    undefended accuracy) to the run (filled marker, its accuracy), the floor as a dotted line; each panel's
    y-axis named by its metric; not-informative rows grey and flagged."""
    attacks = sorted({r["attack"] for r in rows})
    if not attacks:
        return
    fig, axes = _panels(len(attacks))
    for ax, name in zip(axes, attacks, strict=True):
        mine = [r for r in rows if r["attack"] == name]
        colors: dict[str, str] = {}
        for r in mine:
            label, color = _style(r)
            xs, ys = [], []
            if base_acc is not None and r.get("baseline_score") is not None:
                xs.append(base_acc)
                ys.append(r["baseline_score"])
            if run_acc is not None and r.get("score") is not None:
                xs.append(run_acc)
                ys.append(r["score"])
            if not xs:
                continue
            (line,) = ax.plot(xs, ys, "-" if r["informative"] else "--", color=color, label=label, linewidth=1.5)
            colors[r["key"]] = line.get_color()
            if len(xs) == 2:
                ax.plot(xs[:1], ys[:1], "o", mfc="none", color=line.get_color(), markersize=7)
                ax.plot(xs[1:], ys[1:], "o", color=line.get_color(), markersize=7)
            else:
                ax.plot(xs, ys, "o", color=line.get_color(), markersize=7)
        _floor_lines(ax, mine, colors)
        ax.set_title(name, fontsize=TITLE_SIZE)
        ax.set_xlabel(f"test accuracy (○ undefended, ● {run_label})", fontsize=LABEL_SIZE)
        _finish_panel(ax, _metric_name(mine))
    _save(fig, path)


def metric_per_epoch(path: Path, series: list[dict[str, Any]], run_label: str) -> bool:
    """One panel per attack, in a grid: the primary metric per recorded epoch, the run solid, the baseline
    dashed, floors dotted (each in the legend). ``series`` items: attack, party, level, run {epoch: score},
    base {epoch: score}, floor {epoch: floor}, informative, and optionally primary. Returns False (no file)
    when no attack has more than one epoch."""
    attacks = sorted({s["attack"] for s in series if max(len(s["run"]), len(s["base"])) > 1})
    if not attacks:
        return False
    fig, axes = _panels(len(attacks))
    for ax, name in zip(axes, attacks, strict=True):
        mine = [s for s in series if s["attack"] == name]
        for s in mine:
            label, color = _style(s)
            (line,) = ax.plot(sorted(s["run"]), [s["run"][e] for e in sorted(s["run"])], "o-", color=color,
                              label=f"{label} – {run_label}", linewidth=1.5, markersize=4)
            if s["base"]:
                ax.plot(sorted(s["base"]), [s["base"][e] for e in sorted(s["base"])], "s--",
                        color=line.get_color(), label=f"{label} – undefended", linewidth=1.2, markersize=4)
            if s["floor"]:
                ax.plot(sorted(s["floor"]), [s["floor"][e] for e in sorted(s["floor"])], ":",
                        color=line.get_color(), linewidth=1.3, label=f"{label} – floor")
        ax.set_title(name, fontsize=TITLE_SIZE)
        ax.set_xlabel("epoch", fontsize=LABEL_SIZE)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        _finish_panel(ax, _metric_name(mine))
    _save(fig, path)
    return True
