# %% [markdown]
# # Two-stage robust optimization
#
# A decision `x` is taken now, an adversary then picks the uncertain parameter `xi` from a
# polytope `Xi`, and a recourse decision `y` reacts to it:
#
# $$
# \min_{x \in X} \; \max_{\xi \in \Xi} \; \min_{y \in Y(x, \xi)} \;
# c^T x + \xi^T C x + d^T y + \xi^T D y,
# $$
#
# with `Y(x, xi) = {y : W(xi) y + T(xi) x <= h(xi)}` (affine in `xi`) and integer or
# continuous variables at both stages. `bilevel.robust` solves it exactly by
# column-and-constraint generation (CCG) on the HiGHS MILP solver, or approximately with
# Neur2RO's learnt value network.
#
# Run this page as a script: `python docs/tutorials/robust_optimization.py`.
#
# ## Stating your own model: capacity under uncertain demand
#
# Install an integer capacity `x` (cost 2 per unit) before two demands
# `D_j = 5 + 5 xi_j` are known; the adversary's budget allows `sum_j xi_j <= 1`. Then
# produce `y_j` in house (cost 1 per unit, total at most `x`) and outsource `z_j` (cost 6 per
# unit) so that `y_j + z_j >= D_j` (a continuous recourse whose constraints depend on `xi`
# through their right-hand side: the exact adversary needs finite bounds on `y`). In-house units cost 3 in all, outsourcing 6, so the
# best plan installs the worst-case total demand: `x* = 15`, at worst-case cost
# `2 * 15 + 15 = 45`.

# %%
import json
import tempfile
from pathlib import Path

import numpy as np

import bilevel.robust as robust

# recourse variables (y_1, y_2, z_1, z_2); rows of W y + T x <= h + H xi
W = np.array([
    [1.0, 1.0, 0.0, 0.0],        # y_1 + y_2 - x <= 0          (capacity)
    [-1.0, 0.0, -1.0, 0.0],      # -(y_1 + z_1) <= -(5 + 5 xi_1) (demand 1)
    [0.0, -1.0, 0.0, -1.0],      # -(y_2 + z_2) <= -(5 + 5 xi_2) (demand 2)
])
problem = robust.TwoStageRobustProblem(
    c=np.array([2.0]), x_types="I", x_lb=np.array([0.0]), x_ub=np.array([30.0]),
    uncertainty=robust.UncertaintySet.budget(n=2, gamma=1.0),   # xi in [0, 1]^2, sum <= 1
    d=np.array([1.0, 1.0, 6.0, 6.0]), y_types="CCCC",
    y_lb=np.zeros(4), y_ub=np.array([30.0, 30.0, 10.0, 10.0]),   # finite: they set big-Ms
    W=W, T=np.array([[-1.0], [0.0], [0.0]]),
    h=np.array([0.0, -5.0, -5.0]), H=np.array([[0.0, 0.0], [-5.0, 0.0], [0.0, -5.0]]),
    name="capacity",
)
print(f"n_x={problem.n_x}, n_y={problem.n_y}, n_xi={problem.n_xi}, "
      f"uncertain constraints: {problem.has_constraint_uncertainty}")

result = robust.solve(problem, method="exact")
print(f"status {result.status}: x = {result.x}, worst-case cost {result.objective:.4f}, "
      f"bounds [{result.lower_bound:.4f}, {result.upper_bound:.4f}], {result.n_iter} iterations")
print("worst-case scenario xi =", np.round(result.xi, 4), " recourse y =", np.round(result.y, 4))

# %% [markdown]
# The model validates shapes, bounds and types when it is built (a wrong shape raises a
# `ValueError` naming the array). Every returned `x` is evaluated exactly: `robust.worst_case(problem, x)`
# solves the adversarial problem for any first-stage decision, which is how one compares
# alternatives:

# %%
for capacity in (10.0, 13.0, 15.0, 18.0):
    wc = robust.worst_case(problem, np.array([capacity]))
    print(f"x = {capacity:4.1f}: worst-case cost {wc.objective:.4f} at xi = {np.round(wc.xi, 4)}")

# %% [markdown]
# ## Instance files
#
# `write_instance` saves any problem as validated JSON (format `bilevel.robust/1`; the
# schema is on the [formats page](../formats.md)) and `read_instance` loads it back, so the
# same model can be solved from the command line with `bilevel robust solve capacity.json`:

# %%
with tempfile.TemporaryDirectory() as tmp:
    path = robust.write_instance(problem, Path(tmp) / "capacity.json")
    data = json.loads(path.read_text())
    print({k: data[k] for k in ("format", "problem", "name", "sense", "x_types", "uncertainty")})
    again = robust.solve(robust.read_instance(path))
    print(f"solved from the file: x = {again.x}, worst-case cost {again.objective:.4f}")
    data["W"] = data["W"][:2]                        # a malformed file names the problem
    path.write_text(json.dumps(data))
    try:
        robust.read_instance(path)
    except (robust.InstanceFormatError, ValueError) as err:
        print(type(err).__name__ + ":", str(err).replace(tmp, "..."))

# %% [markdown]
# ## Generated and published instances
#
# The two-stage robust knapsack of Arslan and Detienne (2022) ships with generators and the
# 72 published `n = 20` instances with their branch-and-price optima; `sense="max"` results
# are reported as profits:

# %%
knapsack = robust.generate_knapsack(8, "UN", dev=0.1, seed=0)
result = robust.solve(knapsack, method="exact")
print(f"generated knapsack n=8: status {result.status}, worst-case profit {result.objective:.2f}, "
      f"{result.n_iter} iterations, {result.time:.1f} s")
print("published instances:", len(robust.published_knapsack_names()), "e.g.", robust.published_knapsack_names()[0])

name = "RKP_UN_n20_R1000_H100_h80_dev0.1_d0.5"
result = robust.solve(robust.load_published_knapsack(name), method="exact")
print(f"{name}: worst-case profit {result.objective:.1f} (published optimum "
      f"{robust.published_knapsack_result(name).objective:.1f}), gap {result.gap:.1e}, "
      f"{result.n_iter} iterations")

# %% [markdown]
# `method="neur2ro"` trains a DeepSets value network on exactly labelled samples (or loads
# a model trained once for a class of instances with `bilevel robust train`), embeds it in
# MILPs and evaluates its answer exactly; see `bilevel.robust.solve` in the API reference.
