"""bilevel.nn.hypergradient against exact oracles, in float64 on small modules.

Oracles: closed-form ridge solutions differentiated by autograd; explicit Hessians and
cross-derivative matrices of the flattened parameters (``torch.autograd.functional``);
central differences of solutions re-trained to 1e-12; central differences of the unrolled
map itself.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call

import bilevel.nn as bnn
from bilevel.errors import ConvergenceWarning, NonFiniteError

DT = torch.float64


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    yield
    torch.set_default_dtype(previous)


# ---------------------------------------------------------------------------- helpers
def ridge_data(seed: int = 0, n: int = 40, d: int = 5):
    g = torch.Generator().manual_seed(seed)
    X, y = torch.randn(n, d, generator=g), torch.randn(n, generator=g)
    Xv, yv = torch.randn(30, d, generator=g), torch.randn(30, generator=g)
    return (X, y), (Xv, yv)


def mse(m, h, batch):
    X, y = batch
    return ((m(X).squeeze(-1) - y) ** 2).mean()


def ridge_inner(m, h, batch):
    # weight decay read from the module itself: its curvature must reach the hypergradient
    decay = sum((p**2).sum() for p in m.parameters())
    return mse(m, h, batch) + h["log_wd"].exp().sum() * 0.1 * decay


def closed_form_hypergrad(train, val, log_wd: torch.Tensor) -> torch.Tensor:
    """d/d log_wd of the validation MSE at the exact ridge solution (bias penalised too)."""
    X, y = train
    Xv, yv = val
    n = X.shape[0]

    def value(lw: torch.Tensor) -> torch.Tensor:
        Xa = torch.cat([X, torch.ones(n, 1)], 1)
        A = 2 * Xa.T @ Xa / n + 2 * 0.1 * lw.exp().sum() * torch.eye(Xa.shape[1])
        w = torch.linalg.solve(A, 2 * Xa.T @ y / n)
        return ((torch.cat([Xv, torch.ones(len(yv), 1)], 1) @ w - yv) ** 2).mean()

    return torch.autograd.functional.jacobian(value, log_wd)


def train_to_stationarity(model, loss, tol: float = 1e-11) -> None:
    """Minimise ``loss(model)``: L-BFGS, then Newton steps with the explicit Hessian of the
    flattened parameters until ``||grad|| < tol``."""
    opt = torch.optim.LBFGS(
        model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-12, tolerance_change=0,
        history_size=50, line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        value = loss(model)
        value.backward()
        return value

    opt.step(closure)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    sizes = [p.numel() for p in params]

    def flat_loss(th):
        tensors = {n: c.reshape(p.shape) for n, p, c in zip(names, params, torch.split(th, sizes))}
        return functional_call(_Wrap(model), {f"m.{k}": v for k, v in tensors.items()}, (lambda m, h, b: loss(m), None, None))

    for _ in range(20):
        th = torch.cat([p.detach().reshape(-1) for p in params])
        g = torch.autograd.functional.jacobian(flat_loss, th)
        if float(g.norm()) < tol:
            break
        step = torch.linalg.solve(torch.autograd.functional.hessian(flat_loss, th), g)
        with torch.no_grad():
            for p, c in zip(params, torch.split(th - step, sizes)):
                p.copy_(c.reshape(p.shape))
    th = torch.cat([p.detach().reshape(-1) for p in params])
    grad_norm = float(torch.autograd.functional.jacobian(flat_loss, th).norm())
    assert grad_norm < tol, grad_norm


def flat_oracle(model, hp, inner, outer, ib, ob):
    """grad_lam F - B^T H^{-1} grad_theta F with explicit matrices on flat vectors."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    hnames = list(hp)
    hshapes = [hp[k].shape for k in hnames]
    hsizes = [hp[k].numel() for k in hnames]

    def unflat(v, ns, shp, sz):
        return {n: t.reshape(s) for n, t, s in zip(ns, torch.split(v, sz), shp)}

    def call(loss, th, la, batch):
        params = unflat(th, names, shapes, sizes)
        lam = unflat(la, hnames, hshapes, hsizes)
        wrapper = _Wrap(model)
        return functional_call(wrapper, {f"m.{k}": v for k, v in params.items()}, (loss, lam, batch))

    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    la0 = torch.cat([hp[k].detach().reshape(-1) for k in hnames])
    f = lambda th, la: call(inner, th, la, ib)  # noqa: E731
    F = lambda th, la: call(outer, th, la, ob)  # noqa: E731
    H = torch.autograd.functional.hessian(lambda th: f(th, la0), th0)
    B = torch.autograd.functional.jacobian(
        lambda la: torch.autograd.functional.jacobian(lambda th: f(th, la), th0, create_graph=True),
        la0,
    )  # B[i, j] = d2 f / dtheta_i dlam_j
    gth, gla = torch.autograd.functional.jacobian(F, (th0, la0))
    u = torch.linalg.solve(H, gth)
    return unflat(gla - B.T @ u, hnames, hshapes, hsizes), H, B, gth, gla


