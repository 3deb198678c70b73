"""bilevel.nn.BilevelTrainer and bilevel.nn.optim: mechanics against exact references."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import bilevel.nn as bnn
from bilevel.errors import ConvergenceWarning, DivergenceError


# ---------------------------------------------------------------------------- functional optimizers
@pytest.mark.parametrize(
    ("make", "kwargs"),
    [
        (torch.optim.SGD, dict(lr=0.1)),
        (torch.optim.SGD, dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-2)),
        (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
        (torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), weight_decay=1e-2)),
        (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    ],
)
def test_functional_optimizers_match_torch_optim(make, kwargs) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    X, y = torch.randn(16, 3), torch.randn(16, 2)
    opt = make(model.parameters(), foreach=False, **kwargs)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    for t in range(8):
        if t == 3:  # mirror the live optimizer mid-run: state (momentum, moments) included
            fopt, state = bnn.optim.from_torch(opt, dict(model.named_parameters()))
            params = {k: v.detach().clone() for k, v in model.named_parameters()}
        opt.zero_grad()
        ((model(X) - y) ** 2).mean().backward()
        grads = {k: v.grad.detach().clone() for k, v in model.named_parameters()}
        opt.step()
        if t >= 3:
            params, state = fopt.step(params, grads, state)
    for k, p in model.named_parameters():
        torch.testing.assert_close(params[k], p.detach(), rtol=1e-13, atol=1e-15)


def test_functional_optimizer_validation() -> None:
    with pytest.raises(ValueError, match="SGD: lr"):
        bnn.optim.SGD(lr=0.0)
    with pytest.raises(ValueError, match="nesterov"):
        bnn.optim.SGD(lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="betas"):
        bnn.optim.Adam(betas=(0.9, 1.0))
    model = nn.Linear(2, 1)
    with pytest.raises(TypeError, match="no functional twin of RMSprop"):
        bnn.optim.from_torch(torch.optim.RMSprop(model.parameters()), dict(model.named_parameters()))


def test_adam_step_has_finite_gradient_where_a_gradient_entry_is_zero() -> None:
    opt = bnn.optim.Adam(lr=0.1)
    lam = torch.tensor([1.0, 0.0], requires_grad=True)
    p = {"p": torch.zeros(2)}
    new, _ = opt.step(p, {"p": lam * torch.tensor([2.0, 3.0])}, opt.init(p))
    (g,) = torch.autograd.grad(new["p"].sum(), lam)
    assert torch.isfinite(g).all()


# ---------------------------------------------------------------------------- trainer
def _problem(seed: int = 0, n: int = 48):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 5, generator=g)
    y = (X[:, 0] > 0).long()
    idx = torch.arange(n)
    Xv = torch.randn(32, 5, generator=g)
    yv = (Xv[:, 0] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
    hp = {"w": torch.zeros(n, requires_grad=True)}

    def inner(m, h, batch):
        xb, yb, ib = batch
        losses = nn.functional.cross_entropy(m(xb), yb, reduction="none")
        return (torch.sigmoid(h["w"][ib]) * losses).mean() + 1e-3 * sum((p**2).sum() for p in m.parameters())

    def outer(m, h, batch):
        xb, yb = batch
        return nn.functional.cross_entropy(m(xb), yb)

    train = TensorDataset(X, y, idx)
    val = TensorDataset(Xv, yv)
    return model, hp, inner, outer, train, val


def _trainer(seed: int = 0, method: str = "cg", **kw):
    model, hp, inner, outer, train, val = _problem(seed)
    inner_opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    outer_opt = torch.optim.Adam([hp["w"]], lr=0.05)
    defaults = dict(
        inner_optimizer=inner_opt,
        outer_optimizer=outer_opt,
        inner_data=DataLoader(train, batch_size=16, shuffle=True),
        outer_data=DataLoader(val, batch_size=16, shuffle=True),
        inner_steps=3,
        method=method,
        method_options={"maxiter": 5, "ridge": 1e-2} if method == "cg" else {},
        inner_scheduler=torch.optim.lr_scheduler.StepLR(inner_opt, step_size=4, gamma=0.5),
    )
    defaults.update(kw)
    return bnn.BilevelTrainer(model, hp, inner, outer, **defaults), model, hp


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")
@pytest.mark.parametrize("method", ["cg", "unrolled"])
def test_checkpoint_resume_is_bit_for_bit(tmp_path, method: str) -> None:
    torch.manual_seed(123)
    trainer, model, hp = _trainer(method=method)
    full = trainer.fit(10, log=tmp_path / "full.jsonl")
    final = {k: v.clone() for k, v in model.state_dict().items()}
    final_w = hp["w"].detach().clone()

    torch.manual_seed(123)
    first, _, _ = _trainer(method=method)
    first.fit(4, checkpoint=tmp_path / "ckpt.pt", log=tmp_path / "part.jsonl")
    torch.manual_seed(999)  # a different process state: the checkpoint must restore it
    second, model2, hp2 = _trainer(method=method)
    resumed = second.fit(10, resume=tmp_path / "ckpt.pt", log=tmp_path / "part.jsonl")
    assert resumed.steps == 10 and resumed.status == "completed"
    for k, v in model2.state_dict().items():
        assert torch.equal(v, final[k]), k
    assert torch.equal(hp2["w"].detach(), final_w)
    assert [r["outer_loss"] for r in resumed.history] == [r["outer_loss"] for r in full.history]
    lines = [json.loads(line) for line in (tmp_path / "part.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, 11))
    assert [r["inner_loss"] for r in lines] == full.column("inner_loss")


@pytest.mark.filterwarnings("ignore::bilevel.errors.ConvergenceWarning")
def test_callbacks_history_and_schedulers() -> None:
    trainer, _, hp = _trainer()
    seen = []
    result = trainer.fit(20, callbacks=[lambda t, r: seen.append(r["step"]) or r["step"] >= 5])
    assert result.status == "stopped" and result.steps == 5 and seen == [1, 2, 3, 4, 5]
    assert set(result.history[0]) >= {"step", "inner_loss", "outer_loss", "hypergrad_norm", "inner_lr", "solve_iterations"}
    # StepLR(4, 0.5) stepped after every inner step: 3 per outer step
    assert result.column("inner_lr")[0] == 0.1 and result.column("inner_lr")[-1] == 0.1 * 0.5**3
    assert hp["w"].grad is not None


def test_hyperparameter_step_uses_the_hypergradient() -> None:
    """One outer step with SGD(lr=1) on the hparams moves them by minus the hypergradient
    computed at the model after its inner steps, on the next inner and outer batches."""
    model, hp, inner, outer, train, val = _problem(3)
    batches = [train[0:16], train[16:32], train[32:48]]
    vbatch = val[0:16]
    trainer = bnn.BilevelTrainer(
        model, hp, inner, outer,
        inner_optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        outer_optimizer=torch.optim.SGD([hp["w"]], lr=1.0),
        inner_data=batches, outer_data=[vbatch], inner_steps=2, method="fd", method_options={"xi": 0.1},
    )
    reference = copy.deepcopy(model)
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1)
    fixed = {"w": hp["w"].detach()}
    for b in batches[:2]:
        ref_opt.zero_grad()
        inner(reference, fixed, b).backward()
        ref_opt.step()
    w0 = hp["w"].detach().clone()
    trainer.fit(1)
    for (k, v), r in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(v.detach(), r.detach(), rtol=1e-12, atol=1e-14)
    expected = bnn.hypergradient(
        model, {"w": w0.clone().requires_grad_(True)}, inner, outer, batches[2], vbatch,
        method="fd", xi=0.1,
    )
    torch.testing.assert_close(hp["w"].detach(), w0 - expected["w"], rtol=1e-12, atol=1e-14)


def test_gradient_accumulation_equals_the_full_batch() -> None:
    model, hp, inner, outer, train, val = _problem(4, n=32)
    full = [train[0:32]]
    halves = [train[0:16], train[16:32]]
    results = []
    for data, acc in ((full, 1), (halves, 2)):
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 2))
        h = {"w": torch.zeros(32, requires_grad=True)}
        t = bnn.BilevelTrainer(
            m, h, inner, outer,
            inner_optimizer=torch.optim.SGD(m.parameters(), lr=0.1),
            outer_optimizer=torch.optim.SGD([h["w"]], lr=0.5),
            inner_data=data, outer_data=[val[0:32]], inner_steps=1, inner_accumulation=acc,
            outer_accumulation=1, method="fd", method_options={"xi": 0.0},
        )
        t.fit(1)
        results.append({k: v.detach().clone() for k, v in m.named_parameters()})
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-12, atol=1e-14)


def test_bf16_autocast_runs_the_inner_steps_in_bf16_and_the_hypergradient_in_fp32() -> None:
    torch.set_default_dtype(torch.float32)  # restored by the conftest fixture
    trainer, model, _ = _trainer(method="fd", inner_autocast=torch.bfloat16, method_options={"xi": 0.05})
    seen = []
    model[0].register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    result = trainer.fit(2)
    assert all(math.isfinite(r["outer_loss"]) for r in result.history)
    assert torch.bfloat16 in seen and torch.float32 in seen


def test_inner_loss_growth_warns_then_non_finite_raises() -> None:
    model, hp, inner, outer, train, val = _problem(5)
    calls = [0]

    def growing(m, h, batch):  # an inner loss that grows tenfold per call, then overflows
        calls[0] += 1
        return inner(m, h, batch) * 10.0 ** min(calls[0], 400)

    trainer = bnn.BilevelTrainer(
        model, hp, growing, outer,
        inner_optimizer=torch.optim.SGD(model.parameters(), lr=1e-12),
        outer_optimizer=torch.optim.SGD([hp["w"]], lr=0.0),
        inner_data=[train[0:16]], outer_data=[val[0:16]], method="fd",
    )
    with pytest.warns(ConvergenceWarning, match="inner loss grew"):
        with pytest.raises(DivergenceError, match="inner loss became inf"):
            trainer.fit(500)


def test_trainer_validation() -> None:
    model, hp, inner, outer, train, val = _problem(6)
    base = dict(
        inner_optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        outer_optimizer=torch.optim.SGD([hp["w"]], lr=0.1),
        inner_data=[train[0:16]], outer_data=[val[0:16]],
    )
    with pytest.raises(ValueError, match="inner_steps"):
        bnn.BilevelTrainer(model, hp, inner, outer, inner_steps=0, **base)
    with pytest.raises(ValueError, match="method"):
        bnn.BilevelTrainer(model, hp, inner, outer, method="sgd", **base)
    with pytest.raises(TypeError, match="outer_optimizer"):
        bnn.BilevelTrainer(model, hp, inner, outer, **{**base, "outer_optimizer": 0.1})
    with pytest.raises(ValueError, match="outer_clip"):
        bnn.BilevelTrainer(model, hp, inner, outer, outer_clip=-1.0, **base)
