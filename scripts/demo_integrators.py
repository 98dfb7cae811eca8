"""Runge–Kutta and ODE optimizers side by side on two small problems; prints a table.

    python scripts/demo_integrators.py [--steps N]

Problems: Rosenbrock from (−1.5, 2) and a tanh MLP regression on scikit-learn's diabetes data
(bundled with scikit-learn, nothing downloaded). Every optimizer gets the same lr per problem;
the table reports final loss and closure (gradient) evaluations, the fair unit of cost.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch import nn

import metaopt.optim as mo


def rosenbrock_problem():
    xy = nn.Parameter(torch.tensor([-1.5, 2.0]))
    return [xy], lambda: (1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2, 1e-3


def mlp_problem(seed: int = 0):
    from sklearn.datasets import load_diabetes
    x, y = load_diabetes(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32)
    x = (x - x.mean(0)) / x.std(0)
    y = torch.tensor(y, dtype=torch.float32)
    y = ((y - y.mean()) / y.std()).unsqueeze(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    return list(model.parameters()), lambda: nn.functional.mse_loss(model(x), y), 0.1


OPTIMIZERS = {
    "SGD": lambda p, lr: torch.optim.SGD(p, lr=lr),
    "Heun": lambda p, lr: mo.Heun(p, lr=lr),
    "Ralston": lambda p, lr: mo.Ralston(p, lr=lr),
    "RK4": lambda p, lr: mo.RK4(p, lr=lr),
    "AdaptiveRK(dopri5)": lambda p, lr: mo.AdaptiveRK(p, lr=lr, method="dopri5", rtol=1e-3),
    "GradientFlow": lambda p, lr: mo.GradientFlow(p, lr=lr, rtol=1e-3),
    "NesterovFlow": lambda p, lr: mo.NesterovFlow(p, lr=lr ** 0.5, rtol=1e-3),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    print(f"{'problem':<12}{'optimizer':<20}{'initial':>12}{'final':>12}{'grad evals':>12}"
          f"{'ms/step':>10}")
    for name, make in [("rosenbrock", rosenbrock_problem), ("mlp", mlp_problem)]:
        for opt_name, factory in OPTIMIZERS.items():
            params, loss_fn, lr = make()
            opt = factory(params, lr)
            evaluations = 0

            def closure(opt=opt, loss_fn=loss_fn):
                nonlocal evaluations
                evaluations += 1
                opt.zero_grad()
                loss = loss_fn()
                loss.backward()
                return loss
            initial = loss_fn().item()
            start = time.perf_counter()
            for _ in range(args.steps):
                opt.step(closure)
            elapsed = (time.perf_counter() - start) / args.steps
            print(f"{name:<12}{opt_name:<20}{initial:>12.4g}{loss_fn().item():>12.4g}"
                  f"{evaluations:>12d}{1e3 * elapsed:>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
