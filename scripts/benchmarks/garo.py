"""A full GARO training step vs its torch.optim counterpart, side by side (targets: GARO's adam
direction ≤ 1.05× ``Adam(foreach=True)`` on the 1M MLP, ≤ 1.15× on the small models).

Measured (two runs on one core of an otherwise idle machine, one thread, 1-minute load 0.9–1.0;
against ``adam_foreach``, single / steady; mlp_1m by step_ms): ``garo_adam`` 1.00–1.06 /
1.03–1.07, ``garo_general`` 1.15–1.22 / 1.24–1.44; small models, ``garo_general``: residual MLP
0.93–0.98 / 1.03–1.07, CNN 1.03–1.04 / 1.11–1.12, char_mlp 1.12–1.14 / 1.33–1.34, digits
1.12–1.16 / 1.42, iris 1.21–1.22 / 1.54–1.58, Rosenbrock 1.32 / 1.60–1.63; ``garo_adam`` (GARO's
adam direction with the specification's controller; two later runs, load 1.0–1.3): residual MLP
0.95–0.96 / 0.99, CNN 1.01–1.02 / 1.08–1.09, char_mlp 1.07–1.08 / 1.15–1.19, digits
1.07–1.09 / 1.21, iris 1.14–1.19 / 1.36–1.39, Rosenbrock 1.15–1.20 / 1.36–1.40. By thread CPU time
(``time_side_by_side(clock=time.thread_time)``, both versions in one process, under load) the
1M ``garo_general`` step went from 1.21–1.22× Adam's to 1.14–1.20× when its large tensors
began reading ‖θ‖ and ⟨g, δ⟩ in their chunked update; what remains on ``garo_general`` is
Prodigy's own state (s and δ, read and written every step; ‖s‖₁ and ‖g‖ read before the
controller), on the small models the fixed host work.

Every row times zero_grad + forward + backward + ``opt.step()``, interleaved in one process.

* ``mlp_1m``: the ~1M-parameter MLP at batch 256; GARO (the specification's controller; ``sgd`` and
  ``adam`` directions, no loss given) against ``torch.optim.SGD(momentum=0.9, foreach=True)``;
  the adam direction (also scale-free, ``scale="distance"``, and the shipped ``garo_general``:
  Prodigy's scale, cosine prior, ``step(loss=loss)``) against ``torch.optim.Adam(foreach=True)``
  by their ``step_ms``.
  GARO's extra work per step is the norms of gradients, parameters and update directions, a 32-unit
  GRU step on the host and one host read.
* ``char_mlp`` (the 18k-parameter character model of the learned-optimizer benchmark),
  ``digits_mlp`` (64-64-10 tanh) at batch 64, and the learned benchmark's ``residual_mlp_64``
  (22k parameters, 18 tensors), ``logreg_iris`` (2 tensors), ``cnn_digits_16ch`` and
  ``rosenbrock`` (one 2-element tensor), where the step is
  dispatch-bound: the shipped
  ``garo_general`` (adam direction, relative features, ``num_training_steps`` set,
  ``step(loss=loss)``), GARO-sgd and GARO-adam with the GARO specification's controller
  (``step(loss=loss)``), against ``torch.optim.Adam(foreach=True)``; SGD-momentum for
  reference. There GARO's cost is its
  fixed per-step cost (controller + features), not the parameter traffic.

Each row is timed twice, round-robin over the candidates both times (wall clock, medians):
single steps (``step_ms``, ``ratio``: every step starts after another candidate's, so caches are
cold for all alike) and blocks of ``STEADY_BLOCK`` consecutive steps (``steady_ms``,
``steady_ratio``: a training loop's steady state, where each optimizer's code stays warm). On a
dispatch-bound step the two differ: GARO runs more distinct code per step than Adam, which
costs it more once Adam's step is warm. (Process CPU time is no guide here: after each parallel
region torch's OpenMP workers spin, charged to whichever step ran last.)
"""
from __future__ import annotations

import torch

import metaopt
import metaopt.optim as mo
import tasks

from .common import batch, make_closure, mlp_1m, time_side_by_side

SMALL_BATCH = 64
SMALL_ROUNDS_FACTOR = 10  # a small step is ~100x shorter than a 1M step: more rounds, same time
STEADY_BLOCK = 20  # consecutive steps per steady-state sample