class _Wrap(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, loss, lam, batch):
        return loss(self.m, lam, batch)


class MLP(nn.Module):
    def __init__(self, d: int = 4, h: int = 6, out: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(d, h)
        self.fc2 = nn.Linear(h, out)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def classification_data(seed: int, n: int = 24, d: int = 4, k: int = 3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    y = torch.randint(0, k, (n,), generator=g)
    return X, y


def weighted_ce(m, h, batch):
    X, y = batch
    losses = nn.functional.cross_entropy(m(X), y, reduction="none")
    wd = sum((p**2).sum() for p in m.parameters())
    return (torch.sigmoid(h["w"]) * losses).mean() + 1e-2 * wd


def plain_ce(m, h, batch):
    X, y = batch
    return nn.functional.cross_entropy(m(X), y)


# ---------------------------------------------------------------------------- implicit modes
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_matches_closed_form_ridge_with_weight_decay_read_from_parameters(seed: int) -> None:
    train, val = ridge_data(seed)
    model = nn.Linear(5, 1)
    hp = {"log_wd": torch.tensor([0.3 * seed - 0.5], requires_grad=True)}
    train_to_stationarity(model, lambda mod: ridge_inner(mod, hp, train))
    g = bnn.hypergradient(model, hp, ridge_inner, mse, train, val, method="cg", tol=1e-12)
    expected = closed_form_hypergrad(train, val, hp["log_wd"].detach())
    torch.testing.assert_close(g["log_wd"], expected, rtol=1e-8, atol=1e-12)
    assert g.info.linear_solve.converged and g.info.method == "cg"
    # the weight-decay curvature matters: dropping it would change the answer
    no_decay = closed_form_hypergrad(train, val, torch.tensor([-30.0]))
    assert not torch.allclose(expected, no_decay, rtol=1e-2)


def test_neumann_converges_to_the_implicit_hypergradient() -> None:
    train, val = ridge_data(3)
    model = nn.Linear(5, 1)
    hp = {"log_wd": torch.tensor([0.0], requires_grad=True)}
    train_to_stationarity(model, lambda mod: ridge_inner(mod, hp, train))
    exact = closed_form_hypergrad(train, val, hp["log_wd"].detach())
    errors = []
    for steps in (5, 20, 200):
        g = bnn.hypergradient(model, hp, ridge_inner, mse, train, val, method="neumann", steps=steps)
        errors.append(float((g["log_wd"] - exact).abs().max()))
    assert errors[2] < 1e-9 * max(1.0, float(exact.abs().max()))
    assert errors[0] > errors[1] > errors[2]


def test_neumann_default_step_estimates_the_largest_hessian_eigenvalue() -> None:
    """The default Neumann step is 1 / max|eig(H)|, estimated by bilevel.linalg.lanczos:
    against eigvalsh of the explicit Hessian (exact with as many products as parameters,
    a lower bound within 1% with the default 20 on this 51-parameter MLP)."""
    from bilevel.nn._functional import FunctionalModel
    from bilevel.nn._hypergradient import _largest_eigenvalue

    X, y = classification_data(0)
    model = MLP(seed=0)
    hp = {"w": torch.ones(len(y)).requires_grad_(True)}
    train_to_stationarity(model, lambda mod: weighted_ce(mod, hp, (X, y)))
    _, H, *_ = flat_oracle(model, hp, weighted_ce, plain_ce, (X, y), (X, y))
    exact = float(torch.linalg.eigvalsh(H).abs().max())
    from bilevel.implicit import Linearisation

    fm = FunctionalModel(model, hp)
    lin = Linearisation.of_objective(fm.bind(weighted_ce, (X, y)), fm.theta(), (fm.lam(),))
    full = _largest_eigenvalue(lin, fm.theta(), None, H.shape[0])
    assert full == pytest.approx(exact, rel=1e-8)
    few = _largest_eigenvalue(lin, fm.theta(), None, 20)
    assert 0.99 * exact <= few <= exact * (1 + 1e-10)


@pytest.mark.parametrize("seed", [0, 1])
def test_cg_on_mlp_matches_explicit_hessian(seed: int) -> None:
    X, y = classification_data(seed)
    Xv, yv = classification_data(seed + 100)
    model = MLP(seed=seed)
    g = torch.Generator().manual_seed(seed)
    hp = {"w": torch.randn(len(y), generator=g).requires_grad_(True)}
    train_to_stationarity(model, lambda mod: weighted_ce(mod, hp, (X, y)))
    got = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), tol=1e-12, maxiter=500)
    expected, H, *_ = flat_oracle(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv))
    assert torch.linalg.eigvalsh(H).min() > 0  # a strict local minimum: the IFT applies
    torch.testing.assert_close(got["w"], expected["w"], rtol=1e-7, atol=1e-11)


