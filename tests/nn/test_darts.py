"""bilevel.nn.darts: DARTS and RARTS on the two-variable toy (fixed points in closed form), a
RARTS sweep against explicit gradient steps, the batched search cell against a per-operation
evaluation, and the discrete cells."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilevel.nn.darts import (
    DARTS,
    OPS,
    RARTS,
    CellNetwork,
    Genotype,
    SearchNetwork,
    derive,
    edges_of,
    make_op,
    random_genotype,
)


class _Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(value, dtype=torch.float64))


def l_train(m, h, batch):  # w^2 - 2 a w + a^2: w*(a) = a
    return m.w**2 - 2 * h["a"] * m.w + h["a"] ** 2


def l_val(m, h, batch):  # a w - 2 a + 1: on w = a, (a - 1)^2, minimised at a = 1
    return h["a"] * m.w - 2 * h["a"] + 1


@pytest.mark.parametrize("mode", ["fd", "unrolled"])
@pytest.mark.parametrize(("order", "xi", "expected"), [(1, None, 2.0), (2, 0.25, 4 / 3), (2, 0.5, 1.0)])
def test_darts_reaches_the_toy_fixed_points(order, xi, expected, mode) -> None:
    """Exact w steps (lr 1/2 gives w = a) alternate with a steps; the hypergradient
    a - 2 + 2 xi a vanishes at a = w = 2 / (1 + 2 xi): (2, 2), (4/3, 4/3), (1, 1)."""
    model = _Scalar(-2.0)  # the paper's starting point (a, w) = (2, -2)
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    search = DARTS(
        model, {"a": a}, l_train, l_val,
        weight_optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        arch_optimizer=torch.optim.SGD([a], lr=0.4),
        train_data=None, val_data=None, order=order, xi=xi, mode=mode,
    )
    result = search.fit(60)  # a contracts by 1 - 0.4 (1 + 2 xi) <= 0.6 per step
    assert result.steps == 60
    assert float(a.detach()) == pytest.approx(expected, abs=1e-9)
    assert float(model.w.detach()) == pytest.approx(expected, abs=1e-9)


def test_darts_default_xi_is_the_weight_learning_rate() -> None:
    model = _Scalar(-2.0)
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    search = DARTS(
        model, {"a": a}, l_train, l_val,
        weight_optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
        arch_optimizer=torch.optim.SGD([a], lr=0.4), train_data=None, val_data=None,
    )
    assert search.xi == 0.5 and search.method == "fd"
    search.fit(60)
    assert float(a.detach()) == pytest.approx(1.0, abs=1e-9)  # xi = 1/2: the bilevel optimum
    with pytest.raises(ValueError, match="order"):
        DARTS(model, {"a": a}, l_train, l_val, weight_optimizer=search.inner_optimizer,
              arch_optimizer=search.outer_optimizer, train_data=None, val_data=None, order=3)
    with pytest.raises(ValueError, match="mode"):
        DARTS(model, {"a": a}, l_train, l_val, weight_optimizer=search.inner_optimizer,
              arch_optimizer=search.outer_optimizer, train_data=None, val_data=None, mode="cg")


def rarts_fixed_point(lam: float, beta: float) -> tuple[float, float, float]:
    """Stationary point of L = (a y - 2 a + 1) + lam (w - a)^2 + beta/2 (y - w)^2:
    dL/dy = a + beta (y - w) = 0, dL/dw = 2 lam (w - a) - beta (y - w) = 0 give w = a (1 - 1/(2 lam)),
    y = w - a / beta; dL/da = y - 2 + 2 lam (a - w) = y - 2 + a = 0 then gives a."""
    a = 4 * lam * beta / (4 * lam * beta - beta - 2 * lam)
    return a, a * (1 - 1 / (2 * lam)), 2 - a


@pytest.mark.parametrize(("lam", "beta", "sweeps"), [(1.0, 2.0, 80), (1.0, 1.0, 150), (10.0, 10.0, 450)])
def test_rarts_reaches_the_stationary_point_of_the_relaxed_toy(lam: float, beta: float, sweeps: int) -> None:
    a_star, w_star, y_star = rarts_fixed_point(lam, beta)
    w, y = _Scalar(-2.0), _Scalar(0.5)
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    # each block's step is 1 / its curvature: exact block minimisation (Gauss-Seidel)
    search = RARTS(
        w, {"a": a}, l_train, l_val, val_model=y,
        weight_optimizer=torch.optim.SGD(w.parameters(), lr=1 / (2 * lam + beta)),
        val_weight_optimizer=torch.optim.SGD(y.parameters(), lr=1 / beta),
        arch_optimizer=torch.optim.SGD([a], lr=1 / (2 * lam)),
        train_data=None, val_data=None, penalty=lam, coupling=beta,
    )
    search.fit(sweeps)
    got = (float(a.detach()), float(w.w.detach()), float(y.w.detach()))
    assert got == pytest.approx((a_star, w_star, y_star), abs=1e-8)


def test_rarts_fixed_point_tends_to_the_bilevel_optimum() -> None:
    """a* = 1 / (1 - 1/(4 lam) - 1/(2 beta)): the relaxation's bias is O(1/lam + 1/beta),
    and (a, w, y) -> (1, 1, 1) as lam, beta -> infinity."""
    for lam, beta in [(10.0, 10.0), (100.0, 1000.0), (1e4, 1e4)]:
        a, w, y = rarts_fixed_point(lam, beta)
        assert a - 1 == pytest.approx(1 / (1 - 1 / (4 * lam) - 1 / (2 * beta)) - 1, rel=1e-9)
        assert 0 < a - 1 <= 1 / (2 * lam) + 1 / beta
    assert rarts_fixed_point(1e6, 1e6) == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)


def test_rarts_fixed_points_by_numerical_stationarity() -> None:
    """The closed form against a direct solve of grad L = 0 (a 3x3 linear system)."""
    for lam, beta in [(1.0, 2.0), (3.0, 0.7), (10.0, 10.0)]:
        # L(w, y, a) = a y - 2 a + 1 + lam (w - a)^2 + beta/2 (y - w)^2 is quadratic: H z = -g0
        H = np.array([[2 * lam + beta, -beta, -2 * lam], [-beta, beta, 1.0], [-2 * lam, 1.0, 2 * lam]])
        w, y, a = np.linalg.solve(H, np.array([0.0, 0.0, 2.0]))
        assert rarts_fixed_point(lam, beta) == pytest.approx((a, w, y), rel=1e-12)


@pytest.mark.parametrize(("lam", "beta"), [(1.0, 2.0), (3.0, 0.5)])
def test_rarts_sweeps_on_the_toy_match_hand_derived_updates(lam: float, beta: float) -> None:
    """L = (a y - 2 a + 1) + lam (w^2 - 2 a w + a^2) + beta/2 (y - w)^2; by hand:
    w+ = w - eta_w (2 lam (w - a) + beta (w - y)),  y+ = y - eta_y (a + beta (y - w+)),
    a+ = a - eta_a (y+ - 2 + 2 lam (a - w+))."""
    w, y = _Scalar(-2.0), _Scalar(0.5)
    a = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
    eta_w, eta_y, eta_a = 0.1, 0.2, 0.05
    search = RARTS(
        w, {"a": a}, l_train, l_val, val_model=y,
        weight_optimizer=torch.optim.SGD(w.parameters(), lr=eta_w),
        val_weight_optimizer=torch.optim.SGD(y.parameters(), lr=eta_y),
        arch_optimizer=torch.optim.SGD([a], lr=eta_a),
        train_data=None, val_data=None, penalty=lam, coupling=beta,
    )
    ww, yy, aa = -2.0, 0.5, 2.0
    for _ in range(5):
        record = search.one_step()
        ww = ww - eta_w * (2 * lam * (ww - aa) + beta * (ww - yy))
        yy = yy - eta_y * (aa + beta * (yy - ww))
        aa = aa - eta_a * (yy - 2 + 2 * lam * (aa - ww))
        assert (w.w.item(), y.w.item(), a.item()) == pytest.approx((ww, yy, aa), rel=1e-12, abs=1e-12)
        assert record["distance_sq"] == pytest.approx((yy - ww) ** 2, rel=1e-12)


def test_one_rarts_sweep_is_three_gauss_seidel_gradient_steps() -> None:
    torch.manual_seed(0)
    X, Xv = torch.randn(12, 3, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    y, yv = torch.randn(12, dtype=torch.float64), torch.randn(10, dtype=torch.float64)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()

    def loss(m, h, batch):
        out = m(batch[0]).squeeze(-1) * h["gain"].sum() + h["gain"][0] ** 2
        return ((out - batch[1]) ** 2).mean()

    model, val_model = net(), net()
    gain = torch.tensor([0.7, 0.2], dtype=torch.float64, requires_grad=True)
    w0 = {k: v.detach().clone() for k, v in model.named_parameters()}
    y0 = {k: v.detach().clone() for k, v in val_model.named_parameters()}
    g0 = gain.detach().clone()
    lam, beta, eta_w, eta_y, eta_a = 0.8, 2.5, 0.05, 0.03, 0.02
    search = RARTS(
        model, {"gain": gain}, loss, loss, val_model=val_model,
        weight_optimizer=torch.optim.SGD(model.parameters(), lr=eta_w),
        val_weight_optimizer=torch.optim.SGD(val_model.parameters(), lr=eta_y),
        arch_optimizer=torch.optim.SGD([gain], lr=eta_a),
        train_data=[(X, y)], val_data=[(Xv, yv)], penalty=lam, coupling=beta,
    )
    record = search.one_step()

    from torch.func import grad

    def L(m, params, g, batch):
        return loss(_Call(m, params), {"gain": g}, batch)

    def coupling(yp, wp):
        return 0.5 * beta * sum(((yp[k] - wp[k]) ** 2).sum() for k in wp)

    gw = grad(lambda p: lam * L(model, p, g0, (X, y)) + coupling(y0, p))(w0)
    w1 = {k: w0[k] - eta_w * gw[k] for k in w0}
    gy = grad(lambda p: L(val_model, p, g0, (Xv, yv)) + coupling(p, w1))(y0)
    y1 = {k: y0[k] - eta_y * gy[k] for k in y0}
    ga = grad(lambda g: L(val_model, y1, g, (Xv, yv)) + lam * L(model, w1, g, (X, y)))(g0)
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.detach(), w1[k], rtol=1e-12, atol=1e-12)
    for k, p in val_model.named_parameters():
        torch.testing.assert_close(p.detach(), y1[k], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gain.detach(), g0 - eta_a * ga, rtol=1e-12, atol=1e-12)
    assert record["distance_sq"] == pytest.approx(sum(float(((y1[k] - w1[k]) ** 2).sum()) for k in w1))
    assert record["inner_loss"] == pytest.approx(float(L(model, w0, g0, (X, y))))


class _Call(nn.Module):
    """``module`` called with the parameters ``params`` (torch.func.functional_call)."""

    def __init__(self, module: nn.Module, params: dict) -> None:
        super().__init__()
        self.module, self.params = module, params

    def forward(self, x):
        return torch.func.functional_call(self.module, self.params, (x,))


def test_search_network_matches_a_per_operation_evaluation() -> None:
    """The batched cell against the definition: node j = sum_i sum_o softmax(alpha_ij)_o
    o(h_i), each o a separate module (batch norm without affine, batch statistics)."""
    torch.manual_seed(0)
    net = SearchNetwork(7, 3, dim=5, nodes=3).double()
    alpha = torch.randn(len(net.edges), len(OPS), dtype=torch.float64)
    x = torch.randn(11, 7, dtype=torch.float64)
    weights = torch.softmax(alpha, -1)
    states = [net.stem(x)]
    for j in range(1, 4):
        total = 0
        for e, (i, dst) in enumerate(net.edges):
            if dst != j:
                continue
            for o, name in enumerate(OPS):
                op = make_op(name, 5, affine=False).double().train()
                if name in net.parametric:
                    op.linear.weight.data.copy_(net.edge_weight[e, net.parametric.index(name)])
                total = total + weights[e, o] * op(states[i])
        states.append(total)
    expected = net.classifier(torch.cat(states[1:], 1))
    torch.testing.assert_close(net(x, alpha), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="alpha must have shape"):
        net(x, alpha[:-1])
    with pytest.raises(ValueError, match="ops must be"):
        SearchNetwork(7, 3, ops=("none",))
    # a smaller operation set (no skip connection) runs too
    small = SearchNetwork(7, 3, dim=5, nodes=2, ops=("none", "relu", "tanh")).double()
    assert small(x, small.init_alpha().double()).shape == (11, 3)


def test_derive_keeps_the_strongest_edges_and_operations() -> None:
    nodes = 3
    edges = edges_of(nodes)  # (0,1) (0,2) (1,2) (0,3) (1,3) (2,3)
    assert edges == [(0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3)]
    alpha = torch.zeros(len(edges), len(OPS))
    idx = {name: i for i, name in enumerate(OPS)}
    alpha[0, idx["tanh"]] = 2.0                           # node 1: its only edge
    alpha[1, idx["none"]] = 9.0                           # 'none' is never chosen ...
    alpha[1, idx["relu"]] = 1.0                           # ... the best other op counts
    alpha[2, idx["linear"]] = 3.0
    alpha[3, idx["sigmoid"]] = 0.5
    alpha[4, idx["skip_connect"]] = 4.0
    alpha[5, idx["relu"]] = 2.5
    g = derive(alpha, nodes)
    # node 2: edge (1,2) linear is strong; edge (0,2)'s relu weight is small next to 'none'
    # but it is the only other input. node 3 keeps skip(1) and relu(2), drops sigmoid(0).
    assert g.edges == ((1, 0, "tanh"), (2, 0, "relu"), (2, 1, "linear"), (3, 1, "skip_connect"), (3, 2, "relu"))
    assert str(g) == "1 = tanh(0); 2 = relu(0) + linear(1); 3 = skip_connect(1) + relu(2)"
    assert derive(alpha, nodes, k=1).edges == ((1, 0, "tanh"), (2, 1, "linear"), (3, 1, "skip_connect"))


def test_random_genotypes_have_the_derived_size_and_build() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        g = random_genotype(4, rng)
        assert [sum(1 for n, _, _ in g.edges if n == j) for j in range(1, 5)] == [1, 2, 2, 2]
        assert "none" not in g.ops_used()
    net = CellNetwork(g, 7, 3, dim=5)
    assert net(torch.randn(6, 7)).shape == (6, 3)
    with pytest.raises(ValueError, match="no incoming edge"):
        Genotype(2, ((1, 0, "relu"),))
    with pytest.raises(ValueError, match="bad edge"):
        Genotype(1, ((1, 1, "relu"),))
    with pytest.raises(ValueError, match="operation must be"):
        Genotype(1, ((1, 0, "none"),))


def test_random_genotype_like_a_cell_has_its_exact_size() -> None:
    """Same inputs per node, same number of skip connections, hence the same parameter count
    (every parametric operation is a dim x dim Linear and an affine batch norm)."""
    target = Genotype(4, ((1, 0, "tanh"), (2, 0, "skip_connect"), (2, 1, "relu"), (3, 0, "linear"),
                          (3, 2, "skip_connect"), (4, 1, "sigmoid"), (4, 3, "relu")))
    count = lambda g: sum(p.numel() for p in CellNetwork(g, 7, 3, dim=5).parameters())  # noqa: E731
    rng = np.random.default_rng(3)
    seen = set()
    for _ in range(30):
        g = random_genotype(4, rng, like=target)
        assert [sum(1 for n, _, _ in g.edges if n == j) for j in range(1, 5)] == [1, 2, 2, 2]
        assert g.ops_used().count("skip_connect") == 2
        assert count(g) == count(target) == 5 * 7 + 5 + 5 * (5 * 5 + 2 * 5) + 3 * (4 * 5) + 3
        seen.add(g.edges)
    assert len(seen) > 20  # genuinely random
    with pytest.raises(ValueError, match="cannot reproduce"):
        random_genotype(4, rng, ops=("none", "relu"), like=target)


def test_darts_search_step_runs_on_the_cell_with_both_second_order_modes() -> None:
    """Second order by finite differences and by the exact unrolled step agree to O(eps^2)
    on the cell (same weights, same batches, one architecture step)."""
    torch.manual_seed(0)
    X, y = torch.randn(40, 6, dtype=torch.float64), torch.randint(0, 3, (40,))
    Xv, yv = torch.randn(30, 6, dtype=torch.float64), torch.randint(0, 3, (30,))

    def loss(m, h, batch):
        return F.cross_entropy(m(batch[0], h["alpha"]), batch[1])

    steps = {}
    for mode in ("fd", "unrolled"):
        torch.manual_seed(1)
        net = SearchNetwork(6, 3, dim=4, nodes=2).double()
        alpha = net.init_alpha(scale=0.5, generator=torch.Generator().manual_seed(2)).double().detach().requires_grad_(True)
        a0 = alpha.detach().clone()
        search = DARTS(
            net, {"alpha": alpha}, loss, loss,
            weight_optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
            arch_optimizer=torch.optim.SGD([alpha], lr=1.0),
            train_data=[(X, y)], val_data=[(Xv, yv)], order=2, mode=mode, xi=0.1, epsilon=1e-4,
        )
        search.fit(1)
        steps[mode] = a0 - alpha.detach()
    torch.testing.assert_close(steps["fd"], steps["unrolled"], rtol=1e-5, atol=1e-8)
