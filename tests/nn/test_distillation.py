"""Dataset distillation mechanics against exact oracles: the NTK against Monte Carlo
expectations, kernel ridge regression against direct and primal solves, the KIP gradient and
the implicit hypergradient of the logistic inner problem against float64 central
differences, and the coreset selections against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilevel.nn import distillation as D


def _relu_expectations(cov: torch.Tensor, n: int = 2_000_000, seed: int = 0) -> tuple[float, float]:
    """Monte Carlo ``2 E[relu(u) relu(v)]`` and ``2 E[1(u > 0) 1(v > 0)]`` for
    ``(u, v) ~ N(0, cov)`` (antithetic pairs)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n // 2, 2, generator=gen, dtype=torch.float64)
    z = torch.cat([z, -z])
    uv = z @ torch.linalg.cholesky(cov).T
    u, v = uv[:, 0], uv[:, 1]
    return 2 * float((u.clamp_min(0) * v.clamp_min(0)).mean()), 2 * float(((u > 0) & (v > 0)).double().mean())


@pytest.mark.parametrize(("depth", "bias"), [(1, 0.0), (2, 0.3)])
def test_ntk_matches_the_recursion_with_monte_carlo_expectations(depth: int, bias: float) -> None:
    torch.manual_seed(0)
    x, xp = torch.randn(6), torch.randn(6)
    d = 6
    s = torch.tensor([[x @ x, x @ xp], [x @ xp, xp @ xp]]) / d + bias
    theta = s[0, 1].item()
    for h in range(depth):
        e_relu, e_step = _relu_expectations(s, seed=h)
        z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(10 + h), dtype=torch.float64)
        diag = [2 * float((s[i, i].sqrt() * z).clamp_min(0).pow(2).mean()) for i in (0, 1)]
        theta = theta * e_step + e_relu + bias
        s = torch.tensor([[diag[0] + bias, e_relu + bias], [e_relu + bias, diag[1] + bias]])
    k = D.ntk_kernel(x[None], xp[None], depth=depth, bias=bias)
    assert float(k) == pytest.approx(theta, rel=5e-3)
    # symmetric, and on the diagonal: Theta^h(x, x) = (h + 1) |x|^2 / d without bias
    K = D.ntk_kernel(torch.stack([x, xp]), torch.stack([x, xp]), depth=depth, bias=bias)
    torch.testing.assert_close(K, K.T)
    if bias == 0:
        assert float(K[0, 0]) == pytest.approx((depth + 1) * float(x @ x) / d, rel=1e-5)


def test_kernel_ridge_is_the_direct_solve_and_the_primal_ridge() -> None:
    from sklearn.linear_model import Ridge

    gen = torch.Generator().manual_seed(0)
    Xs, Xt = torch.randn(7, 5, generator=gen), torch.randn(11, 5, generator=gen)
    Ys = torch.randn(7, 3, generator=gen)
    K = D.ntk_kernel(Xs, Xs)
    lam = 1e-2 * float(torch.trace(K)) / 7
    direct = D.ntk_kernel(Xt, Xs).numpy() @ np.linalg.solve(K.numpy() + lam * np.eye(7), Ys.numpy())
    np.testing.assert_allclose(D.kernel_ridge(K, D.ntk_kernel(Xt, Xs), Ys, 1e-2).numpy(), direct, rtol=1e-10)
    # the linear kernel: kernel ridge regression is ridge regression in the primal
    Kl = Xs @ Xs.T
    lam = 0.1 * float(torch.trace(Kl)) / 7
    primal = Ridge(alpha=lam, fit_intercept=False, solver="cholesky", tol=1e-12).fit(Xs.numpy(), Ys.numpy())
    np.testing.assert_allclose(D.kernel_ridge(Kl, Xt @ Xs.T, Ys, 0.1).numpy(), primal.predict(Xt.numpy()), rtol=1e-9)
    with pytest.raises(ValueError, match="reg must be positive"):
        D.kernel_ridge(K, K, Ys, 0.0)


def _central_differences(fn, x: torch.Tensor, eps: float) -> torch.Tensor:
    out = torch.zeros_like(x)
    for i in range(x.numel()):
        e = torch.zeros_like(x).view(-1)
        e[i] = eps
        e = e.view_as(x)
        out.view(-1)[i] = (fn(x + e) - fn(x - e)) / (2 * eps)
    return out


