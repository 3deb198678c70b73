# %% [markdown]
# # Constrained lower levels
#
# The lower level may have constraints `g(x, y) <= 0`, `h(x, y) = 0` and bounds, which may
# couple `x` and `y`:
#
# $$
# \min_x F(x, y^*(x)), \qquad
# y^*(x) \in \operatorname{argmin}_y \{ f(x, y) : g(x, y) \le 0,\ h(x, y) = 0 \}.
# $$
#
# The example is small enough to solve by hand:
# `min (x - 1)^2 + (y - 0.8)^2` with `y*(x) = argmin {(y - x)^2 / 2 : x + y <= 1}`, so
# `y*(x) = min(x, 1 - x)`. On the branch `x >= 1/2` the constraint is active and
# `h(x) = (x - 1)^2 + (0.2 - x)^2`, minimised at `x* = 0.6`, `y* = 0.4`, with value 0.32.
#
# Run this page as a script: `python docs/tutorials/constrained.py`.

# %%
import warnings

import torch

import bilevel
from bilevel.constrained import kkt_argmin, kkt_hypergradient, solve_lower

D = torch.float64
problem = bilevel.BilevelProblem(
    upper=lambda x, y: ((x - 1) ** 2).sum() + ((y - 0.8) ** 2).sum(),
    lower=lambda x, y: 0.5 * ((y - x) ** 2).sum(),
    lower_ineq=lambda x, y: y + x - 1,          # g(x, y) <= 0, a 1-D tensor
)


def h(x: float) -> float:                        # closed form, for checking
    return (x - 1) ** 2 + (min(x, 1 - x) - 0.8) ** 2

# %% [markdown]
# ## The lower-level solution and its derivative
#
# `solve_lower` returns a KKT point with its multipliers; `kkt_argmin` makes `y*(x)` a
# differentiable function of `x` by implicit differentiation of the reduced KKT system
# (the active constraints held as equalities), so it composes with autograd.
# `kkt_hypergradient` computes `dF(x, y*(x))/dx` directly:

# %%
x = torch.tensor([0.7], dtype=D, requires_grad=True)
y, solution = kkt_argmin(problem, x, torch.zeros(1, dtype=D))
print(f"y*(0.7) = {y.item():.6f}, multiplier {solution.ineq_multipliers.item():.4f}, "
      f"KKT residual {solution.kkt_residual:.1e}")
problem.upper(x, y).backward()
hg = kkt_hypergradient(problem, x.detach(), y.detach())
eps = 1e-6
fd = (h(0.7 + eps) - h(0.7 - eps)) / (2 * eps)
print(f"dh/dx at 0.7: autograd through kkt_argmin {x.grad.item():.8f}, "
      f"kkt_hypergradient {hg.grad.item():.8f}, central differences {fd:.8f}")
print("active constraints:", hg.active.tolist(), f"condition number {hg.condition_number:.2f}")

# %% [markdown]
# Where strict complementarity fails (at `x = 0.5` the constraint is active with a zero
# multiplier, and `y*` has a kink), the derivative is one-sided and a warning says so
# instead of returning a number silently:

# %%
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    x_kink = torch.tensor([0.5], dtype=D)
    y_kink = solve_lower(problem, x_kink, torch.zeros(1, dtype=D)).y
    kkt_hypergradient(problem, x_kink, y_kink)
print([f"{type(w.message).__name__}: {str(w.message)[:90]}..." for w in caught])

# %% [markdown]
# ## Solving the bilevel problem
#
# Two methods handle constraints. `"classical"` targets small nonlinear bilevel programs
# with global quality: a multistart over the KKT (MPCC) and value-function
# reformulations, with the lower level of the answer certified by a multistart check
# (`info["lower_gap"] = f(x, y) - min_y f(x, .)`):

# %%
zero = torch.zeros(1, dtype=D)
result = bilevel.solve(problem, zero, zero, method="classical", maxiter=5)
print(f"classical: status {result.status}, x = {result.x.item():.6f}, y = {result.y.item():.6f}, "
      f"F = {problem.upper(result.x, result.y).item():.6f}, lower gap {result.info['lower_gap']:.1e}")

# %% [markdown]
# `"lv-hba"` (Yao et al., ICLR 2024) is single loop and first order, suited to larger
# problems; its accuracy is limited by a penalty `c_k = c0 k^p` that grows with the
# iterations, and it reports the multiplier and whether `y` solves the lower level:

# %%
result = bilevel.solve(problem, zero, zero, method="lv-hba", maxiter=3000, tol=1e-6,
                       c0=1.0, p=0.3, record_every=100)
print(f"lv-hba: status {result.status} after {result.n_iter} iterations, x = {result.x.item():.6f}, "
      f"y = {result.y.item():.6f}, multiplier {result.info['ineq_multipliers'][0].item():.4f}, "
      f"lower level solved: {result.info['lower_level_solved']}, projection {result.info['projection']!r}")

# %% [markdown]
# The unconstrained methods (`"aid"`, `"itd"`, ...) refuse a problem with constraints
# rather than ignore them:

# %%
try:
    bilevel.solve(problem, zero, zero, method="aid")
except ValueError as err:
    print("ValueError:", err)
