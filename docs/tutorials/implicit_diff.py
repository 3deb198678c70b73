# %% [markdown]
# # Implicit differentiation of your own solver
#
# Any solver whose output `x*(theta)` satisfies an optimality condition
# `F(x*, theta) = 0` can be differentiated without backpropagating through its iterations:
# the implicit function theorem gives
#
# $$
# \frac{\partial x^*}{\partial \theta} = -A^{-1} B, \qquad
# A = \partial_x F(x^*, \theta), \quad B = \partial_\theta F(x^*, \theta).
# $$
#
# `bilevel.implicit.custom_root` wraps a solver so that autograd, `torch.func` and
# `torch.vmap` use this formula; the linear systems with `A` are solved matrix-free by a
# solver of `bilevel.linalg`. The solver itself may do anything (Newton steps, early
# stopping, SciPy, ...): it runs without gradient tracking.
#
# Run this page as a script: `python docs/tutorials/implicit_diff.py`.

# %% [markdown]
# ## A Newton solver for L2-regularised logistic regression
#
# The inner problem is `min_w sum_i log(1 + exp(-y_i a_i^T w)) + lam/2 ||w||^2`, its
# optimality condition the gradient being zero. The solver below is a hand-written Newton
# method with a data-dependent stopping test, something plain autograd could only unroll.

# %%
import torch
from torch.func import grad

import bilevel

torch.manual_seed(0)
n, d = 200, 5
A = torch.randn(n, d, dtype=torch.float64)
labels = torch.sign(A @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0], dtype=torch.float64)
                    + 0.5 * torch.randn(n, dtype=torch.float64))
A_val, labels_val = A[150:], labels[150:]
A, labels = A[:150], labels[:150]


def inner_objective(w, lam, A, labels):
    return torch.nn.functional.softplus(-labels * (A @ w)).sum() + 0.5 * lam * (w**2).sum()


@bilevel.implicit.custom_root(grad(inner_objective), solve="cg")
def newton(init, lam, A, labels):
    w = init
    for iteration in range(50):
        g = grad(inner_objective)(w, lam, A, labels)
        if g.norm() < 1e-12:
            break
        H = torch.func.hessian(inner_objective)(w, lam, A, labels)
        w = w - torch.linalg.solve(H, g)
    return w


lam = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
w = newton(torch.zeros(d, dtype=torch.float64), lam, A, labels)
val_loss = torch.nn.functional.softplus(-labels_val * (A_val @ w)).mean()
val_loss.backward()
print(f"validation loss {val_loss.item():.6f}, d loss / d lam = {lam.grad.item():.8f}")

# %% [markdown]
# `optimality_fn` receives exactly the solver's arguments `(lam, A, labels)`: everything
# differentiable is passed explicitly, and only those arguments get gradients (here `A`
# too, if it required grad). The gradient with respect to `init` is zero.
#
# ## Checking it against central finite differences
#
# An independent oracle: re-solve at `lam +- eps` and difference the validation loss.

# %%
def validation_loss(lam_value):
    with torch.no_grad():
        w = newton(torch.zeros(d, dtype=torch.float64), torch.tensor(lam_value, dtype=torch.float64), A, labels)
        return torch.nn.functional.softplus(-labels_val * (A_val @ w)).mean().item()


eps = 1e-5
fd = (validation_loss(2.0 + eps) - validation_loss(2.0 - eps)) / (2 * eps)
print(f"implicit {lam.grad.item():.10f}   finite differences {fd:.10f}   "
      f"relative difference {abs(lam.grad.item() - fd) / abs(fd):.1e}")

# %% [markdown]
# ## Forward mode, Jacobians and vmap
#
# The same solver has a forward-mode rule (`A x_dot = -B theta_dot`), so `jacfwd` and
# `jacrev` agree, and `torch.vmap` solves a batch of problems (one per `lam`):

# %%
from torch.func import jacfwd, jacrev, vmap

