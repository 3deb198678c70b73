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
    and the largest weight). Edges are drawn below the nodes and end at the circles' rims.
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
        drawn = nx.draw_networkx_edges(
            G, pos, edgelist=missing, ax=ax, style="dashed", edge_color=COLORS["missing"],
            arrows=True, arrowsize=12, node_size=node_size, alpha=0.8,
            connectionstyle="arc3,rad=0.08",
        )  # fmt: skip
        _below(drawn)
        handles += [
            Line2D([], [], color=COLORS["correct"], lw=2, label="correct edge"),
            Line2D([], [], color=COLORS["reversed"], lw=2, label="reversed edge"),
            Line2D([], [], color=COLORS["extra"], lw=2, label="extra edge"),
            Line2D([], [], color=COLORS["missing"], lw=1.5, ls="--", label="missing true edge"),
        ]
    alphas = None
    if stability is not None and edges:
        alphas = [0.25 + 0.75 * float(stability[i, j]) for i, j in edges]
    drawn = nx.draw_networkx_edges(
        G, pos, edgelist=edges, ax=ax, width=widths, edge_color=colors, arrows=True,
        arrowsize=14, node_size=node_size, connectionstyle="arc3,rad=0.08", alpha=alphas,
    )  # fmt: skip
    _below(drawn)
    if stability is not None and edges:
        labels = {(i, j): f"{stability[i, j]:.2f}" for i, j in edges}
        nx.draw_networkx_edge_labels(
            G, pos, edge_labels=labels, ax=ax, font_size=6, connectionstyle="arc3,rad=0.08"
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
