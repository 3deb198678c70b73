"""One regularisation weight per training sample of a linear SVM, by LV-HBA.

A bilevel problem whose lower level has constraints (Yao et al., ICLR 2024, SVM experiment)
on scikit-learn's breast_cancer data. With ``x = c`` (``C_i = exp(c_i)``, one per training
sample) and the lower variables ``y = (w, b, xi)``::

    min_c   F(c, y) = mean_j leaky_relu(2 sigmoid(-kappa t_j (w^T z_j + b) / ||w||) - 1)
    s.t.    y in argmin_{w, b, xi}  1/2 ||w||^2 + 1/2 sum_i exp(c_i) xi_i^2
                    s.t.  1 - xi_i - t_i (w^T z_i + b) <= 0         (every training sample)

``F`` is a smoothed 0-1 loss on a validation set. What it shows:

* stating a constrained lower level: ``bilevel.BilevelProblem(upper, lower, lower_ineq=...)``
  with the margin constraints returned as one 1-D tensor ``g(c, y) <= 0``;
* a feasible starting point from ``bilevel.constrained.solve_lower`` (SLSQP, KKT point
  with multipliers);
* ``bilevel.solve(..., method=LVHBA(...))``: a configured method instance, a ``callback``
  that records the validation accuracy and keeps the best iterate (early stopping), and the
  result's ``info`` (constraint violation, whether ``y`` solves the lower level);
* the comparison with one ``C`` chosen by 5-fold cross-validation (scikit-learn
  ``LinearSVC``, the same squared-hinge SVM).

(``bilevel run svm_hyperparameters`` runs a packaged version with result files and plots.)

Run: ``python examples/svm_hyperparameters.py [--iterations 300] [--n-train 300] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
from sklearn.preprocessing import StandardScaler
from sklearn.svm import LinearSVC

import bilevel
from bilevel.constrained import LVHBA, solve_lower
from bilevel.errors import ConvergenceWarning

D = torch.float64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=300, help="LV-HBA iterations")
    parser.add_argument("--n-train", type=int, default=300, help="training samples (one C_i each)")
    parser.add_argument("--n-val", type=int, default=130, help="validation samples")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data split")
    args = parser.parse_args()

    X, t = load_breast_cancer(return_X_y=True)
    t = 2.0 * t - 1.0                                             # labels +-1
    X_tr, X_rest, t_tr, t_rest = train_test_split(X, t, train_size=args.n_train, random_state=args.seed, stratify=t)
    X_val, X_te, t_val, t_te = train_test_split(X_rest, t_rest, train_size=args.n_val, random_state=args.seed, stratify=t_rest)
    scaler = StandardScaler().fit(X_tr)
    Z, Zv, Zt = (torch.as_tensor(scaler.transform(a), dtype=D) for a in (X_tr, X_val, X_te))
    T, Tv, Tt = (torch.as_tensor(a, dtype=D) for a in (t_tr, t_val, t_te))
    n, d = Z.shape

    def split(y):                                                 # y = (w, b, xi)
        return y[:d], y[d], y[d + 1:]

    def upper(c, y):
        w, b, _ = split(y)
        margin = Tv * (Zv @ w + b) / torch.linalg.vector_norm(w).clamp(min=1e-12)
        return torch.nn.functional.leaky_relu(2 * torch.sigmoid(-5.0 * margin) - 1, 0.01).mean()

    def lower(c, y):
        w, _, xi = split(y)
        return 0.5 * (w @ w) + 0.5 * (torch.exp(c) * xi**2).sum()

    def margins(c, y):                                            # g(c, y) <= 0, shape (n,)
        w, b, xi = split(y)
        return 1 - xi - T * (Z @ w + b)

    problem = bilevel.BilevelProblem(upper=upper, lower=lower, lower_ineq=margins)

    def accuracy(y, Zs, Ts):
        w, b, _ = split(y)
        return float(((Zs @ w + b) * Ts > 0).to(D).mean())

    # Start: all C_i = 1 and the lower-level solution there (a feasible point).
    c0 = torch.zeros(n, dtype=D)
    start = solve_lower(problem, c0, torch.cat([torch.zeros(d + 1, dtype=D), torch.ones(n, dtype=D)]), tol=1e-10)
    print(f"lower level at C_i = 1: KKT residual {start.kkt_residual:.1e}, "
          f"{int((start.ineq_multipliers[:n] > 1e-8).sum())} support vectors, "
          f"test accuracy {accuracy(start.y, Zt, Tt):.4f}")

    # LV-HBA with the official SVM script's step-size convention; keep the best validation iterate.
    best = {"val": -1.0}

    def callback(k, state):
        val = accuracy(state.y, Zv, Tv)
        if val > best["val"]:
            best.update(val=val, k=k, c=state.x.clone(), y=state.y.clone())

    method = LVHBA(outer_step_size=0.01, inner_step_size=0.01, center_step_size=0.1,
                   gamma1=0.1, gamma2=0.1, gamma_convention="multiply", c0=1.0, p=0.5, lam0=1.0, z0=1.0)
    with warnings.catch_warnings():   # a fixed budget of iterations: no stopping test (tol=0)
        warnings.simplefilter("ignore", ConvergenceWarning)
        result = bilevel.solve(problem, c0, start.y, method, maxiter=args.iterations, tol=0.0,
                               callback=callback, record_every=max(1, args.iterations // 10))
    print(f"LV-HBA: {result.n_iter} iterations, upper objective "
          f"{result.history['upper_value'][0]:.4f} -> {result.history['upper_value'][-1]:.4f}, "
          f"lower level solved: {result.info['lower_level_solved']}, "
          f"constraint violation {result.info['constraint_violation']:.1e}")
    print(f"best validation accuracy {best['val']:.4f} at iteration {best['k']}; "
          f"C_i range [{torch.exp(best['c']).min():.3g}, {torch.exp(best['c']).max():.3g}]")

    svc = LinearSVC(loss="squared_hinge", dual=False, max_iter=100000)
    grid = {"C": list(np.logspace(-3, 3, 13))}
    cv = GridSearchCV(svc, grid, cv=StratifiedKFold(5, shuffle=True, random_state=args.seed)).fit(Z.numpy(), t_tr)
    print(f"test accuracy: LV-HBA (best validation iterate) {accuracy(best['y'], Zt, Tt):.4f}, "
          f"last iterate {accuracy(result.y, Zt, Tt):.4f}, "
          f"cross-validated C = {cv.best_params_['C']:.3g}: {cv.score(Zt.numpy(), t_te):.4f}")


if __name__ == "__main__":
    main()
