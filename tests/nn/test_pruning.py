"""BiP pruning mechanics against exact oracles: top-k masks, the straight-through estimator,
masked calls, BiP's closed-form implicit gradient against the engine's implicit
hypergradients (exactly where they must agree, and up to the explicit curvature term
elsewhere), the BiP step, and iterative magnitude pruning."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import bilevel.nn as bnn
from bilevel.nn import pruning as P


def _linear_loss(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A loss linear in the outputs (so linear in the weights of a single layer)."""
    return (out * y).mean()


def _mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))


# --------------------------------------------------------------------------------------
# Masks
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.8, 0.95, 0.99])
def test_topk_mask_keeps_exactly_the_largest_scores(sparsity: float) -> None:
    gen = torch.Generator().manual_seed(0)
    scores = {"a": torch.randn(7, 9, generator=gen), "b": torch.randn(31, generator=gen).round()}  # ties in b
    masks = P.topk_mask(scores, sparsity)
    n = 7 * 9 + 31
    k = max(1, round((1 - sparsity) * n))
    flat_s = torch.cat([scores["a"].flatten(), scores["b"]])
    flat_m = torch.cat([masks["a"].flatten(), masks["b"]])
    assert int(flat_m.sum()) == k and set(flat_m.unique().tolist()) <= {0.0, 1.0}
    if k < n:
        assert flat_s[flat_m == 1].min() >= flat_s[flat_m == 0].max()
    assert torch.equal(flat_m, flat_m.round())
    per = P.topk_mask(scores, sparsity, per_tensor=True)
    assert int(per["a"].sum()) == max(1, round((1 - sparsity) * 63))
    assert int(per["b"].sum()) == max(1, round((1 - sparsity) * 31))


@pytest.mark.parametrize("sparsity", [0.6, 0.7, 0.95])  # (n = 69: no rounding tie)
def test_global_magnitude_mask_is_torch_global_l1_pruning(sparsity: float) -> None:
    # the one-shot baseline against an independent implementation: torch.nn.utils.prune
    from torch.nn.utils import prune

    model = _mlp()
    masks = P.topk_mask(P.magnitude_scores(model), sparsity)
    prune.global_unstructured(
        [(model[i], "weight") for i in (0, 2, 4)], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    for i in (0, 2, 4):
        assert torch.equal(masks[f"{i}.weight"], model[i].weight_mask)


def test_topk_mask_rejects_bad_sparsity() -> None:
    with pytest.raises(ValueError, match="sparsity must be in"):
        P.topk_mask({"a": torch.randn(3)}, 1.0)
    with pytest.raises(ValueError, match="granularity must be one of"):
        P.prunable(_mlp(), "filter")


def test_straight_through_has_the_mask_value_and_the_identity_derivative() -> None:
    s = torch.randn(5, 4, requires_grad=True)
    hard = P.topk_mask({"w": s}, 0.6)
    m = P.straight_through({"w": s}, hard)["w"]
    assert torch.equal(m.detach(), hard["w"])  # exactly the hard mask (s - s = 0)
    c = torch.randn(5, 4)
    (g,) = torch.autograd.grad((c * m).sum(), s)
    assert torch.equal(g, c)  # dm/ds = I


def test_masked_call_matches_explicit_weights_and_leaves_the_model_alone() -> None:
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 4)
    scores = P.magnitude_scores(model)
    masks = P.topk_mask(scores, 0.7)
    explicit = _mlp()
    with torch.no_grad():
        for name, p in explicit.named_parameters():
            if name in masks:
                p.mul_(masks[name])
    assert torch.allclose(P.masked_call(model, masks, x), explicit(x), atol=1e-12)
    # neuron masks silence units: rows and biases zeroed
    neuron = P.topk_mask(P.magnitude_scores(model, "neuron"), 0.5, per_tensor=True)
    assert set(neuron) == {"0.weight", "2.weight"} and int(neuron["0.weight"].sum()) == 3
    with torch.no_grad():
        for name, m in neuron.items():
            layer = explicit[int(name.split(".")[0])]
            layer.weight.copy_(dict(model.named_parameters())[name] * m[:, None])
            layer.bias.copy_(dict(model.named_parameters())[name[:-6] + "bias"] * m)
        explicit[4].weight.copy_(model[4].weight)
    assert torch.allclose(P.masked_call(model, neuron, x), explicit(x), atol=1e-12)
    assert P.density(model, neuron) == pytest.approx((3 * 4 + 2 * 6) / (6 * 4 + 5 * 6))
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


