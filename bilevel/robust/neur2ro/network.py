"""The Neur2RO value network: a DeepSets-style set encoder of ``(x, xi)``.

The network predicts the value of the second stage (plus any scenario-dependent
first-stage cost) of a two-stage robust problem, ``F(x, xi) = c(xi)^T x + Q(x, xi)``, from
two *sets* of items (Dumouchelle, Julien, Kurtz, Khalil, ICLR 2024, Section 5):

* the first-stage set ``{(x_i, f_i)}_{i=1..n}``: item ``i`` carries its decision value
  ``x_i`` and a vector ``f_i`` of instance features (costs, weights, ...);
* the scenario set ``{(xi_j, g_j)}_{j=1..m}``: component ``j`` of the uncertainty with its
  features ``g_j``.

Each set is encoded as ``rho(sum_i phi([v_i, f_i]))`` with ``phi`` and ``rho`` small ReLU
MLPs (separate ones for ``x`` and for ``xi``), and the value network ``psi`` maps the
concatenated encodings to a scalar::

    NN(x, xi) = psi([rho_x(sum_i phi_x([x_i, f_i])), rho_xi(sum_j phi_xi([xi_j, g_j]))]).

**Joint encoder** (``encoder="joint"``). When first-stage item ``i`` and uncertainty
component ``i`` describe the same object (the knapsack: ``xi_i`` degrades the profit of
item ``i``), the value depends on products such as ``x_i xi_i``, which the separate encoder
can only reach through its small set codes. The joint encoder reads each item once::

    NN(x, xi) = psi(rho(sum_i phi([x_i, xi_i, f_i]))).

It is still a DeepSets network and embeds into the same MILPs: for a fixed scenario the
per-item term is exactly linear in a binary ``x_i``, and for a fixed ``x`` it is a ReLU
network of the single input ``xi_i``. It needs ``n_x = n_xi`` and per-item features shared
by ``x_i`` and ``xi_i`` (:attr:`~bilevel.robust.neur2ro.data.InstanceFeatures.aligned`).

The sum makes the network independent of the item order and of ``n``; items are padded
and masked so that instances of different sizes share one batch. Every MLP alternates
``Linear`` and ``ReLU`` with no activation after its last layer, which is what
:mod:`bilevel.robust.neur2ro.embedding` embeds exactly into a MILP.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["NetworkConfig", "SetValueNetwork", "mlp"]


@dataclass(frozen=True)
class NetworkConfig:
    """Sizes of the set encoder.

    Parameters
    ----------
    x_feature_dim, xi_feature_dim:
        Number of instance features per first-stage item / per uncertainty component
        (the decision value itself is one more input).
    phi_dims:
        Hidden and output widths of the per-item encoders ``phi_x`` and ``phi_xi``.
    rho_dims:
        Hidden and output widths of the post-aggregation networks ``rho_x`` and ``rho_xi``.
    value_dims:
        Hidden widths of the value network ``psi`` (its output is a scalar).
    encoder:
        ``"separate"`` (the paper: one set encoder for ``x``, one for ``xi``) or
        ``"joint"`` (one encoder of the aligned items ``[x_i, xi_i, f_i]``; the
        ``xi_feature_dim`` features are then not used, since they equal the ``x`` ones).

    The paper's knapsack network is ``phi_dims=(16, 8)``, ``rho_dims=(64, 2)``,
    ``value_dims=(4,)``; the defaults are smaller so that the MILPs stay small.
    """

    x_feature_dim: int
    xi_feature_dim: int
    phi_dims: tuple[int, ...] = (16, 8)
    rho_dims: tuple[int, ...] = (32, 4)
    value_dims: tuple[int, ...] = (16,)
    encoder: str = "separate"

    def __post_init__(self) -> None:
        if self.encoder not in ("separate", "joint"):
            raise ValueError(f"encoder must be 'separate' or 'joint', got {self.encoder!r}")
        for name in ("x_feature_dim", "xi_feature_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative int, got {value!r}")
        for name in ("phi_dims", "rho_dims", "value_dims"):
            dims = tuple(getattr(self, name))
            if not dims or any(not isinstance(d, int) or d < 1 for d in dims):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {dims}")
            object.__setattr__(self, name, dims)

    def to_dict(self) -> dict:
        """Plain-data form (for ``torch.save`` / JSON)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> NetworkConfig:
        """Inverse of :meth:`to_dict`."""
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def mlp(dims: tuple[int, ...] | list[int], *, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``Linear -> ReLU -> ... -> Linear`` through the widths ``dims`` (no final ReLU)."""
    layers: list[nn.Module] = []
    for k in range(len(dims) - 1):
        layers.append(nn.Linear(dims[k], dims[k + 1], dtype=dtype))
        if k < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class SetValueNetwork(nn.Module):
    """DeepSets value network ``NN(x, xi)`` described in the module docstring.

    Parameters
    ----------
    config:
        The sizes; see :class:`NetworkConfig`.
    dtype:
        Parameter dtype (float64 by default so that the MILP embedding reproduces the
        forward pass to round-off).
    """

    def __init__(self, config: NetworkConfig, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.config = config
        c = config
        if c.encoder == "joint":
            self.phi = mlp((2 + c.x_feature_dim, *c.phi_dims), dtype=dtype)
            self.rho = mlp((c.phi_dims[-1], *c.rho_dims), dtype=dtype)
            self.psi = mlp((c.rho_dims[-1], *c.value_dims, 1), dtype=dtype)
            return
        self.phi_x = mlp((1 + c.x_feature_dim, *c.phi_dims), dtype=dtype)
        self.rho_x = mlp((c.phi_dims[-1], *c.rho_dims), dtype=dtype)
        self.phi_xi = mlp((1 + c.xi_feature_dim, *c.phi_dims), dtype=dtype)
        self.rho_xi = mlp((c.phi_dims[-1], *c.rho_dims), dtype=dtype)
        self.psi = mlp((2 * c.rho_dims[-1], *c.value_dims, 1), dtype=dtype)

    @property
    def joint(self) -> bool:
        """Whether the network reads aligned items ``[x_i, xi_i, f_i]`` (joint encoder)."""
        return self.config.encoder == "joint"

    @staticmethod
    def joint_items(x_items: torch.Tensor, xi_items: torch.Tensor) -> torch.Tensor:
        """``[x_i, xi_i, f_i]`` from ``x_items = [x_i, f_i]`` and ``xi_items = [xi_i, g_i]``."""
        return torch.cat([x_items[..., :1], xi_items[..., :1], x_items[..., 1:]], dim=-1)

    @staticmethod
    def _encode(
        phi: nn.Sequential, rho: nn.Sequential, items: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        h = phi(items)  # (batch, n, phi_out)
        if mask is not None:
            h = h * mask.unsqueeze(-1).to(h.dtype)
        return rho(h.sum(dim=-2))

    def encode_x(self, x_items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``rho_x(sum_i phi_x(x_items[..., i, :]))``; ``x_items`` is ``(batch, n, 1 + d_x)``."""
        if self.joint:
            raise ValueError("a joint-encoder network has no separate x code")
        return self._encode(self.phi_x, self.rho_x, x_items, mask)

    def encode_xi(self, xi_items: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``rho_xi(sum_j phi_xi(xi_items[..., j, :]))``; ``xi_items`` is ``(batch, m, 1 + d_xi)``."""
        if self.joint:
            raise ValueError("a joint-encoder network has no separate xi code")
        return self._encode(self.phi_xi, self.rho_xi, xi_items, mask)

    def value(self, x_code: torch.Tensor, xi_code: torch.Tensor) -> torch.Tensor:
        """``psi([x_code, xi_code])`` with the trailing singleton dimension dropped."""
        return self.psi(torch.cat([x_code, xi_code], dim=-1)).squeeze(-1)

    def forward(
        self,
        x_items: torch.Tensor,
        xi_items: torch.Tensor,
        x_mask: torch.Tensor | None = None,
        xi_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled prediction, shape ``(batch,)``.

        ``x_items[b, i] = [x_i, f_i]`` and ``xi_items[b, j] = [xi_j, g_j]``; the masks
        (``(batch, n)`` / ``(batch, m)``, 1 for real items, 0 for padding) may be omitted
        when no item is padding.
        """
        for name, items, dim in (
            ("x_items", x_items, 1 + self.config.x_feature_dim),
            ("xi_items", xi_items, 1 + self.config.xi_feature_dim),
        ):
            if items.ndim != 3 or items.shape[-1] != dim:
                raise ValueError(
                    f"{name} must have shape (batch, n_items, {dim}), got {tuple(items.shape)}"
                )
        if self.joint:
            if x_items.shape[:2] != xi_items.shape[:2]:
                raise ValueError(
                    "the joint encoder needs as many uncertainty components as first-stage "
                    f"items, got {tuple(x_items.shape[:2])} and {tuple(xi_items.shape[:2])}"
                )
            code = self._encode(self.phi, self.rho, self.joint_items(x_items, xi_items), x_mask)
            return self.psi(code).squeeze(-1)
        return self.value(self.encode_x(x_items, x_mask), self.encode_xi(xi_items, xi_mask))
