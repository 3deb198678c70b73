# %% [markdown]
# # Stating your own bilevel problem
#
# A bilevel problem is two functions of an outer variable `x` and an inner variable `y`:
#
# $$
# \min_x \; h(x) = F(x, y^*(x)), \qquad y^*(x) = \operatorname{argmin}_y f(x, y).
# $$
#
# Here we tune the **ridge penalty** of a linear regression: `y` are the regression
# weights, trained on a training set with the penalty `exp(x)`, and `x` is chosen to
# minimise the loss on a held-out validation set. Both objectives are plain functions of
# `(x, y)` that return a 0-d tensor; everything they read besides `x` and `y` is data.
#
# Run this page as a script: `python docs/tutorials/own_problem.py`.

# %%
import torch

import bilevel

torch.manual_seed(0)
n, d = 80, 6
w_true = torch.tensor([2.0, -1.0, 0.5, 0.3, -0.2, 0.1], dtype=torch.float64)
A_train, A_val = torch.randn(n, d, dtype=torch.float64), torch.randn(n, d, dtype=torch.float64)
b_train = A_train @ w_true + 0.8 * torch.randn(n, dtype=torch.float64)
b_val = A_val @ w_true + 0.8 * torch.randn(n, dtype=torch.float64)


def lower(x, y):  # f(x, y): penalised training loss
    return 0.5 * ((A_train @ y - b_train) ** 2).mean() + 0.5 * (torch.exp(x) * y**2).sum()


def upper(x, y):  # F(x, y): validation loss of the trained weights
    return 0.5 * ((A_val @ y - b_val) ** 2).mean()


problem = bilevel.BilevelProblem(upper=upper, lower=lower)
zeros = torch.zeros(d, dtype=torch.float64)
print(f"F(x, 0) = {problem.upper_value(zeros[:1], zeros).item():.4f}, "
      f"f(x, 0) = {problem.lower_value(zeros[:1], zeros).item():.4f}")

# %% [markdown]
# `BilevelProblem` is a frozen, validating dataclass: it checks that the objectives are
# callable and that the optional fields (data streams, constraints, bounds) are consistent.
#
# ## Solving it
#
# `bilevel.solve` runs an outer algorithm by name. `"aid"` (approximate implicit
# differentiation) takes `inner_steps` gradient steps on `f` per outer iteration, then
# estimates the hypergradient `grad h(x) = grad_x F - B H^{-1} grad_y F` with conjugate
# gradients (`H`, `B` the second derivatives of `f`). Step sizes must suit the problem: the
# inner step below `2 / L_y`, where `L_y` bounds the curvature of `f(x, .)`.

# %%
x0 = torch.zeros(1, dtype=torch.float64)  # penalty exp(0) = 1
y0 = torch.zeros(d, dtype=torch.float64)
result = bilevel.solve(
    problem, x0, y0, method="aid",
    inner_steps=10, inner_step_size=0.3, outer_step_size=3.0,
    maxiter=200, tol=1e-5,
)
print("status:", result.status, "after", result.n_iter, "outer iterations:", result.message)
print(f"learnt penalty exp(x) = {torch.exp(result.x).item():.4f}")
print("validation loss: start", f"{result.history['upper_value'][0]:.5f}",
      "end", f"{result.history['upper_value'][-1]:.5f}")

# %% [markdown]
# The history records, at every outer iteration, the upper value, the hypergradient norm,
# the lower-level gradient norm and the cumulative oracle counts:

# %%
for key in ("iteration", "upper_value", "hypergrad_norm", "lower_grad_norm", "grad_calls", "hvp_calls"):
    print(f"{key:16s}", [round(v, 6) for v in result.history[key][::8]])

# %% [markdown]
# ## Checking the answer against a closed form
#
# For this problem `y*(x) = (A^T A / n + exp(x) I)^{-1} A^T b / n`, so `h(x)` and its
# gradient can be computed exactly (autograd through a direct solve). The hypergradient
# estimator used by `"aid"` is also available on its own, in `bilevel.hypergrad`:

# %%
def y_star(x):
    H = A_train.T @ A_train / n + torch.exp(x) * torch.eye(d, dtype=x.dtype)
    return torch.linalg.solve(H, A_train.T @ b_train / n)


x = result.x.clone().requires_grad_(True)
h = upper(x, y_star(x))
(exact_grad,) = torch.autograd.grad(h, x)
estimate = bilevel.hypergrad.implicit(problem, result.x, y_star(result.x), tol=1e-12)
print(f"h(x) at the answer {h.item():.6f}; h(x0) {upper(x0, y_star(x0)).item():.6f}")
print(f"|grad h| at the answer (closed form) {exact_grad.norm().item():.2e}")
print(f"implicit estimator vs closed form: max abs difference "
      f"{(estimate.grad - exact_grad).abs().max().item():.2e}")

# %% [markdown]
# ## Other algorithms
#
# Every method takes the same problem. `"itd"` backpropagates through the inner
# iterations, `"penalty"` and `"f2sa"` are first order (no Hessian-vector products); their
# hyperparameters are the keyword arguments of `solve` (see `bilevel.methods`). A run that
# stops before `tol` ends with status `"max_iterations"` and a
# `bilevel.errors.ConvergenceWarning`, never silently:

# %%
import warnings

common = dict(inner_steps=10, inner_step_size=0.3, outer_step_size=3.0)
for method, options in [("itd", common), ("aid", dict(common, linear_solver="neumann")),
                        ("aid", dict(common, maxiter=5))]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = bilevel.solve(problem, x0, y0, method=method, **{"maxiter": 200, "tol": 1e-5, **options})
    print(f"{method:4s} {r.n_iter:3d} iterations, status {r.status:15s} "
          f"exp(x) = {torch.exp(r.x).item():.4f}, h = {upper(r.x, y_star(r.x)).item():.6f}, "
          f"warnings: {[type(w.message).__name__ for w in caught]}")
