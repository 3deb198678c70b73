# %% [markdown]
# # Deep learning: `bilevel.nn`
#
# When the lower level trains an unmodified `nn.Module`, its parameters `theta` are the
# inner variable and the hyperparameters `lambda` a dict of tensors (or a module):
#
# $$
# \min_\lambda F(\theta^*(\lambda), \lambda), \qquad
# \theta^*(\lambda) \in \operatorname{argmin}_\theta f(\theta, \lambda).
# $$
#
# Both losses are written as `loss(model, hparams, batch) -> scalar`: call the model,
# read its parameters, index the hyperparameters. `bilevel.nn.hypergradient` differentiates
# through training at the model's current parameters; `bilevel.nn.BilevelTrainer`
# alternates inner optimizer steps with hyperparameter steps.
#
# Run this page as a script: `python docs/tutorials/nn_engine.py`.

# %% [markdown]
# ## One hypergradient, five ways, against a closed form
#
# A linear model with one weight-decay strength per input feature: the trained weights are
# a ridge solution, so the exact hypergradient is available by autograd through a direct
# solve. Everything runs in float64 so that the comparison is meaningful.

# %%
import torch
import torch.nn.functional as F
from torch import nn

import bilevel.nn

torch.manual_seed(0)
torch.set_default_dtype(torch.float64)
n, d = 100, 4
X_tr, X_val = torch.randn(n, d), torch.randn(n, d)
w_true = torch.tensor([1.0, -0.5, 0.25, 0.0])
y_tr = X_tr @ w_true + 0.3 * torch.randn(n)
y_val = X_val @ w_true + 0.3 * torch.randn(n)

model = nn.Linear(d, 1, bias=False)
hparams = {"log_wd": torch.full((d,), -2.0, requires_grad=True)}


def inner_loss(model, hp, batch):
    X, y = batch
    decay = (torch.exp(hp["log_wd"]) * model.weight[0] ** 2).sum()
    return 0.5 * ((model(X)[:, 0] - y) ** 2).mean() + 0.5 * decay


def outer_loss(model, hp, batch):
    X, y = batch
    return 0.5 * ((model(X)[:, 0] - y) ** 2).mean()


def ridge(log_wd):  # the exact inner solution theta*(lambda)
    return torch.linalg.solve(X_tr.T @ X_tr / n + torch.diag(torch.exp(log_wd)), X_tr.T @ y_tr / n)


with torch.no_grad():                                  # put the model at theta*(lambda)
    model.weight.copy_(ridge(hparams["log_wd"])[None])

lw = hparams["log_wd"].detach().requires_grad_(True)
(exact,) = torch.autograd.grad(0.5 * ((X_val @ ridge(lw) - y_val) ** 2).mean(), lw)
print("exact      ", exact.numpy().round(6))

for method, options in [("cg", {}), ("neumann", {"steps": 100}), ("fd", {"xi": 0.5}),
                        ("unrolled", {"steps": 50}), ("penalty", {"multiplier": 100.0, "steps": 100})]:
    g = bilevel.nn.hypergradient(model, hparams, inner_loss, outer_loss,
                                 (X_tr, y_tr), (X_val, y_val), method=method, **options)
    error = (g["log_wd"] - exact).norm() / exact.norm()
    print(f"{method:11s}", g["log_wd"].numpy().round(6), f"relative error {error:.1e}",
          f"({g.info.hvp_calls} products)")

# %% [markdown]
# `"cg"` solves `H u = grad_theta F` exactly (here `H` is 4 x 4); `"neumann"` truncates the
# series `u = alpha sum_k (I - alpha H)^k grad_theta F`; `"fd"` is DARTS' finite-difference
# approximation (one virtual SGD step of size `xi`), `"unrolled"` differentiates through
# `steps` SGD steps from the current parameters and `"penalty"` is first order (no second
# derivatives), its bias shrinking as the multiplier grows. The model itself is never
# modified: the engine calls it through `torch.func.functional_call`.
#
# ## Training: learning per-example weights against label noise
#
# A small MLP on two Gaussian blobs, with 30 % of the training labels flipped. Each training
# example gets a weight `sigmoid(a_i)` in the inner loss; the outer loss is the plain loss on
# a small clean validation set. `BilevelTrainer` takes any `torch.optim` optimizer for
# each level and `DataLoader`s (or any iterables of batches).

# %%
from torch.utils.data import DataLoader, TensorDataset

torch.set_default_dtype(torch.float32)
g = torch.Generator().manual_seed(0)


def blobs(m):
    labels = torch.randint(0, 2, (m,), generator=g)
    points = torch.randn(m, 2, generator=g) + 1.2 * (2 * labels[:, None] - 1)
    return points, labels


X_train, y_clean = blobs(400)
X_valid, y_valid = blobs(100)
X_test, y_test = blobs(2000)
flip = torch.rand(400, generator=g) < 0.3
y_noisy = torch.where(flip, 1 - y_clean, y_clean)


def make_model():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 2))


def accuracy(net):
    with torch.no_grad():
        return (net(X_test).argmax(1) == y_test).float().mean().item()


def weighted_loss(model, hp, batch):
    x, y, idx = batch
    losses = F.cross_entropy(model(x), y, reduction="none")
    return (torch.sigmoid(hp["a"][idx]) * losses).mean()


def validation_loss(model, hp, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


train = TensorDataset(X_train, y_noisy, torch.arange(400))
net = make_model()
weights = {"a": torch.full((400,), 2.0, requires_grad=True)}
trainer = bilevel.nn.BilevelTrainer(
    net, weights, weighted_loss, validation_loss,
    inner_optimizer=torch.optim.SGD(net.parameters(), lr=0.2, momentum=0.9),
    outer_optimizer=torch.optim.Adam(weights.values(), lr=0.5),
    inner_data=DataLoader(train, batch_size=100, shuffle=True, generator=g),
    outer_data=[(X_valid, y_valid)],
    hypergradient_data=[(X_train, y_noisy, torch.arange(400))],
    inner_steps=5, method="neumann", method_options={"steps": 10, "alpha": 0.5},
)
result = trainer.fit(40)
print(result)
for record in result.history[::10]:
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()
           if k in ("step", "inner_loss", "outer_loss", "hypergrad_norm")})

w = torch.sigmoid(weights["a"]).detach()
print(f"mean weight: correctly labelled {w[~flip].mean():.3f}, flipped {w[flip].mean():.3f}")

# %% [markdown]
# The same network trained for the same number of inner steps on the noisy labels with
# uniform weights, as a baseline:

# %%
baseline = make_model()
opt = torch.optim.SGD(baseline.parameters(), lr=0.2, momentum=0.9)
loader = DataLoader(train, batch_size=100, shuffle=True, generator=g)
steps = 0
while steps < 40 * 5:
    for x, y, _ in loader:
        opt.zero_grad()
        F.cross_entropy(baseline(x), y).backward()
        opt.step()
        steps += 1
print(f"test accuracy: reweighted {accuracy(net):.3f}, plain training on noisy labels "
      f"{accuracy(baseline):.3f}")

# %% [markdown]
# `fit` also takes `callbacks`, a JSON-lines `log`, `checkpoint`/`resume` (bit for bit)
# and `progress=True`; wrap the model in `DistributedDataParallel` and launch with
# `torchrun` to average gradients and Hessian-vector products over processes (see
# `examples/nn_reweighting.py`).