@pytest.mark.parametrize("kernel", ["ntk", "rbf"])
def test_kip_gradient_matches_central_differences(kernel: str) -> None:
    gen = torch.Generator().manual_seed(1)
    Xs, Xt = torch.randn(4, 3, generator=gen), torch.randn(9, 3, generator=gen)
    y = torch.randint(0, 3, (9,), generator=gen)
    Ys = D.centred_one_hot(torch.tensor([0, 1, 2, 0]), 3, torch.float64)
    Yt = D.centred_one_hot(y, 3, torch.float64)
    k = D._kernel(kernel, 2)
    Xs_, Ys_ = Xs.clone().requires_grad_(), Ys.clone().requires_grad_()
    g_x, g_y = torch.autograd.grad(D.kip_loss(Xs_, Ys_, Xt, Yt, k, 1e-3), [Xs_, Ys_])
    fd_x = _central_differences(lambda v: D.kip_loss(v, Ys, Xt, Yt, k, 1e-3), Xs, 1e-6)
    fd_y = _central_differences(lambda v: D.kip_loss(Xs, v, Xt, Yt, k, 1e-3), Ys, 1e-6)
    torch.testing.assert_close(g_x, fd_x, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(g_y, fd_y, rtol=1e-6, atol=1e-9)


def test_logistic_implicit_hypergradient_matches_central_differences() -> None:
    gen = torch.Generator().manual_seed(2)
    X, y = torch.randn(30, 4, generator=gen), torch.randint(0, 3, (30,), generator=gen)
    images = torch.randn(3, 4, generator=gen)
    labels = torch.tensor([0, 1, 2])
    l2 = 0.1

    def solved(imgs: torch.Tensor) -> nn.Linear:
        """The inner solution to ~1e-15: L-BFGS (fit_logistic; its line search stalls near
        1e-10, below the loss's resolution), then Newton steps with the explicit Hessian."""
        model = nn.Linear(4, 3)
        nn.init.zeros_(model.weight)
        nn.init.zeros_(model.bias)
        D.fit_logistic(model, imgs, labels, l2, tol=1e-7)
        w = torch.cat([model.weight.detach().reshape(-1), model.bias.detach()])

        def f(w: torch.Tensor) -> torch.Tensor:
            W, b = w[:12].reshape(3, 4), w[12:]
            return F.cross_entropy(imgs @ W.T + b, labels) + 0.5 * l2 * (w * w).sum()

        for _ in range(5):
            w = w - torch.linalg.solve(torch.autograd.functional.hessian(f, w), torch.func.grad(f)(w))
        assert float(torch.func.grad(f)(w).abs().max()) < 1e-14
        with torch.no_grad():
            model.weight.copy_(w[:12].reshape(3, 4))
            model.bias.copy_(w[12:])
        return model

    def outer(imgs: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.cross_entropy(solved(imgs)(X), y)

    model = solved(images)
    import bilevel.nn as bnn

    result = bnn.hypergradient(
        model, {"images": images.clone().requires_grad_()}, D._logistic_inner(l2), D._logistic_outer,
        labels, (X, y), method="cg", tol=1e-13,
    )
    fd = _central_differences(outer, images, 1e-4)
    assert result.info.linear_solve.converged
    torch.testing.assert_close(result["images"], fd, rtol=1e-6, atol=1e-9)
    # distill() with the logistic inner solver takes exactly these steps (first step of Adam:
    # images - lr * sign(gradient))
    init = torch.tensor([int(torch.nonzero(y == c)[0]) for c in range(3)])
    out = D.distill(X, y, 1, inner_solver="logistic", l2=l2, learn_labels=False, steps=1, lr=1e-3,
                    init=init, inner_tol=1e-8, cg_tol=1e-12)
    start = X[init]
    ref = bnn.hypergradient(solved(start), {"images": start.clone().requires_grad_()}, D._logistic_inner(l2),
                            D._logistic_outer, labels, (X, y), method="cg", tol=1e-13)["images"]
    adam_step = 1e-3 * ref / (ref.abs() + 1e-8)  # Adam's first step
    torch.testing.assert_close(out.images, start - adam_step, rtol=0, atol=1e-9)
    assert out.converged and out.warnings == []


def test_coresets_match_brute_force() -> None:
    gen = torch.Generator().manual_seed(3)
    X = torch.randn(40, 3, generator=gen)
    y = torch.arange(40) % 2
    idx = D.random_subset(y, 4, gen)
    assert sorted(y[idx].tolist()) == [0] * 4 + [1] * 4 and len(set(idx.tolist())) == 8
    for c in (0, 1):
        members = torch.nonzero(y == c).flatten()
        Z = X[members].double()
        D_ = torch.cdist(Z, Z)
        # k-center: the exact 1-center, then greedy farthest points
        chosen = D.kcenter(X, y, 3)[3 * c : 3 * c + 3]
        first = int(D_.max(1).values.argmin())
        assert int(chosen[0]) == int(members[first])
        picked = [first]
        for _ in range(2):
            dist = torch.stack([D_[j] for j in picked]).min(0).values
            picked.append(int(dist.argmax()))
        assert chosen.tolist() == members[picked].tolist()
        # herding: brute force over every candidate at each step
        chosen = D.herding(X, y, 3)[3 * c : 3 * c + 3]
        mu, sel = Z.mean(0), []
        for t in range(1, 4):
            best = min((j for j in range(len(Z)) if j not in sel), key=lambda j: float(((mu - (Z[sel].sum(0) + Z[j]) / t) ** 2).sum()))
            sel.append(best)
        assert chosen.tolist() == members[sel].tolist()
    with pytest.raises(ValueError, match="fewer than 30"):
        D.kcenter(X, y, 30)


def test_distill_kip_improves_on_its_start_and_records_history() -> None:
    gen = torch.Generator().manual_seed(4)
    centers = 3 * torch.randn(3, 5, generator=gen)
    y = torch.arange(90) % 3
    X = centers[y] + torch.randn(90, 5, generator=gen)
    out = D.distill(X, y, 1, steps=20, lr=0.05, record_every=5, seed=0)
    h = out.history
    assert h["step"] == [0, 5, 10, 15, 20] and len(h["outer_loss"]) == 5
    assert h["outer_loss"][-1] < h["outer_loss"][0]
    assert out.images.shape == (3, 5) and out.labels.shape == (3, 3) and out.classes.tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="inner_solver must be one of"):
        D.distill(X, y, 1, inner_solver="svm")
    with pytest.raises(ValueError, match="learn_labels is only supported"):
        D.distill(X, y, 1, inner_solver="logistic", learn_labels=True)
    assert math.isfinite(float(D.predict("kip", out.images, out.labels, X).float().mean()))