def test_cg_matches_central_differences_of_retrained_solutions() -> None:
    X, y = classification_data(5, n=16)
    Xv, yv = classification_data(6, n=16)
    hp = {"w": torch.zeros(16, requires_grad=True)}
    model = MLP(seed=5)
    train_to_stationarity(model, lambda mod: weighted_ce(mod, hp, (X, y)))
    got = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), tol=1e-12, maxiter=500)
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def retrained_value(w: torch.Tensor) -> float:
        m = MLP(seed=5)
        m.load_state_dict(start)  # continue from the solution: same local minimum
        h = {"w": w}
        train_to_stationarity(m, lambda mod: weighted_ce(mod, h, (X, y)))
        return float(plain_ce(m, h, (Xv, yv)).detach())

    h = 1e-4
    for i in (0, 7):
        e = torch.zeros(16)
        e[i] = h
        fd = (retrained_value(hp["w"].detach() + e) - retrained_value(hp["w"].detach() - e)) / (2 * h)
        assert abs(float(got["w"][i]) - fd) < 1e-6 * max(1.0, abs(fd)) + 1e-8


def test_module_hyperparameters_weighting_network() -> None:
    X, y = classification_data(7)
    Xv, yv = classification_data(8)
    model = MLP(seed=7)
    torch.manual_seed(1)
    wnet = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1))

    def inner(m, net, batch):
        Xb, yb = batch
        losses = nn.functional.cross_entropy(m(Xb), yb, reduction="none")
        weights = torch.sigmoid(net(losses.detach().unsqueeze(-1))).squeeze(-1)
        return (weights * losses).mean() + 1e-2 * sum((p**2).sum() for p in m.parameters())

    train_to_stationarity(model, lambda mod: inner(mod, wnet, (X, y)))
    got = bnn.hypergradient(model, wnet, inner, plain_ce, (X, y), (Xv, yv), tol=1e-12, maxiter=500)
    assert list(got) == [n for n, _ in wnet.named_parameters()]

    # oracle: the same formula with the network's parameters as a dict of tensors
    names = list(got)
    hp = {n: p.detach().clone().requires_grad_(True) for n, p in wnet.named_parameters()}

    def inner_dict(m, h, batch):
        Xb, yb = batch
        losses = nn.functional.cross_entropy(m(Xb), yb, reduction="none")
        weights = torch.sigmoid(functional_call(wnet, h, (losses.detach().unsqueeze(-1),))).squeeze(-1)
        return (weights * losses).mean() + 1e-2 * sum((p**2).sum() for p in m.parameters())

    expected, *_ = flat_oracle(model, hp, inner_dict, plain_ce, (X, y), (Xv, yv))
    for n in names:
        torch.testing.assert_close(got[n], expected[n], rtol=1e-7, atol=1e-11)


