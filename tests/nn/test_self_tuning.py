"""bilevel.nn.self_tuning: best-response layers, perturbations and the STN hyper step,
against dense formulas, torch.distributions and float64 central differences."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bilevel.nn.self_tuning import (
    BestResponseLinear,
    HyperparameterSpec,
    PerturbedHyperparameters,
    SelfTuningTrainer,
    gaussian_entropy,
    per_example_dropout,
)

SPECS = [
    HyperparameterSpec("weight_decay", "log", 0.3),
    HyperparameterSpec("dropout", "interval", 0.2, 0.0, 0.9),
    HyperparameterSpec("shift", "identity", -0.7),
]


def _layer(seed: int = 0, bias: bool = True) -> BestResponseLinear:
    torch.manual_seed(seed)
    layer = BestResponseLinear(5, 4, 3, bias=bias).double()
    with torch.no_grad():  # gates of order one, so the response term matters
        layer.gate.weight.normal_()
    return layer


@pytest.mark.parametrize("bias", [True, False])
def test_best_response_layer_matches_the_dense_gated_weights(bias: bool) -> None:
    layer = _layer(bias=bias)
    x = torch.randn(6, 5, dtype=torch.float64)
    u = torch.randn(6, 3, dtype=torch.float64)
    out = layer(x, u)
    A = layer.gate.weight.detach()  # rows 0..3 gate the weight rows, 4..7 the bias
    for i in range(6):
        gates = A @ u[i]
        W = layer.weight + gates[:4, None] * layer.response_weight  # W0 + diag(A u) Wh
        expected = W @ x[i]
        if bias:
            expected = expected + layer.bias + gates[4:] * layer.response_bias
        torch.testing.assert_close(out[i], expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.effective_weight(u[i]), W, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(layer.weight_sq_norm(u[i : i + 1])[0], (W * W).sum(), rtol=1e-12, atol=1e-12)
    # a single hyperparameter vector is shared by the batch
    torch.testing.assert_close(layer(x, u[0]), layer(x, u[0].expand(6, 3)))


def test_weight_sq_norm_gradient_matches_the_dense_norm() -> None:
    layer = _layer(1)
    u = torch.randn(4, 3, dtype=torch.float64)
    params = [layer.weight, layer.response_weight, layer.gate.weight]
    got = torch.autograd.grad(layer.weight_sq_norm(u).sum(), params)
    dense = sum((layer.effective_weight(u[i]) ** 2).sum() for i in range(4))
    expected = torch.autograd.grad(dense, params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


def test_hyperparameter_transforms_round_trip_and_validate() -> None:
    for spec in SPECS:
        u = spec.unconstrain(spec.init)
        assert float(spec.constrain(torch.tensor(u, dtype=torch.float64))) == pytest.approx(spec.init, rel=1e-12)
    hp = PerturbedHyperparameters(SPECS, scale=0.4).double()
    assert hp.values() == pytest.approx({"weight_decay": 0.3, "dropout": 0.2, "shift": -0.7})
    assert hp.scales() == pytest.approx({s.name: 0.4 for s in SPECS})
    with pytest.raises(ValueError, match="init > 0"):
        HyperparameterSpec("wd", "log", 0.0)
    with pytest.raises(ValueError, match="strictly inside"):
        HyperparameterSpec("p", "interval", 1.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="transform must be one of"):
        HyperparameterSpec("p", "exp", 1.0)
    with pytest.raises(ValueError, match="duplicate"):
        PerturbedHyperparameters([SPECS[0], SPECS[0]])
    with pytest.raises(ValueError, match="columns"):
        hp.sample(torch.zeros(2, 2, dtype=torch.float64))


def test_entropy_is_the_gaussian_entropy_and_its_gradient_matches_central_differences() -> None:
    hp = PerturbedHyperparameters(SPECS, scale=0.3).double()
    with torch.no_grad():
        hp.raw_scale.copy_(torch.tensor([-1.0, 0.2, 1.5]))
    expected = torch.distributions.Normal(hp.mean, hp.scale()).entropy().sum()
    torch.testing.assert_close(hp.entropy(), expected, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(hp.entropy(), hp.raw_scale)
    h = 1e-6
    for k in range(3):
        e = torch.zeros(3, dtype=torch.float64)
        e[k] = h
        plus = gaussian_entropy(F.softplus(hp.raw_scale.detach() + e))
        minus = gaussian_entropy(F.softplus(hp.raw_scale.detach() - e))
        assert float(grad[k]) == pytest.approx(float(plus - minus) / (2 * h), rel=1e-8)
    # d H / d rho_k = sigmoid(rho_k) / softplus(rho_k), in closed form
    torch.testing.assert_close(grad, torch.sigmoid(hp.raw_scale) / F.softplus(hp.raw_scale))


def test_per_example_dropout_rates_and_scaling() -> None:
    torch.manual_seed(0)
    x = torch.ones(4, 20000, dtype=torch.float64)
    p = torch.tensor([0.0, 0.1, 0.5, 0.8], dtype=torch.float64)
    out = per_example_dropout(x, p)
    kept = (out != 0).double().mean(1)
    assert torch.allclose(kept, 1 - p, atol=0.01)  # 20000 draws: std <= 0.0036
    for i in range(4):  # kept entries are scaled by 1 / (1 - p_i): the mean is unbiased
        assert torch.allclose(out[i][out[i] != 0], torch.full_like(out[i][out[i] != 0], 1 / (1 - p[i])))
    assert torch.equal(per_example_dropout(x, p, training=False), x)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = BestResponseLinear(3, 6, len(SPECS))
        self.fc2 = BestResponseLinear(6, 2, len(SPECS))

    def forward(self, x, u, p=None):
        h = torch.tanh(self.fc1(x, u))
        if p is not None:
            h = per_example_dropout(h, p)
        return self.fc2(h, u)


def _problem(seed: int = 0):
    torch.manual_seed(seed)
    X, Xv = torch.randn(32, 3, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    y, yv = (X[:, 0] > 0).long(), (Xv[:, 0] + 0.3 * Xv[:, 1] > 0).long()
    net = _Net().double()
    with torch.no_grad():
        for layer in (net.fc1, net.fc2):
            layer.gate.weight.normal_(std=0.5)
    hp = PerturbedHyperparameters(SPECS, scale=0.3).double()
    seen: list[torch.Tensor] = []

    def train_loss(m, values, u, batch):
        xb, yb = batch
        xb = xb + values["shift"].unsqueeze(1)
        ce = F.cross_entropy(m(xb, u, values["dropout"]), yb, reduction="none")
        return (ce + values["weight_decay"] * (m.fc1.weight_sq_norm(u) + m.fc2.weight_sq_norm(u)) / 64).mean()

    def val_loss(m, values, u, batch):
        seen.append(u.detach().clone())
        return F.cross_entropy(m(batch[0], u), batch[1])

    return net, hp, train_loss, val_loss, (X, y), (Xv, yv), seen


@pytest.mark.parametrize("tune_scales", [True, False])
def test_hyper_step_is_a_step_along_the_gradient_of_the_stn_objective(tune_scales: bool) -> None:
    """One fit step with SGD on (u_bar, rho): the change equals -lr times the central
    differences of F(u_bar, rho) = L_val(w_phi(u_bar + sigma eps)) - tau H(sigma), with the
    eps the hyper step drew and phi after the training steps."""
    net, hp, train_loss, val_loss, train, val, seen = _problem()
    hp.raw_scale.requires_grad_(tune_scales)
    tau, lr = 0.05, 1e-3
    params = [hp.mean, hp.raw_scale] if tune_scales else [hp.mean]
    stn = SelfTuningTrainer(
        net, hp, train_loss, val_loss,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        hyper_optimizer=torch.optim.SGD(params, lr=lr),
        train_data=[train], val_data=[val], train_steps=2, warmup_steps=1, entropy_weight=tau,
    )
    mean0, rho0 = hp.mean.detach().clone(), hp.raw_scale.detach().clone()
    phi_before = [p.detach().clone() for p in net.parameters()]
    torch.manual_seed(3)
    result = stn.fit(1)
    assert result.steps == 1 and len(result.history) == 1
    assert set(result.history[0]) >= {"weight_decay", "dropout", "shift", "dropout_scale"}
    assert any(not torch.equal(a, b) for a, b in zip(phi_before, net.parameters()))  # phi trained
    u = seen[-1]  # the hyper step's hyperparameters (the engine may evaluate the loss twice)
    if tune_scales:
        eps = (u - mean0) / F.softplus(rho0)
    else:
        assert torch.equal(u, mean0.expand_as(u))

    def objective(mean: torch.Tensor, rho: torch.Tensor) -> float:
        uu = mean + F.softplus(rho) * eps if tune_scales else mean.expand_as(u)
        with torch.no_grad():
            value = F.cross_entropy(net(val[0], uu), val[1])
            if tune_scales:
                value = value - tau * gaussian_entropy(F.softplus(rho))
        return float(value)

    h = 1e-6
    for name, base, new in (("mean", mean0, hp.mean), ("raw_scale", rho0, hp.raw_scale)):
        for k in range(3):
            e = torch.zeros(3, dtype=torch.float64)
            e[k] = h
            if name == "mean":
                fd = (objective(mean0 + e, rho0) - objective(mean0 - e, rho0)) / (2 * h)
            else:
                fd = (objective(mean0, rho0 + e) - objective(mean0, rho0 - e)) / (2 * h) if tune_scales else 0.0
            step = float(base[k] - new.detach()[k]) / lr
            assert step == pytest.approx(fd, rel=1e-6, abs=1e-9), (name, k)


def test_trainer_rejects_bad_input() -> None:
    net, hp, train_loss, val_loss, train, val, _ = _problem()
    kw = dict(
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        hyper_optimizer=torch.optim.SGD([hp.mean], lr=0.1),
        train_data=[train], val_data=[val],
    )
    with pytest.raises(TypeError, match="PerturbedHyperparameters"):
        SelfTuningTrainer(net, {"a": hp.mean}, train_loss, val_loss, **kw)
    with pytest.raises(ValueError, match="warmup_steps"):
        SelfTuningTrainer(net, hp, train_loss, val_loss, warmup_steps=-1, **kw)
    with pytest.raises(ValueError, match="entropy_weight"):
        SelfTuningTrainer(net, hp, train_loss, val_loss, entropy_weight=math.nan, **kw)
    stn = SelfTuningTrainer(net, hp, train_loss, val_loss, **{**kw, "train_data": [["not a tensor"]]})
    with pytest.raises(TypeError, match="first element"):
        stn.fit(1)
