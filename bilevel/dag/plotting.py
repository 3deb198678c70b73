"""Drawing a learned graph with networkx and matplotlib.

Nodes are placed in layers by their depth in the DAG (longest path from a root), so edges
point downwards; a graph with cycles falls back to a circular layout. Edge width grows with
``|W[i, j]|`` and the colour gives the sign. Given the true graph, edges are coloured by
their status instead (correct, reversed, extra), missing true edges are drawn dashed and the
title carries SHD, TPR and FDR. A legend explains colours, dashes and widths.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["plot_graph"]

COLORS = {
    "positive": "tab:blue",
    "negative": "tab:red",
    "correct": "tab:green",
    "reversed": "tab:orange",
    "extra": "tab:red",
    "missing": "tab:gray",
}


def _layout(G, d: int) -> dict:
    import networkx as nx

    if not nx.is_directed_acyclic_graph(G):
        return nx.circular_layout(G)
    depth = dict.fromkeys(G.nodes, 0)
    for node in nx.topological_sort(G):
        for child in G.successors(node):
            depth[child] = max(depth[child], depth[node] + 1)
    nx.set_node_attributes(G, depth, "layer")
    pos = nx.multipartite_layout(G, subset_key="layer", align="horizontal")
    # roots at the top
    return {node: (x, -y) for node, (x, y) in pos.items()}


_RADS = (0.08, 0.25, -0.25, 0.4, -0.4, 0.6, -0.6)


def _route(pos: dict, edges: Sequence[tuple[int, int]]) -> dict[tuple[int, int], float]:
    """A curvature (Matplotlib ``arc3`` ``rad``) per edge such that the arc keeps clear of
    the other nodes: the first of ``_RADS`` whose quadratic Bezier curve (control point
    ``midpoint + rad * (dy, -dx)``, as ``arc3`` draws it) stays at least 0.3 node spacings
    away from every other node, else the one that gets farthest."""
    nodes = np.array([pos[k] for k in sorted(pos)], dtype=float)
    keys = sorted(pos)
    if len(nodes) < 3:
        return {e: _RADS[0] for e in edges}
    gaps = np.linalg.norm(nodes[:, None] - nodes[None], axis=-1)
    clearance = 0.3 * gaps[gaps > 0].min()
    t = np.linspace(0.15, 0.85, 15)[:, None]
    out = {}
    for i, j in edges:
        a, b = np.asarray(pos[i], float), np.asarray(pos[j], float)
        others = nodes[[k for k, key in enumerate(keys) if key not in (i, j)]]
        best_rad, best_gap = _RADS[0], -1.0
        for rad in _RADS:
            control = (a + b) / 2 + rad * np.array([b[1] - a[1], a[0] - b[0]])
            curve = (1 - t) ** 2 * a + 2 * t * (1 - t) * control + t**2 * b
            gap = np.linalg.norm(curve[:, None] - others[None], axis=-1).min()
            if gap >= clearance:
                best_rad = rad
                break
            if gap > best_gap:
                best_rad, best_gap = rad, gap
        out[(i, j)] = best_rad
    return out


def _draw_edges(G, pos, edges, rads, ax, **style) -> None:
    """``networkx.draw_networkx_edges`` per curvature group, below the nodes; list-valued
    ``style`` entries (widths, colours, alphas) are split along with the edges."""
    import networkx as nx

    for rad in sorted({rads[e] for e in edges}):
        index = [k for k, e in enumerate(edges) if rads[e] == rad]
        part = {
            key: [value[k] for k in index] if isinstance(value, list) else value
            for key, value in style.items()
        }
        drawn = nx.draw_networkx_edges(
            G, pos, edgelist=[edges[k] for k in index], ax=ax, arrows=True,
            connectionstyle=f"arc3,rad={rad}", **part,
        )  # fmt: skip
        _below(drawn)


def plot_graph(
    W: np.ndarray,
    node_names: Sequence[str] | None = None,
    *,
    B_true: np.ndarray | None = None,
    title: str | None = None,
    ax=None,
    path: str | Path | None = None,
    stability: np.ndarray | None = None,
    metrics: bool = True,
):
    """Draw the directed graph ``i -> j`` for ``W[i, j] != 0``, with a legend.

    Parameters
    ----------
    W : numpy.ndarray
        ``(d, d)`` weighted adjacency matrix.
    node_names : sequence of str, optional
        Node labels; ``0..d-1`` by default. The node circles grow with the longest label so
        that every label fits inside its circle.
    B_true : numpy.ndarray, optional
        True graph. Learned edges are then green (correct), orange (reversed) or red
        (extra) and missing true edges are dashed grey; otherwise blue is a positive and
        red a negative weight.
    title : str, optional
        Axes title; with ``B_true`` and ``metrics`` the SHD, TPR and FDR are appended.
    ax : matplotlib.axes.Axes, optional
        Axes to draw into; a new figure is created otherwise.
    path : str or Path, optional
        Save the figure there (format from the suffix).
    stability : numpy.ndarray, optional
        Bootstrap edge frequencies (:attr:`TopoSearch.edge_stability_`): each edge is
        labelled with its frequency and drawn with an opacity that grows with it.
    metrics : bool
        Whether to put the accuracy against ``B_true`` in the title.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Edge width grows linearly with ``|W_ij|`` (the legend shows the widths of the smallest
    and the largest weight). Edges are drawn below the nodes, end at the circles' rims and
    bend around the other nodes (the least curvature that keeps clear of them).
    """
    import networkx as nx
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    W = np.asarray(W, dtype=float)
    if W.ndim != 2 or W.shape[0] != W.shape[1]:
        raise ValueError(f"W must be a square matrix, got shape {W.shape}")
    d = W.shape[0]
    names = [str(k) for k in range(d)] if node_names is None else [str(n) for n in node_names]
    if len(names) != d:
        raise ValueError(f"got {len(names)} node names for {d} nodes")
    if B_true is not None:
        B_true = np.asarray(B_true) != 0
        if B_true.shape != W.shape:
            raise ValueError(f"B_true has shape {B_true.shape}, W has {W.shape}")
    if stability is not None:
        stability = np.asarray(stability, dtype=float)
        if stability.shape != W.shape:
            raise ValueError(f"stability has shape {stability.shape}, W has {W.shape}")

    G = nx.DiGraph()
    G.add_nodes_from(range(d))
    edges = list(zip(*np.nonzero(W), strict=True))
    G.add_edges_from(edges)
    pos = _layout(G.copy(), d)

    # node size (points^2) so that the longest label fits at font size 8
    font = 8
    longest = max((len(n) for n in names), default=1)
    diameter = max(24.0, 0.62 * font * longest + 10)  # points
    node_size = diameter**2
    if ax is None:
        width = max(5.0, 0.9 * d * diameter / 72 + 2.5)
        fig = Figure(figsize=(min(width, 16.0), max(4.5, 0.5 * d + 2.5)))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    scale = np.abs(W).max() if edges else 1.0
    widths = [0.8 + 2.5 * abs(W[i, j]) / scale for i, j in edges]
    handles = []
    if B_true is None:
        colors = [COLORS["positive"] if W[i, j] > 0 else COLORS["negative"] for i, j in edges]
        handles += [
            Line2D([], [], color=COLORS["positive"], lw=2, label="positive weight"),
            Line2D([], [], color=COLORS["negative"], lw=2, label="negative weight"),
        ]
    else:
        colors = [
            COLORS["correct"]
            if B_true[i, j]
            else COLORS["reversed"]
            if B_true[j, i]
            else COLORS["extra"]
            for i, j in edges
        ]
        missing = [
            (i, j)
            for i, j in zip(*np.nonzero(B_true), strict=True)
            if W[i, j] == 0 and W[j, i] == 0
        ]
        G.add_edges_from(missing)
        _draw_edges(
            G, pos, missing, _route(pos, missing), ax, style="dashed",
            edge_color=COLORS["missing"], arrowsize=12, node_size=node_size, alpha=0.8,
        )  # fmt: skip
        handles += [
            Line2D([], [], color=COLORS["correct"], lw=2, label="correct edge"),
            Line2D([], [], color=COLORS["reversed"], lw=2, label="reversed edge"),
            Line2D([], [], color=COLORS["extra"], lw=2, label="extra edge"),
            Line2D([], [], color=COLORS["missing"], lw=1.5, ls="--", label="missing true edge"),
        ]
    alphas = None
    if stability is not None and edges:
        alphas = [0.25 + 0.75 * float(stability[i, j]) for i, j in edges]
    rads = _route(pos, edges)
    _draw_edges(
        G, pos, edges, rads, ax, width=widths, edge_color=colors, arrowsize=14,
        node_size=node_size, alpha=alphas,
    )  # fmt: skip
    if stability is not None and edges:
        for rad in sorted({rads[e] for e in edges}):
            labels = {(i, j): f"{stability[i, j]:.2f}" for i, j in edges if rads[(i, j)] == rad}
            nx.draw_networkx_edge_labels(
                G, pos, edge_labels=labels, ax=ax, font_size=6, connectionstyle=f"arc3,rad={rad}"
            )
    nodes = nx.draw_networkx_nodes(
        G, pos, ax=ax, node_color="white", edgecolors="black", node_size=node_size
    )
    nodes.set_zorder(3)
    texts = nx.draw_networkx_labels(G, pos, labels=dict(enumerate(names)), ax=ax, font_size=font)
    for t in texts.values():
        t.set_zorder(4)
    if edges:
        lo, hi = np.abs(W[np.nonzero(W)]).min(), scale
        handles += [
            Line2D([], [], color="black", lw=0.8 + 2.5 * lo / scale, label=f"|weight| {lo:.2g}"),
            Line2D([], [], color="black", lw=3.3, label=f"|weight| {hi:.2g}"),
        ]
    if stability is not None:
        handles.append(
            Line2D([], [], color="black", lw=0, label="label, opacity: bootstrap frequency")
        )
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
              frameon=False)  # fmt: skip
    ax.set_axis_off()
    ax.margins(0.12)
    text = title or ""
    if B_true is not None and metrics:
        from bilevel.dag.metrics import count_accuracy

        acc = count_accuracy(B_true, W)
        text += (
            f"\nSHD {acc['shd']}, TPR {acc['tpr']:.2f}, FDR {acc['fdr']:.2f}, "
            f"{acc['nnz']} edges ({int(B_true.sum())} true)"
        )
    elif edges:
        text += f"\n{len(edges)} edges"
    if text.strip():
        ax.set_title(text.strip(), fontsize=9)
    if path is not None:
        fig.savefig(path, bbox_inches="tight", dpi=120)
    return fig


def _below(artists) -> None:
    """Put edge artists under the nodes (networkx returns a collection or a list)."""
    if artists is None:
        return
    for artist in artists if isinstance(artists, list) else [artists]:
        artist.set_zorder(1)