# ---------------------------------------------------------------------------- fd (DARTS)
def test_fd_matches_the_exact_one_step_darts_gradient() -> None:
    X, y = classification_data(9)
    Xv, yv = classification_data(10)
    model = MLP(seed=9)
    hp = {"w": torch.linspace(-1, 1, len(y)).requires_grad_(True)}
    xi = 0.05
    # exact second-order DARTS = reverse mode through one SGD step of size xi
    exact = bnn.hypergradient(
        model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), method="unrolled", steps=1,
        optimizer=bnn.optim.SGD(lr=xi),
    )
    # DARTS evaluates B at theta (not theta'): O(xi^2) apart from the unrolled gradient,
    # plus the O(eps^2) finite-difference error
    errs = []
    for eps in (1e-1, 1e-2):
        fd = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), method="fd", xi=xi, epsilon=eps)
        errs.append(float((fd["w"] - exact["w"]).abs().max()))
    scale = float(exact["w"].abs().max())
    assert errs[1] < 5e-3 * scale
    # with the one-step DARTS formula written out with explicit matrices
    _, H, B, _, _ = flat_oracle(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv))
    th0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    g_th = torch.autograd.functional.jacobian(
        lambda th: _flat_call(model, weighted_ce, th, hp["w"].detach(), (X, y)), th0
    )
    th1 = th0 - xi * g_th
    gF_th, gF_la = torch.autograd.functional.jacobian(
        lambda th, la: _flat_call(model, plain_ce, th, la, (Xv, yv)), (th1, hp["w"].detach())
    )
    darts = gF_la - xi * B.T @ gF_th
    fd = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), method="fd", xi=xi, epsilon=1e-3)
    torch.testing.assert_close(fd["w"], darts, rtol=1e-5, atol=1e-9)


def _flat_call(model, loss, th, w, batch):
    sizes = [p.numel() for p in model.parameters()]
    params = {
        n: t.reshape(p.shape)
        for (n, p), t in zip(model.named_parameters(), torch.split(th, sizes))
    }
    return functional_call(_Wrap(model), {f"m.{k}": v for k, v in params.items()}, (loss, {"w": w}, batch))


class _Scalar(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(value))


@pytest.mark.parametrize(("xi", "expected"), [(0.0, 2.0), (0.25, 4 / 3), (0.5, 1.0)])
def test_darts_toy_fixed_points(xi: float, expected: float) -> None:
    """L_train = w^2 - 2 a w + a^2, L_val = a w - 2 a + 1 (the DARTS paper's toy): alternating
    an exact inner step with fd hypergradient steps on a converges to a = 2 / (1 + 2 xi)."""
    model = _Scalar(0.0)
    hp = {"a": torch.tensor(0.0, requires_grad=True)}
    inner = lambda m, h, b: m.w**2 - 2 * h["a"] * m.w + h["a"] ** 2  # noqa: E731
    outer = lambda m, h, b: h["a"] * m.w - 2 * h["a"] + 1  # noqa: E731
    for _ in range(400):
        with torch.no_grad():
            model.w -= 0.5 * 2 * (model.w - hp["a"])  # exact minimiser: w = a
        g = bnn.hypergradient(model, hp, inner, outer, None, None, method="fd", xi=xi)
        with torch.no_grad():
            hp["a"] -= 0.2 * g["a"]
    assert abs(float(hp["a"].detach()) - expected) < 1e-8
    assert abs(float(model.w) - expected) < 1e-6


