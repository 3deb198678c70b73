"""bilevel.nn.backdoor: mechanics against exact oracles (NT-Xent, augmentations, the l_inf
projection, the linear probe, SPC and its optimised variant, AUROC, the trigger
hypergradient against float64 central differences)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import lsq_linear
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from torch import nn

import bilevel.nn as bnn
from bilevel.nn.backdoor import (
    AttackBatch,
    Augmentation,
    ContrastiveBatch,
    ContrastiveBatches,
    ContrastiveEncoder,
    FixedTrigger,
    TriggerGenerator,
    attack_success_rate,
    auroc,
    contrastive_loss,
    fit_linear_probe,
    nt_xent,
    optimized_spc,
    project_linf,
    scaled_prediction_consistency,
    target_similarity,
)
from tests.conftest import relative_error


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (on a busy machine,
    tens of milliseconds per convolution)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# --------------------------------------------------------------------------------------
# NT-Xent and augmentations
# --------------------------------------------------------------------------------------


def _nt_xent_direct(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    z = torch.cat([z1, z2]).tolist()
    n2 = len(z)
    n = n2 // 2

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        denom = sum(math.exp(cos(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total += -math.log(math.exp(cos(z[i], z[j]) / tau) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_nt_xent_matches_the_direct_formula(tau: float) -> None:
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    assert abs(float(nt_xent(z1, z2, tau)) - _nt_xent_direct(z1, z2, tau)) < 1e-12
    # identical, well separated views: the positive dominates as tau -> 0
    e = torch.eye(4)
    assert float(nt_xent(e, e, 0.01)) < 1e-12
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(z1, z2, 0.0)


def test_augmentation_identity_translation_rotation_and_intensity_are_exact() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g)
    aug = Augmentation()
    identity = torch.tensor([[1.0, 0, 0, 0, 1.0, 0.0]]).repeat(3, 1)
    assert torch.allclose(aug(x, identity), x, atol=1e-12)
    # sample location p + t: a shift of t_x = 2 * (2 / W) reads two pixels to the right
    shift = identity.clone()
    shift[:, 2] = 2 * 2 / 8
    expected = torch.zeros_like(x)
    expected[..., :, :-2] = x[..., :, 2:]
    assert torch.allclose(aug(x, shift), expected, atol=1e-12)
    # a quarter turn about the centre maps pixel centres to pixel centres
    quarter = identity.clone()
    quarter[:, 1] = math.pi / 2
    rotated = aug(x, quarter)
    assert any(torch.allclose(rotated, torch.rot90(x, k, dims=(2, 3)), atol=1e-12) for k in (1, 3))
    intensity = identity.clone()
    intensity[:, 4], intensity[:, 5] = 1.3, -0.2
    assert torch.allclose(aug(x, intensity), 1.3 * x - 0.2, atol=1e-12)
    params = aug.sample(1000, torch.Generator().manual_seed(0), torch.float64)
    lo = torch.tensor([0.75, -0.3, -0.15, -0.15, 0.6, -0.2], dtype=torch.float64)
    hi = torch.tensor([1.1, 0.3, 0.15, 0.15, 1.4, 0.2], dtype=torch.float64)
    assert bool(((params >= lo) & (params <= hi)).all())
    assert torch.allclose(params.mean(0), (lo + hi) / 2, atol=0.03)


def test_contrastive_batches_are_reproducible_and_mark_the_poisoned_rows() -> None:
    x = torch.arange(10, dtype=torch.float64).view(10, 1, 1, 1).expand(10, 1, 4, 4).clone()
    poison = torch.tensor([2, 7])
    a = list(ContrastiveBatches(x, 4, Augmentation(), poison_index=poison, seed=3))
    b = list(ContrastiveBatches(x, 4, Augmentation(), poison_index=poison, seed=3))
    assert [len(t.images) for t in a] == [4, 4, 2]
    seen = torch.cat([t.images[:, 0, 0, 0] for t in a]).long()
    assert sorted(seen.tolist()) == list(range(10))
    for s, t in zip(a, b):
        assert torch.equal(s.images, t.images) and torch.equal(s.views[0], t.views[0])
        marked = s.images[s.poisoned, 0, 0, 0].long().tolist() if s.poisoned is not None else []
        assert sorted(marked) == sorted(set(s.images[:, 0, 0, 0].long().tolist()) & {2, 7})


# --------------------------------------------------------------------------------------
# Triggers
# --------------------------------------------------------------------------------------


def test_project_linf_is_the_euclidean_projection() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, generator=g)
    z = x + 0.6 * torch.randn(40, generator=g)
    eps = 0.15
    p = project_linf(z, x, eps)
    lower = np.maximum(x.numpy() - eps, 0.0)
    upper = np.minimum(x.numpy() + eps, 1.0)
    oracle = lsq_linear(np.eye(40), z.numpy(), bounds=(lower, upper), tol=1e-14).x
    assert np.abs(p.numpy() - oracle).max() < 1e-10
    assert float((p - x).abs().max()) <= eps + 1e-15 and 0 <= float(p.min()) and float(p.max()) <= 1
    # optimality: <z - P(z), v - P(z)> <= 0 for every feasible v
    v = torch.tensor(lower) + torch.rand(200, 40, generator=g) * torch.tensor(upper - lower)
    assert float(((z - p) * (v - p)).sum(1).max()) <= 1e-12
    assert torch.equal(project_linf(p, x, eps), p)  # idempotent
    with pytest.raises(ValueError, match="budget"):
        project_linf(z, x, 0.0)


def test_triggers_respect_the_budget_and_the_pixel_range() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    gen = TriggerGenerator((1, 8, 8), 0.2, conditional=True)
    with torch.no_grad():
        gen.pattern.normal_(0, 5, generator=g)
        for p in gen.correction.parameters():
            p.normal_(0, 1, generator=g)
    for trig in (gen, FixedTrigger.patch((1, 8, 8), 0.2), FixedTrigger.random((1, 8, 8), 0.2, g)):
        out = trig(x)
        assert float((out - x).abs().max().detach()) <= 0.2 + 1e-12
        assert float(out.min().detach()) >= 0 and float(out.max().detach()) <= 1
    patch = FixedTrigger.patch((1, 8, 8), 0.2, size=2).delta[0]
    assert torch.equal(patch[5:7, 5:7], torch.tensor([[0.2, -0.2], [-0.2, 0.2]]).to(patch.dtype))
    assert int((patch != 0).sum()) == 4
    noise = FixedTrigger.random((1, 8, 8), 0.2, g).delta
    assert torch.equal(noise.abs(), torch.full_like(noise, 0.2))


def test_attack_success_rate_counts_non_target_images_sent_to_the_target() -> None:
    def classifier(x: torch.Tensor) -> torch.Tensor:  # class = round(10 * mean pixel)
        return F.one_hot((10 * x.mean(dim=(1, 2, 3))).round().long().clamp(0, 9), 10).double()

    x = torch.stack([torch.full((1, 2, 2), v) for v in (0.0, 0.1, 0.2, 0.3, 0.5)])
    y = torch.tensor([0, 1, 2, 3, 5])
    trigger = FixedTrigger(torch.full((1, 2, 2), 0.1), 0.1)  # adds 0.1: class + 1
    # non-target images 0, 1, 3, 5 -> 1, 2, 4, 6: only the image of class 1 reaches target 2
    assert attack_success_rate(classifier, x, y, trigger, target=2) == pytest.approx(1 / 4)


# --------------------------------------------------------------------------------------
# The trigger hypergradient against float64 central differences
# --------------------------------------------------------------------------------------


def _tiny_problem(conditional: bool):
    g = torch.Generator().manual_seed(0)
    shape = (1, 4, 4)
    torch.manual_seed(0)
    encoder = ContrastiveEncoder(shape, hidden=6, features=5, projection=3)
    gen = TriggerGenerator(shape, 0.3, conditional=conditional, channels=2)
    with torch.no_grad():
        gen.pattern.normal_(0, 0.5, generator=g)
        if conditional:
            for p in gen.correction.parameters():
                p.normal_(0, 0.3, generator=g)
    aug = Augmentation()
    with torch.no_grad():  # larger weights than the default initialisation: O(1) gradients
        for p in encoder.parameters():
            p.mul_(3.0)
    images = 0.35 + 0.3 * torch.rand(6, *shape, generator=g)  # the pixel range never binds
    inner = ContrastiveBatch(
        images, torch.tensor([1, 4]), (aug.sample(6, g, torch.float64), aug.sample(6, g, torch.float64))
    )
    outer = AttackBatch(
        0.35 + 0.3 * torch.rand(5, *shape, generator=g), aug.sample(5, g, torch.float64),
        0.35 + 0.3 * torch.rand(3, *shape, generator=g), aug.sample(3, g, torch.float64),
    )

    def inner_loss(model, trigger, batch):
        return contrastive_loss(model, trigger, batch, augmentation=aug, temperature=0.5)

    def outer_loss(model, trigger, batch):
        return -target_similarity(model, trigger, batch, augmentation=aug)

    return encoder, gen, inner_loss, outer_loss, inner, outer


def _flat(module: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def _set_flat(module: nn.Module, v: torch.Tensor) -> None:
    i = 0
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(v[i : i + p.numel()].view_as(p))
            i += p.numel()


class _At(nn.Module):
    """``encoder`` evaluated at the parameters ``theta`` (its own are left untouched)."""

    def __init__(self, encoder: nn.Module, theta: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.theta = theta
        self.encoder = [encoder]  # a list: not registered as a submodule

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(self.encoder[0], self.theta, (x,))


def _unrolled_objective(problem, psi, steps, lr, psi0=None, truncate=None, adam=None) -> float:
    """``F(psi)``: the outer loss after ``steps`` plain SGD steps of the inner loss from the
    encoder's parameters, written out directly (no engine code). With ``truncate`` the first
    ``steps - truncate`` steps use the trigger ``psi0`` instead of ``psi``. With ``adam`` (a
    live ``torch.optim.Adam`` over the encoder) the steps are Adam's from its current state,
    ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``,
    ``theta <- theta - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``."""
    encoder, gen, inner_loss, outer_loss, inner, outer = problem
    theta = {k: v.detach().clone() for k, v in encoder.named_parameters()}
    if adam is not None:
        group = adam.param_groups[0]
        lr, (b1, b2), eps = group["lr"], group["betas"], group["eps"]
        state = {k: adam.state[p] for k, p in encoder.named_parameters()}
        m = {k: st["exp_avg"].clone() for k, st in state.items()}
        v2 = {k: st["exp_avg_sq"].clone() for k, st in state.items()}
        t0 = int(next(iter(state.values()))["step"])
    trig = TriggerGenerator((1, 4, 4), gen.budget, conditional=gen.correction is not None, channels=2)
    for t in range(steps):
        _set_flat(trig, psi0 if truncate is not None and t < steps - truncate else psi)
        th = {k: v.requires_grad_(True) for k, v in theta.items()}
        grads = torch.autograd.grad(inner_loss(_At(encoder, th), trig, inner), list(th.values()))
        if adam is None:
            theta = {k: (v - lr * gk).detach() for (k, v), gk in zip(th.items(), grads)}
            continue
        n = t0 + t + 1
        for (k, v), gk in zip(th.items(), grads):
            m[k] = b1 * m[k] + (1 - b1) * gk
            v2[k] = b2 * v2[k] + (1 - b2) * gk**2
            step = lr * (m[k] / (1 - b1**n)) / ((v2[k] / (1 - b2**n)).sqrt() + eps)
            theta[k] = (v - step).detach()
    _set_flat(trig, psi)
    with torch.no_grad():
        return float(outer_loss(_At(encoder, theta), trig, outer))


def _directional(f, psi: torch.Tensor, directions: torch.Tensor, h: float = 1e-5) -> torch.Tensor:
    """Central differences ``(f(psi + h v) - f(psi - h v)) / 2h`` along each row ``v``."""
    return torch.tensor([(f(psi + h * v) - f(psi - h * v)) / (2 * h) for v in directions])


@pytest.mark.parametrize("conditional", [False, True])
def test_trigger_hypergradient_matches_central_differences(conditional: bool) -> None:
    problem = _tiny_problem(conditional)
    encoder, gen, inner_loss, outer_loss, inner, outer = problem
    psi0 = _flat(gen)
    before = _flat(encoder)
    lr, steps = 0.5, 3

    def engine(method: str, **options) -> torch.Tensor:
        grads = bnn.hypergradient(encoder, gen, inner_loss, outer_loss, inner, outer, method=method, **options)
        return torch.cat([grads[k].flatten() for k, _ in gen.named_parameters()])

    # directional derivatives along random unit directions and the first two coordinates
    directions = torch.randn(3, len(psi0), generator=torch.Generator().manual_seed(5))
    directions = torch.cat([directions / directions.norm(dim=1, keepdim=True), torch.eye(len(psi0))[:2]])

    unrolled = engine("unrolled", steps=steps, optimizer=bnn.optim.SGD(lr=lr))
    oracle = _directional(lambda p: _unrolled_objective(problem, p, steps, lr), psi0, directions)
    assert relative_error(directions @ unrolled, oracle) < 1e-7

    truncated = engine("unrolled", steps=steps, truncate=1, optimizer=bnn.optim.SGD(lr=lr))
    oracle_t = _directional(
        lambda p: _unrolled_objective(problem, p, steps, lr, psi0=psi0, truncate=1), psi0, directions
    )
    assert relative_error(directions @ truncated, oracle_t) < 1e-7

    first_order = engine("fd", xi=0.0)
    oracle_f = _directional(lambda p: _unrolled_objective(problem, p, 0, lr), psi0, directions)
    assert relative_error(directions @ first_order, oracle_f) < 1e-7
    # the recipe's mode: the trainer's live torch Adam, mirrored with its state (here after
    # one real step on the inner loss)
    adam = torch.optim.Adam(encoder.parameters(), lr=0.05, betas=(0.8, 0.95))
    adam.zero_grad()
    inner_loss(encoder, gen, inner).backward(inputs=list(encoder.parameters()))
    adam.step()
    before = _flat(encoder)
    with_adam = engine("unrolled", steps=2, optimizer=adam)
    oracle_a = _directional(lambda p: _unrolled_objective(problem, p, 2, lr, adam=adam), psi0, directions)
    assert relative_error(directions @ with_adam, oracle_a) < 1e-7
    # the unroll matters here: the three are different quantities
    assert relative_error(unrolled, first_order) > 1e-3 and relative_error(unrolled, truncated) > 1e-4
    assert torch.equal(_flat(encoder), before) and torch.equal(_flat(gen), psi0)


# --------------------------------------------------------------------------------------
# The linear probe, SPC, optimised SPC and AUROC
# --------------------------------------------------------------------------------------


def test_linear_probe_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    encoder = ContrastiveEncoder((1, 3, 3), hidden=8, features=6, projection=2)
    x = torch.rand(60, 1, 3, 3, generator=g)
    y = torch.arange(60) % 3
    lam = 1e-2
    probe = fit_linear_probe(encoder, x, y, weight_decay=lam, tol=1e-9, max_iter=2000)
    h = ((encoder.features(x) - probe.mean) / probe.std).detach().numpy()
    # mean CE + lam/2 |W|^2  <=>  sklearn's C sum CE + 1/2 |W|^2 with C = 1 / (n lam)
    ref = LogisticRegression(C=1 / (60 * lam), tol=1e-12, max_iter=10_000).fit(h, y.numpy())
    ours = torch.softmax(probe(x), dim=1).detach().numpy()
    assert np.abs(ours - ref.predict_proba(h)).max() < 1e-6


def _toy_classifier(x: torch.Tensor) -> torch.Tensor:
    """Three classes from the mean of the left half and the right half of the image."""
    left, right = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3)), x[..., x.shape[-1] // 2 :].mean(dim=(1, 2, 3))
    return torch.stack([left, right, 0.3 + 0.0 * left], dim=1) * 4


def test_spc_matches_a_direct_computation() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, 4, 4, generator=g) * torch.rand(30, 1, 1, 1, generator=g)
    scales = (2, 3, 5, 8)
    spc = scaled_prediction_consistency(_toy_classifier, x, scales)
    for i in range(len(x)):
        base = int(_toy_classifier(x[i : i + 1]).argmax())
        agree = [int(_toy_classifier(torch.clamp(n * x[i : i + 1], 0, 1)).argmax()) == base for n in scales]
        assert float(spc[i]) == sum(agree) / len(scales)
    assert 0 < float(spc.mean()) < 1  # both outcomes occur


def test_optimized_spc_scores_mask_and_selection_follow_their_definitions() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, 4, 4, generator=g) * torch.rand(40, 1, 1, 1, generator=g)
    scales, tau = (2, 4, 6), 0.1
    result = optimized_spc(_toy_classifier, x, scales, tau=tau, rounds=2, inner_steps=5, l1=0.05)
    m = result.mask
    assert m.shape == (4, 4) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert float(m.min()) < 1  # the l1 term moved it
    for i in range(len(x)):
        base = int(_toy_classifier(x[i : i + 1]).argmax())
        votes = [
            2 * (int(_toy_classifier(torch.clamp(n * (x[i : i + 1] - tau) * m, 0, 1)).argmax()) == base) - 1
            for n in scales
        ]
        assert float(result.scores[i]) == pytest.approx(sum(votes) / len(scales), abs=1e-15)
    assert torch.equal(result.selected, result.scores > 0)
    assert result.history["selected"][-1] == int(result.selected.sum())
    unmasked = optimized_spc(_toy_classifier, x, scales, tau=tau, rounds=0)
    assert torch.equal(unmasked.mask, torch.ones(4, 4))


@pytest.mark.parametrize("ties", [False, True])
def test_auroc_matches_scikit_learn(ties: bool) -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 300).astype(float) if ties else rng.normal(size=300)
    labels = rng.random(300) < 0.2
    assert auroc(torch.tensor(scores), torch.tensor(labels)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-14)
    assert auroc(np.arange(4.0), [0, 0, 1, 1]) == 1.0 and auroc(np.zeros(4), [0, 1, 0, 1]) == 0.5
    with pytest.raises(ValueError, match="positive and one negative"):
        auroc(scores, np.zeros(300))