# --------------------------------------------------------------------------------------
# BiP's implicit gradient against the engine
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ["weight", "neuron"])
def test_bilinear_formula_is_the_exact_implicit_gradient_when_the_loss_is_linear_in_z(granularity) -> None:
    # one Linear layer and a loss linear in its output: grad^2_zz l = 0, so H = gamma I and
    # B = E^T diag(g) hold exactly and BiP's closed form is the implicit-function-theorem
    # hypergradient (cg), and the engine's gamma-I Neumann mode
    torch.manual_seed(0)
    model = nn.Linear(5, 3)
    X, Y = torch.randn(20, 5), torch.randn(20, 3)
    lower, upper = (X[:10], Y[:10]), (X[10:], Y[10:])
    shape = (3, 5) if granularity == "weight" else (3,)
    scores = {"weight": torch.rand(shape, requires_grad=True)}
    masks = P.topk_mask(scores, 0.4)
    gamma = 0.7
    bip = P.bip_hypergradient(model, masks, _linear_loss, lower, upper, gamma)
    inner, outer = P._engine_losses(_linear_loss, masks, gamma)
    exact = bnn.hypergradient(model, scores, inner, outer, lower, upper, method="cg", tol=1e-13)
    neumann = bnn.hypergradient(model, scores, inner, outer, lower, upper, method="neumann", steps=0, alpha=1 / gamma)
    assert exact.info.linear_solve.converged
    assert bip["weight"].abs().max() > 1e-3
    torch.testing.assert_close(bip["weight"], exact["weight"], rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(bip["weight"], neumann["weight"], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("granularity", ["weight", "neuron"])
def test_bilinear_formula_is_the_gamma_identity_mode_less_the_curvature_term(granularity) -> None:
    # on a nonlinear network: engine "neumann" with steps=0, alpha=1/gamma (H ~ gamma I, exact
    # B) minus BiP's formula must equal (1/gamma) E^T( theta . grad^2_zz l (E(m) . grad_theta F) ),
    # the curvature part of B, here from an explicit Hessian of l over all effective parameters
    model = _mlp()
    torch.manual_seed(1)
    X, y = torch.randn(24, 4), torch.randint(0, 3, (24,))
    lower, upper = (X[:12], y[:12]), (X[12:], y[12:])
    scores = {k: v + 0.01 * torch.rand_like(v) for k, v in P.magnitude_scores(model, granularity).items()}
    scores = {k: v.requires_grad_(True) for k, v in scores.items()}
    masks = P.topk_mask(scores, 0.5, per_tensor=granularity == "neuron")
    gamma = 2.0
    bip = P.bip_hypergradient(model, masks, F.cross_entropy, lower, upper, gamma)
    inner, outer = P._engine_losses(F.cross_entropy, masks, gamma)
    neumann = bnn.hypergradient(model, scores, inner, outer, lower, upper, method="neumann", steps=0, alpha=1 / gamma)

    params = {n: p.detach() for n, p in model.named_parameters()}
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def unflat(v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {n: t.reshape(s) for n, t, s in zip(names, v.split(sizes), shapes)}

    def loss(zflat: torch.Tensor, batch) -> torch.Tensor:
        return F.cross_entropy(torch.func.functional_call(model, unflat(zflat), (batch[0],)), batch[1])

    z = {**params, **P.masked_parameters(model, masks, params)}
    zflat = torch.cat([z[n].reshape(-1) for n in names])
    hess = torch.autograd.functional.hessian(lambda v: loss(v, lower), zflat)
    g_upper = unflat(torch.autograd.functional.jacobian(lambda v: loss(v, upper), zflat))
    ones = {n: torch.ones_like(p) for n, p in params.items()}
    e = {**ones, **P.masked_parameters(model, masks, ones)}  # E(m), 1 for unmasked tensors
    grad_theta_F = torch.cat([(e[n] * g_upper[n]).reshape(-1) for n in names])
    curv = unflat(hess @ grad_theta_F)
    for name, mask in masks.items():
        v = params[name] * curv[name]
        if granularity == "neuron":
            v = v.reshape(len(mask), -1).sum(1) + params[name[:-6] + "bias"] * curv[name[:-6] + "bias"]
        expected = bip[name] - v / gamma
        assert v.abs().max() > 1e-4  # the curvature term is not negligible here
        torch.testing.assert_close(neumann[name], expected, rtol=1e-9, atol=1e-12)


def test_bip_step_takes_a_weight_step_then_a_score_step_along_the_formula() -> None:
    model = _mlp()
    torch.manual_seed(2)
    X, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    lower, upper = (X[:15], y[:15]), (X[15:], y[15:])
    bip = P.BiP(model, 0.6, gamma=0.5, lr=0.1, momentum=0.0, score_lr=0.3, score_momentum=0.0)
    masks = bip.masks()
    assert sum(int(m.sum()) for m in masks.values()) == round(0.4 * (24 + 30 + 15))
    before = {n: s.detach().clone() for n, s in bip.scores.items()}
    # the weight step: SGD with weight decay gamma on the masked loss
    expected_model = _mlp()
    loss = F.cross_entropy(P.masked_call(expected_model, masks, lower[0]), lower[1])
    grads = torch.autograd.grad(loss, list(expected_model.parameters()))
    with torch.no_grad():
        for p, g in zip(expected_model.parameters(), grads):
            p.sub_(0.1 * (g + 0.5 * p))
    record = bip.step(lower, upper)
    for (name, p), q in zip(model.named_parameters(), expected_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-14)
    # the score step: along BiP's formula at the new weights, on the upper batch
    formula = P.bip_hypergradient(expected_model, masks, F.cross_entropy, upper, upper, 0.5)
    for name, s in bip.scores.items():
        torch.testing.assert_close((before[name] - s.detach()) / 0.3, formula[name], rtol=1e-9, atol=1e-12)
    assert record["hypergrad_norm"] == pytest.approx(
        math.sqrt(sum(float((g * g).sum()) for g in formula.values())), rel=1e-9
    )
    # through the engine: the gamma-I Neumann mode and the exact mode run and move the scores
    for mode in ("neumann", "cg"):
        other = P.BiP(_mlp(), 0.6, gamma=0.5, hypergradient=mode, hypergradient_options={"tol": 1e-8} if mode == "cg" else None)
        start = {n: s.detach().clone() for n, s in other.scores.items()}
        other.step(lower, upper)
        assert any(not torch.equal(start[n], s) for n, s in other.scores.items())
    masks = bip.prune_()
    assert all(torch.equal(dict(model.named_parameters())[n] * (1 - m), torch.zeros_like(m)) for n, m in masks.items())


def test_iterative_magnitude_pruning_rounds_rewinding_and_nested_masks() -> None:
    model = _mlp()
    rewind = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    seen: list[dict[str, torch.Tensor]] = []

    def train(m: nn.Module, masks) -> None:
        for k, v in m.state_dict().items():  # every round starts from the rewound weights
            assert torch.equal(v, rewind[k])
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn_like(p))

    masks = P.iterative_magnitude_pruning(
        model, 0.9, train, rewind, rate=0.3, callback=lambda r, ms: seen.append({k: v.clone() for k, v in ms.items()})
    )
    n = 24 + 30 + 15
    assert len(seen) == math.ceil(math.log(0.1) / math.log(0.7))
    keep = 1.0
    for r, ms in enumerate(seen):
        keep = max(keep * 0.7, 0.1)
        assert sum(int(m.sum()) for m in ms.values()) == round(keep * n)
        if r:
            assert all(bool((ms[k] <= seen[r - 1][k]).all()) for k in ms)  # nested
    assert masks is not None and P.density(model, masks) == pytest.approx(round(0.1 * n) / n)


def test_channel_masks_silence_output_channels_of_convolutions() -> None:
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 3, 3), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(2, 2, 7, 7)
    model(x)  # materialise the lazy layer
    shapes = P.prunable(model, "neuron")
    assert shapes == {"0.weight": torch.Size([4]), "2.weight": torch.Size([3])}
    masks = P.topk_mask(P.magnitude_scores(model, "neuron"), 0.5, per_tensor=True)
    norms = model[0].weight.detach().reshape(4, -1).norm(dim=1)
    assert torch.equal(masks["0.weight"], (norms >= norms.sort().values[2]).to(norms.dtype))
    out = P.masked_call(model, masks, x)
    with torch.no_grad():
        for i in (0, 2):
            m = masks[f"{i}.weight"]
            model[i].weight.mul_(m[:, None, None, None])
            model[i].bias.mul_(m)
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-12)