def _small_models(seed: int, device):
    """name -> (module factory, batch, loss function) of the dispatch-bound models: the two
    above and four of the learned benchmark (``configs/benchmark_learned.yaml``: its width-64
    residual MLP, logistic regression on iris, the 16-channel CNN on digits and Rosenbrock from
    (-1.5, 2), one 2-element tensor)."""
    char = tasks.get("char_mlp", batch_size=SMALL_BATCH, device=device).sample_seed(seed)
    digits = tasks.get("mlp", datasets=["digits"], width=(64, 64), depth=(1, 1),
                       activations=("tanh",), batch_sizes=[SMALL_BATCH],
                       device=device).sample_seed(seed)
    residual = tasks.get("residual_mlp", norms=["layernorm"], width=[64, 64], depth=[2, 2],
                         activations=["relu"], train_fraction=[1.0, 1.0],
                         device=device).sample_seed(seed)
    logistic = tasks.get("logistic_regression", datasets=["iris"], batch_sizes=[32],
                         l2=[1e-4, 1e-4], device=device).sample_seed(seed)
    cnn = tasks.get("cnn_digits", channels=[16, 16], activations=["relu"], batch_sizes=[64],
                    train_fraction=[1.0, 1.0], device=device).sample_seed(seed)
    rosenbrock = tasks.get("rosenbrock", initial_point=(-1.5, 2.0),
                           device=device).sample_seed(seed)
    out = {}
    for name, task in (("char_mlp", char), ("digits_mlp", digits),
                       ("residual_mlp_64", residual), ("logreg_iris", logistic),
                       ("cnn_digits_16ch", cnn), ("rosenbrock", rosenbrock)):
        out[name] = (task.module, task.train_batch(torch.Generator().manual_seed(seed)),
                     task.module_loss)
    return out


def _step(model, opt, loss_fn, data, pass_loss: bool):
    def train_step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model, data)
        loss.backward()
        if pass_loss:
            opt.step(loss=loss)
        else:
            opt.step()
    return train_step


def _timed_rows(candidates, args, rounds: int, warmup: int, baseline: str, **fields):
    """Rows of single-step and steady-state medians (interleaved) with ratios to ``baseline``."""
    single = time_side_by_side(candidates, rounds=rounds, warmup=warmup, device=args.device)
    steady = time_side_by_side(candidates, rounds=max(3, rounds // STEADY_BLOCK * 4), warmup=0,
                               device=args.device, calls_per_sample=STEADY_BLOCK)
    return [{**fields, "optimizer": name, "baseline": baseline, "step_ms": 1e3 * t,
             "ratio": t / single[baseline], "steady_ms": 1e3 * steady[name],
             "steady_ratio": steady[name] / steady[baseline]} for name, t in single.items()]


# the SGD rate of the SGD candidates where the default (1e-2) diverges within the timed steps:
# Rosenbrock's gradient at (-1.5, 2) is ~10³ (a diverged run would skip steps, or time NaNs)
SGD_LR = {"rosenbrock": 1e-4}


def _small_rows(args) -> list[dict]:
    horizon = 10_000
    rows = []
    for model_name, (make_module, data, loss_fn) in _small_models(args.seed, args.device).items():
        sgd_lr = SGD_LR.get(model_name, 1e-2)
        builders = {
            "adam_foreach": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), False),
            "sgd_momentum_foreach": (lambda ps, lr=sgd_lr: torch.optim.SGD(ps, lr=lr, momentum=0.9,
                                                                 foreach=True), False),
            "garo_general": (lambda ps: metaopt.load_optimizer("garo_general", ps,
                                                                num_training_steps=horizon),
                             True),
            "garo_sgd": (lambda ps, lr=sgd_lr: mo.GARO(ps, lr=lr), True),
            # GARO's adam direction (the specification's controller): the issue's own figure
            "garo_adam": (lambda ps: mo.GARO(ps, direction="adam"), True),
        }
        candidates, n_params = {}, 0
        for name, (build, pass_loss) in builders.items():
            model = make_module()
            n_params = sum(p.numel() for p in model.parameters())
            candidates[name] = _step(model, build(model.parameters()), loss_fn, data, pass_loss)
        rows += _timed_rows(candidates, args, args.rounds * SMALL_ROUNDS_FACTOR, 20,
                            "adam_foreach", model=model_name, params=n_params)
    return rows


def _mlp_1m_rows(args) -> list[dict]:
    g = torch.Generator().manual_seed(args.seed)
    x, y = batch(g, device=args.device)
    candidates = {}
    builders = {
        "sgd_momentum_foreach": lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9,
                                                            foreach=True),
        "garo_sgd": lambda ps: mo.GARO(ps),
        "garo_adam": lambda ps: mo.GARO(ps, direction="adam"),
        # the adam direction against its torch.optim counterpart (compare their step_ms)
        "adam_foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "garo_adam_distance": lambda ps: mo.GARO(ps, direction="adam", scale="distance"),
        # the shipped checkpoint: adam direction, Prodigy's scale, cosine prior, reading the loss
        "garo_general": lambda ps: metaopt.load_optimizer("garo_general", ps,
                                                           num_training_steps=10_000),
    }
    n_params = 0
    for name, build in builders.items():
        model = mlp_1m(torch.Generator().manual_seed(args.seed), device=args.device)
        n_params = sum(p.numel() for p in model.parameters())
        opt = build(model.parameters())
        closure = make_closure(model, opt, x, y)

        def train_step(o=opt, c=closure, pass_loss=name == "garo_general"):
            loss = c()  # zero_grad, forward, backward
            o.step(loss=loss) if pass_loss else o.step()
        candidates[name] = train_step
    return _timed_rows(candidates, args, args.rounds, 3, "sgd_momentum_foreach",
                       model="mlp_1m", params=n_params)


def run(args) -> list[dict]:
    return _small_rows(args) + _mlp_1m_rows(args)