# ---------------------------------------------------------------------------- unrolled
@pytest.mark.parametrize(
    "optimizer",
    [bnn.optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3), bnn.optim.Adam(lr=0.01), bnn.optim.SGD(lr=0.1, momentum=0.5, nesterov=True)],
    ids=["sgd-momentum", "adam", "nesterov"],
)
def test_unrolled_matches_central_differences_of_the_unrolled_map(optimizer) -> None:
    X, y = classification_data(11)
    Xv, yv = classification_data(12)
    model = MLP(seed=11)
    hp = {"w": torch.linspace(-0.5, 0.5, len(y)).requires_grad_(True)}
    T = 6
    got = bnn.hypergradient(
        model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), method="unrolled", steps=T, optimizer=optimizer
    )
    theta0 = {k: v.detach() for k, v in model.named_parameters()}

    def unrolled_value(w: torch.Tensor) -> float:
        th, state = dict(theta0), optimizer.init(theta0)
        for _ in range(T):
            g = torch.func.grad(lambda t: functional_call(_Wrap(model), {f"m.{k}": v for k, v in t.items()}, (weighted_ce, {"w": w}, (X, y))))(th)
            th, state = optimizer.step(th, g, state)
        return float(functional_call(_Wrap(model), {f"m.{k}": v for k, v in th.items()}, (plain_ce, {"w": w}, (Xv, yv))))

    h = 1e-5
    for i in (0, 5, 17):
        e = torch.zeros(len(y))
        e[i] = h
        fd = (unrolled_value(hp["w"].detach() + e) - unrolled_value(hp["w"].detach() - e)) / (2 * h)
        assert abs(float(got["w"][i]) - fd) < 1e-7 * max(1.0, abs(fd)) + 1e-10
    # the end point is reported, and the model is untouched
    assert got.info.theta is not None
    assert all(torch.equal(theta0[k], p) for k, p in model.named_parameters())


def test_truncated_differentiates_only_the_last_steps() -> None:
    X, y = classification_data(13)
    Xv, yv = classification_data(14)
    model = MLP(seed=13)
    hp = {"w": torch.linspace(-0.5, 0.5, len(y)).requires_grad_(True)}
    opt = bnn.optim.SGD(lr=0.1, momentum=0.9)
    kw = dict(method="unrolled", optimizer=opt)
    full = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), steps=5, **kw)
    same = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), steps=5, truncate=5, **kw)
    torch.testing.assert_close(full["w"], same["w"], rtol=0, atol=0)
    # truncate=2 of 5 == the 2-step unrolled gradient started from the state after 3 steps,
    # with that state (momentum included) held constant
    trunc = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), steps=5, truncate=2, **kw)
    th = {k: v.detach() for k, v in model.named_parameters()}
    state = opt.init(th)
    for _ in range(3):
        g = torch.func.grad(lambda t: functional_call(_Wrap(model), {f"m.{k}": v for k, v in t.items()}, (weighted_ce, {"w": hp["w"].detach()}, (X, y))))(th)
        th, state = opt.step(th, g, state)

    def tail(w):
        t, s = dict(th), dict(state)
        for _ in range(2):
            g = torch.func.grad(lambda p: functional_call(_Wrap(model), {f"m.{k}": v for k, v in p.items()}, (weighted_ce, {"w": w}, (X, y))))(t)
            t, s = opt.step(t, g, s)
        return functional_call(_Wrap(model), {f"m.{k}": v for k, v in t.items()}, (plain_ce, {"w": w}, (Xv, yv)))

    expected = torch.func.grad(tail)(hp["w"].detach())
    torch.testing.assert_close(trunc["w"], expected, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(trunc["w"], full["w"], rtol=1e-3)


# ---------------------------------------------------------------------------- penalty
def test_penalty_bias_shrinks_like_one_over_the_multiplier() -> None:
    train, val = ridge_data(4)
    model = nn.Linear(5, 1)
    hp = {"log_wd": torch.tensor([-1.0], requires_grad=True)}
    train_to_stationarity(model, lambda mod: ridge_inner(mod, hp, train))
    exact = closed_form_hypergrad(train, val, hp["log_wd"].detach())
    errors = {}
    for mult in (10.0, 100.0):
        g = bnn.hypergradient(model, hp, ridge_inner, mse, train, val, method="penalty", multiplier=mult, steps=400, lr=0.2)
        errors[mult] = float((g["log_wd"] - exact).abs().max())
    assert errors[100.0] < errors[10.0] / 5
    assert errors[100.0] < 0.05 * float(exact.abs().max())
    g = bnn.hypergradient(model, hp, ridge_inner, mse, train, val, method="value_function", steps=1)
    assert g.info.method == "penalty"


# ---------------------------------------------------------------------------- no side effects
@pytest.mark.parametrize("method", ["cg", "neumann", "fd", "unrolled", "penalty"])
def test_model_parameters_and_buffers_bitwise_unchanged(method: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Linear(6, 3))
    X, y = classification_data(15)
    Xv, yv = classification_data(16)
    hp = {"w": torch.zeros(len(y), requires_grad=True)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    options = {"xi": 0.1} if method == "fd" else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # unconverged CG on an untrained model is expected here
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), method=method, **options)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert model[1].num_batches_tracked.item() == 0


