"""Small-scale CPU reproductions for the seed papers' stochastic methods (issue 20).

Sections (``--sections``, all by default); each prints a table and the script saves JSON
(``--json``):

* ``bsvrb``: Hu et al. (ICML 2023) parallel speed-up in the number of sampled blocks. A
  generated stand-in for the paper's a8a hyper-parameter optimisation with ``m = 100``
  logistic tasks: ``x`` = one weight logit per training example (shared), ``y_i`` = linear
  model of task ``i`` whose labels are scaled by a task temperature ``sigma_i`` (the official
  ``sig_list``), lower level the ``sigmoid(x)``-weighted training loss plus ``lambda/2
  |y_i|^2``, upper level the validation loss; minibatches of 32 points per task. BSVRBv2
  with the official update (delay factor, cyclic block sampling, ``gamma = 1``) and the
  library's default steps, which scale ``tau`` like ``I / m``, for ``I`` in
  ``--blocks``; reported: mean validation loss of all tasks against the iteration, and the
  iterations to close 90% of the gap to the best final loss.
* ``borep``: BO-REP (Hao et al., ICLR 2024) against SOBA and stocBiO on a synthetic
  ``(L0, L1)``-smooth problem of our own (``F`` with ``cosh`` terms, so the smoothness grows
  with the gradient; a quadratic strongly convex lower level with noisy minibatches):
  ``|grad h|`` relative to its start, average over the last 20% of iterations.
* ``f2sa``: F2SA with the paper's schedule (``lambda_k ~ k^(1/7)``, steps ``k^(-4/7)``,
  ``k^(-5/7)``) on a noisy finite-sum quadratic with known ``x*``: log-log slope of the
  average ``|grad h(x_k)|`` against ``k`` (paper: ``O(epsilon^(-7/2))`` iterations, i.e.
  ``|grad h| ~ k^(-2/7)``).
* ``penalty``: the penalty method with fixed ``sigma`` (the paper's ``sigma = O(epsilon)``):
  final ``|grad h|`` against ``sigma`` (paper: ``|grad psi_sigma - grad h| = O(sigma)``).

Run from the repository root: ``python benchmarks/solvers_papers.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bilevel
from bilevel.methods import BOREP, BSVRB, F2SA, Penalty
from bilevel.testproblems import FiniteSumQuadratic, QuadraticBilevel, Sampled

DTYPE = torch.float64
#: BSVRB outer step ``eta = ETA_PER_BLOCK_SHARE * I / m``.
ETA_PER_BLOCK_SHARE = 5.0


def trace(problem, x0, y0, method, iterations: int, metric) -> list[float]:
    """``metric(x_k)`` after every iteration of ``iterations`` (``tol = -1``: all run)."""
    values: list[float] = []
    bilevel.solve(
        problem,
        x0,
        y0,
        method,
        maxiter=iterations,
        tol=-1.0,
        callback=lambda it, state: values.append(metric(state.x)) and None,
    )
    return values


# --------------------------------------------------------------------------------------------
# BSVRB
# --------------------------------------------------------------------------------------------
def logistic_tasks(m: int = 100, n: int = 100, d: int = 5, lam: float = 1e-2, seed: int = 0):
    """The a8a stand-in: ``(problem, x0, y0, validation_loss)``."""
    from sklearn.datasets import make_classification

    X, labels = make_classification(
        n_samples=2 * n, n_features=d, n_informative=3, n_redundant=0, flip_y=0.2, random_state=seed
    )
    X = torch.cat([torch.ones(2 * n, 1), torch.as_tensor(X)], 1).to(DTYPE)
    s = torch.as_tensor(2.0 * labels - 1.0, dtype=DTYPE)
    gen = torch.Generator().manual_seed(seed)
    sigma = 0.5 + 1.5 * torch.rand(m, generator=gen, dtype=DTYPE)
    Xtr, Xva, str_, sva = X[:n], X[n:], s[:n], s[n:]

    def lower(x, y_i, i, batch):
        margins = (str_[batch] / sigma[i]) * (Xtr[batch] @ y_i)
        weights = torch.sigmoid(x[batch])
        return (weights * F.softplus(-margins)).mean() + 0.5 * lam * (y_i**2).sum()

    def upper(x, y_i, i, batch):
        margins = (sva[batch] / sigma[i]) * (Xva[batch] @ y_i)
        return F.softplus(-margins).mean()

    def validation_loss(y):
        margins = (sva / sigma[:, None]) * (y @ Xva.T)
        return float(F.softplus(-margins).mean())

    problem = bilevel.BilevelProblem(
        upper=upper,
        lower=lower,
        n_blocks=m,
        lower_data=Sampled(n, 32),
        upper_data=Sampled(n, 32),
    )
    # lower curvature <= (1/4) lambda_max(X^T X / n) / sigma_min^2 + lam (sigmoid(x) <= 1)
    L_y = 0.25 * float(torch.linalg.eigvalsh(Xtr.T @ Xtr / n).max()) / float(sigma.min()) ** 2
    L_y += lam
    x0, y0 = torch.zeros(n, dtype=DTYPE), torch.zeros(m, d + 1, dtype=DTYPE)
    return problem, x0, y0, validation_loss, L_y


def run_bsvrb(blocks: list[int], iterations: int, seed: int, m: int = 100) -> dict:
    """Steps scaled like the library's defaults for ``block_update="delay"``: ``tau = tau_v =
    (I / m) / L_y`` with ``L_y`` a bound on the tasks' lower curvature, and ``eta`` likewise
    proportional to ``I / m`` (given explicitly: the calibration's Lanczos runs over all
    ``m`` blocks are the slow part on a shared 2-core machine)."""
    problem, x0, y0, val, L_y = logistic_tasks(m=m, seed=0)
    rows = {}
    for I in blocks:
        losses = [val(y0)]
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        tau = (I / m) / L_y
        method = BSVRB(
            blocks_per_iter=I,
            inner_step_size=tau,
            linear_step_size=tau,
            outer_step_size=ETA_PER_BLOCK_SHARE * I / m,
        )
        bilevel.solve(
            problem,
            x0,
            y0,
            method,
            maxiter=iterations,
            tol=-1.0,
            callback=lambda it, state, losses=losses: (
                (it % 10 == 0 and losses.append(val(state.y))) and None
            ),
        )
        rows[I] = {
            "losses": losses,
            "seconds": time.perf_counter() - t0,
            "tau": tau,
            "eta": method.outer_step_size,
        }
        print(f"  I={I:3d}: loss {losses[0]:.4f} -> {losses[-1]:.4f} ({rows[I]['seconds']:.0f}s)")
    best = min(min(r["losses"]) for r in rows.values())
    for r in rows.values():
        target = r["losses"][0] - 0.9 * (r["losses"][0] - best)
        hit = next((10 * k for k, v in enumerate(r["losses"]) if v <= target), None)
        r["iterations_to_90pct"] = hit
    print("| I | tau | eta | loss@100 | loss@300 | final | its to 90% of gap | blocks sampled |")
    print("|---|---|---|---|---|---|---|---|")
    for I, r in rows.items():

        def at(k, r=r):
            return r["losses"][min(k // 10, len(r["losses"]) - 1)]

        hit = r["iterations_to_90pct"]
        print(
            f"| {I} | {r['tau']:.3g} | {r['eta']:.3g} | {at(100):.4f} | {at(300):.4f} | "
            f"{r['losses'][-1]:.4f} | {hit} | {None if hit is None else hit * I} |"
        )
    return {str(k): v for k, v in rows.items()}


# --------------------------------------------------------------------------------------------
# BO-REP
# --------------------------------------------------------------------------------------------
def unbounded_problem(seed: int = 0, n: int = 20, dim: int = 5):
    """``f(x, y; j) = 1/2 |y - A x - e_j|^2`` (noise ``e_j``, mean 0), ``F(x, y) = sum_k
    cosh(y_k - c_k) + 1/2 |x|^2``: ``h(x) = sum cosh((A x)_k - c_k) + 1/2 |x|^2``, whose
    Hessian grows with its gradient (``(L0, L1)``-smooth, not Lipschitz-smooth)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=gen, dtype=DTYPE) / math.sqrt(dim)
    c = torch.randn(dim, generator=gen, dtype=DTYPE)
    noise = 0.3 * torch.randn(n, dim, generator=gen, dtype=DTYPE)
    noise -= noise.mean(0)

    def lower(x, y, batch=None):
        e = noise.mean(0) if batch is None else noise[batch].mean(0)
        return 0.5 * ((y - A @ x - e) ** 2).sum()

    def upper(x, y, batch=None):
        return torch.cosh(y - c).sum() + 0.5 * (x**2).sum()

    def grad_h(x):
        return A.T @ torch.sinh(A @ x - c) + x

    problem = bilevel.BilevelProblem(upper=upper, lower=lower, lower_data=Sampled(n, 1))
    return problem, grad_h, dim