w0 = torch.zeros(d, dtype=torch.float64)
lam0 = torch.tensor(2.0, dtype=torch.float64)
J_fwd = jacfwd(newton, argnums=1)(w0, lam0, A, labels)     # d w* / d lam, shape (d,)
J_rev = jacrev(newton, argnums=1)(w0, lam0, A, labels)
print("d w*/d lam (forward):", J_fwd.numpy().round(6))
print(f"max |forward - reverse| = {(J_fwd - J_rev).abs().max().item():.1e}")

lams = torch.tensor([0.1, 1.0, 10.0, 100.0], dtype=torch.float64)
W = vmap(newton, in_dims=(None, 0, None, None))(w0, lams, A, labels)
print("||w*(lam)|| for lam in", lams.tolist(), ":", W.norm(dim=1).numpy().round(4))

# %% [markdown]
# ## Fixed points: `custom_fixed_point`
#
# A solver returning `x = T(x, theta)` (here a small "equilibrium layer"
# `x = tanh(W x + b)`, a contraction since `||W|| < 1`) is differentiated through
# `A = d_x T - I`:

# %%
W_layer = 0.4 * torch.randn(d, d, dtype=torch.float64) / d**0.5


def T(x, b, W):
    return torch.tanh(W @ x + b)


@bilevel.implicit.custom_fixed_point(T, solve="gmres")
def equilibrium(init, b, W):
    x = init
    for _ in range(200):
        x = T(x, b, W)
    return x


b = torch.randn(d, dtype=torch.float64, requires_grad=True)
x_star = equilibrium(torch.zeros(d, dtype=torch.float64), b, W_layer)
(g_implicit,) = torch.autograd.grad(x_star.sum(), b)

x = torch.zeros(d, dtype=torch.float64)                   # oracle: unroll 200 iterations
for _ in range(200):
    x = T(x, b, W_layer)
(g_unrolled,) = torch.autograd.grad(x.sum(), b)
print(f"fixed-point residual {(T(x_star, b, W_layer) - x_star).norm().item():.1e}; "
      f"max |implicit - unrolled| gradient {(g_implicit - g_unrolled).abs().max().item():.1e}")

# %% [markdown]
# ## A solver you cannot decorate: `root_vjp`
#
# When the solution comes from elsewhere (here SciPy's L-BFGS on NumPy arrays), the
# functional primitive `root_vjp(F, sol, args, cotangent)` returns the vector-Jacobian
# products `-B^T u`, `A^T u = cotangent`, one per argument:

# %%
import numpy as np
from scipy.optimize import minimize

A_np, labels_np = A.numpy(), labels.numpy()


def fun(w):
    z = -labels_np * (A_np @ w)
    value = np.logaddexp(0, z).sum() + 0.5 * 2.0 * w @ w
    gradient = -(A_np.T @ (labels_np / (1 + np.exp(-z)))) + 2.0 * w
    return value, gradient


res = minimize(fun, np.zeros(d), jac=True, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15})
w_scipy = torch.tensor(res.x).requires_grad_(True)
loss = torch.nn.functional.softplus(-labels_val * (A_val @ w_scipy)).mean()
(cotangent,) = torch.autograd.grad(loss, w_scipy)          # d loss / d w
(lam_bar,) = bilevel.implicit.root_vjp(
    lambda w, lam: grad(inner_objective)(w, lam, A, labels), w_scipy.detach(),
    (torch.tensor(2.0, dtype=torch.float64),), cotangent, solve="cg",
)
print(f"SciPy solution + root_vjp: d loss / d lam = {lam_bar.item():.10f} "
      f"(Newton + custom_root: {lam.grad.item():.10f})")

# %% [markdown]
# ## Closed-over tensors are an error, not a silent zero
#
# If the optimality function reads a tensor that requires grad without receiving it as an
# argument, its gradient would be silently lost; `custom_root` refuses instead:

# %%
lam_closed = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)


@bilevel.implicit.custom_root(lambda w, A, labels: grad(inner_objective)(w, lam_closed, A, labels))
def bad_solver(init, A, labels):
    return newton(init, lam_closed.detach(), A, labels)


try:
    bad_solver(torch.zeros(d, dtype=torch.float64), A, labels).sum().backward()
except bilevel.errors.ClosureError as err:
    print("ClosureError:", str(err)[:160], "...")