# ---------------------------------------------------------------------------- bad input
def _setup():
    X, y = classification_data(17)
    model = MLP(seed=17)
    hp = {"w": torch.zeros(len(y), requires_grad=True)}
    return model, hp, (X, y), classification_data(18)


def test_unused_hyperparameter_is_named() -> None:
    model, hp, train, val = _setup()
    hp["unused"] = torch.zeros(3, requires_grad=True)
    with pytest.raises(ValueError, match=r"\['unused'\].*neither"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val)


def test_hyperparameter_without_grad_is_named() -> None:
    model, hp, train, val = _setup()
    hp["w"] = hp["w"].detach()
    with pytest.raises(ValueError, match=r"hparams\['w'\] does not require grad"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val)


def test_frozen_model_is_rejected() -> None:
    model, hp, train, val = _setup()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter that requires grad"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val)


def test_dtype_mismatch_is_named() -> None:
    model, hp, train, val = _setup()
    hp["w"] = torch.zeros(len(train[1]), dtype=torch.float32, requires_grad=True)
    with pytest.raises(TypeError, match=r"hyperparameter 'w' has dtype torch.float32"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val)


def test_dropout_in_train_mode_warns_with_the_module_name() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3))
    _, hp, train, val = _setup()
    with pytest.warns(UserWarning, match=r"dropout in training mode \(1\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=Warning)
            warnings.simplefilter("always", UserWarning)
            bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val, method="fd")
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val, method="fd")


def test_non_finite_loss_is_named() -> None:
    model, hp, train, val = _setup()
    bad = lambda m, h, b: plain_ce(m, h, b) * float("nan")  # noqa: E731
    with pytest.raises(NonFiniteError, match="outer_loss"):
        bnn.hypergradient(model, hp, weighted_ce, bad, train, val)


def test_bad_method_and_options() -> None:
    model, hp, train, val = _setup()
    with pytest.raises(ValueError, match="method must be one of"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val, method="magic")
    with pytest.raises(ValueError, match="truncate"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val, method="unrolled", steps=2, truncate=3)
    with pytest.raises(ValueError, match="alpha"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val, method="neumann", alpha=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword"):
        bnn.hypergradient(model, hp, weighted_ce, plain_ce, train, val, method="cg", stepz=3)


def test_fixed_cg_budget_costs_exactly_its_products() -> None:
    """A fixed budget (tol=0, maxiter=k) costs k products with H and one with B: one
    linearisation shared by H and B and no extra product for the final residual (the
    recursive one is reported, marked as such, and equals the true one to rounding); the
    result still matches a dense oracle built from the explicit Hessian's k-step CG."""
    X, y = classification_data(3)
    Xv, yv = classification_data(103)
    model = MLP(seed=3)
    hp = {"w": torch.zeros(len(y)).requires_grad_(True)}
    train_to_stationarity(model, lambda mod: weighted_ce(mod, hp, (X, y)))
    k = 4
    with pytest.warns(ConvergenceWarning, match="cg did not converge"):
        got = bnn.hypergradient(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv), tol=0.0, maxiter=k)
    info = got.info
    assert info.hvp_calls == k + 1 and info.linear_solve.iterations == k
    assert info.linear_solve.residual_source == "recursive"
    _, H, B, g_theta, g_lam = flat_oracle(model, hp, weighted_ce, plain_ce, (X, y), (Xv, yv))
    u, r = torch.zeros_like(g_theta), g_theta.clone()  # k steps of textbook CG on the matrix
    p = r.clone()
    for _ in range(k):
        Hp = H @ p
        a = (r @ r) / (p @ Hp)
        u, r_new = u + a * p, r - a * Hp
        p, r = r_new + ((r_new @ r_new) / (r @ r)) * p, r_new
    assert info.linear_solve.residual_norm == pytest.approx(float((g_theta - H @ u).norm()), rel=1e-8)
    torch.testing.assert_close(got["w"], g_lam - B.T @ u, rtol=1e-8, atol=1e-12)