def run_borep(iterations: int, seeds: list[int]) -> dict:
    out = {}
    for seed in seeds:
        problem, grad_h, dim = unbounded_problem(seed)
        x0 = torch.full((dim,), 3.0, dtype=DTYPE)
        y0 = torch.zeros(dim, dtype=DTYPE)
        g0 = float(grad_h(x0).norm())
        for name, method in [
            ("borep eta=0.05/sqrt(t)", BOREP(outer_step_size=0.05, decreasing=True)),
            ("borep default", BOREP()),
            ("soba default", "soba"),
            ("stocbio default", "stocbio"),
        ]:
            torch.manual_seed(seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    norms = trace(
                        problem,
                        x0,
                        y0,
                        method,
                        iterations,
                        lambda x, grad_h=grad_h, g0=g0: float(grad_h(x).norm()) / g0,
                    )
                    tail = norms[-max(1, iterations // 5) :]
                    value = sum(tail) / len(tail)
                except bilevel.errors.DivergenceError:
                    value = float("inf")
            out.setdefault(name, []).append(value)
    print("| method | mean over last 20% of |grad h| / |grad h(x0)|, per seed |")
    print("|---|---|")
    for name, values in out.items():
        print(f"| {name} | {', '.join(f'{v:.2e}' for v in values)} |")
    return out


# --------------------------------------------------------------------------------------------
# F2SA and penalty
# --------------------------------------------------------------------------------------------
def run_f2sa(iterations: int, seeds: list[int], lambda_init: float) -> dict:
    marks = [30, 100, 300, 1000, 2000, 3000, 10000]
    marks = [k for k in marks if k <= iterations]
    curves = []
    for seed in seeds:
        q = QuadraticBilevel.random(5, 8, seed=seed, lower_condition=3.0)
        fs = FiniteSumQuadratic.build(q, noise=0.3, seed=seed)
        x0 = torch.zeros(5, dtype=DTYPE)
        g0 = float(q.hypergradient(x0).norm())
        eigs = torch.linalg.eigvalsh(q.H)
        beta = 1.0 / float(eigs.max() + torch.linalg.eigvalsh(q.A).max().clamp_min(0))
        method = F2SA(
            schedule="paper",
            inner_steps=3,
            inner_step_size=beta,
            outer_step_size=0.1,
            lambda_init=lambda_init,
        )
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", bilevel.errors.ConvergenceWarning)
            norms = trace(
                fs.sampled(),
                x0,
                torch.zeros(8, dtype=DTYPE),
                method,
                iterations,
                lambda x, q=q, g0=g0: float(q.hypergradient(x).norm()) / g0,
            )
        # running average over [k/2, k] (the paper bounds an average over iterates)
        curves.append([sum(norms[k // 2 : k]) / (k - k // 2) for k in marks])
    mean = [sum(c[i] for c in curves) / len(curves) for i in range(len(marks))]
    slope = float("nan")
    if len(marks) > 2:
        slope = (math.log(mean[-1]) - math.log(mean[1])) / (
            math.log(marks[-1]) - math.log(marks[1])
        )
    print("| k | " + " | ".join(str(k) for k in marks) + " |")
    print("|---|" + "---|" * len(marks))
    print("| avg |grad h|/|grad h(0)| | " + " | ".join(f"{v:.2e}" for v in mean) + " |")
    print(f"log-log slope from k={marks[1]}: {slope:.3f} (paper: -2/7 = {-2 / 7:.3f})")
    return {"marks": marks, "mean": mean, "per_seed": curves, "slope": slope}


def run_penalty(seeds: list[int]) -> dict:
    sigmas = [1e-1, 1e-2, 1e-3]
    table = {}
    for seed in seeds:
        q = QuadraticBilevel.random(5, 8, seed=seed, lower_condition=3.0)
        x0, y0 = torch.zeros(5, dtype=DTYPE), torch.zeros(8, dtype=DTYPE)
        g0 = float(q.hypergradient(x0).norm())
        for sigma in sigmas:
            method = Penalty(
                sigma_init=sigma,
                sigma_decay=1.0,
                sigma_min=sigma,
                inner_tol=1e-6,
                inner_steps=200,
            )
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = bilevel.solve(q.problem(), x0, y0, method, maxiter=300, tol=1e-10)
            table.setdefault(sigma, []).append(float(q.hypergradient(result.x).norm()) / g0)
    print("| sigma | |grad h(x_final)| / |grad h(0)| per seed | ratio to sigma (mean) |")
    print("|---|---|---|")
    for sigma, values in table.items():
        print(
            f"| {sigma:g} | {', '.join(f'{v:.2e}' for v in values)} | "
            f"{sum(values) / len(values) / sigma:.3f} |"
        )
    return {str(k): v for k, v in table.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sections", nargs="+", default=["bsvrb", "borep", "f2sa", "penalty"])
    parser.add_argument("--blocks", nargs="+", type=int, default=[1, 5, 25])
    parser.add_argument("--bsvrb-iterations", type=int, default=400)
    parser.add_argument("--borep-iterations", type=int, default=1000)
    parser.add_argument("--f2sa-iterations", type=int, default=2000)
    parser.add_argument("--f2sa-lambda", type=float, default=1.0)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--json", default="benchmarks/results/solvers_papers.json")
    args = parser.parse_args()
    torch.set_default_dtype(DTYPE)
    results = {"platform": platform.platform(), "torch": torch.__version__, "args": vars(args)}
    if "bsvrb" in args.sections:
        print("## BSVRB: speed-up in the number of sampled blocks (m = 100 logistic tasks)")
        results["bsvrb"] = run_bsvrb(args.blocks, args.bsvrb_iterations, seed=args.seeds[0])
    if "borep" in args.sections:
        print("## BO-REP on an (L0, L1)-smooth synthetic problem")
        results["borep"] = run_borep(args.borep_iterations, args.seeds)
    if "f2sa" in args.sections:
        print("## F2SA, paper schedule, noisy quadratic")
        results["f2sa"] = run_f2sa(args.f2sa_iterations, args.seeds, args.f2sa_lambda)
    if "penalty" in args.sections:
        print("## Penalty method, fixed sigma")
        results["penalty"] = run_penalty(args.seeds)
    import os

    os.makedirs(os.path.dirname(args.json), exist_ok=True)
    with open(args.json, "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    print(f"saved {args.json}")


if __name__ == "__main__":
    main()
