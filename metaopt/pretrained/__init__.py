"""Shipped controller checkpoints: ``<name>.safetensors`` files loadable by name.

``metaopt.list_pretrained()`` lists them and ``metaopt.load_optimizer(name, params)`` rebuilds the
runtime optimizer from one; files are written by ``metaopt.checkpoint.save_checkpoint`` (the
meta-training script exports ``optimizer.safetensors`` into its run directory).

Shipped, in the order ``metaopt.list_pretrained()`` lists them (``RECOMMENDED`` first: what a
user should pick; then anything else alphabetically; ``FIXTURES`` last, their one-line
descriptions prefixed with what they are for); ``describe=True`` gives each one's line:
    ``garo_general``: GARO (global GRU, hidden 16, adam direction, loss-scale invariant relative
    features + training progress) whose lr_t multiplies Prodigy's distance estimate and a cosine
    annealing over ``num_training_steps``, meta-trained by ``configs/garo_general.yaml`` (seed 0,
    1,000 outer steps, truncated second-order BPTT, 16 runs x 20-step truncations of
    100..2000-step horizons) on an augmented mixture of 13 task families; the validation-best
    snapshot of two seeds (seed 1, step 800). Pass ``num_training_steps``. Measured against
    tuned Adam and the tuning-free optimizers by ``scripts/benchmark.py learned`` (README card).
    ``garo_quadratics`` (a pipeline fixture, listed last): GARO (global GRU, hidden 16, sgd
    direction) meta-trained by ``configs/garo.yaml`` (seed 0, 300 outer steps, truncated BPTT) on
    ill-conditioned and noisy quadratics (when it was trained, on the loop engine with 4 runs);
    held-out meta-loss 0.548 (untrained) -> 0.0094. Kept as the quick start's demonstration and a
    regression fixture, not a general-purpose optimizer: it has only seen quadratics and is not
    loss-scale invariant.
    ``hybrid_general``: the GD/ODE switching policy (``SwitchingPolicy``, hidden 16) of a
    ``HybridGDODE`` (momentum SGD lr 0.02 / RK4 step 0.05 capped at 1/curvature), meta-trained
    by ``configs/hybrid.yaml`` (seed 0, 150 outer steps, truncated BPTT with the straight-through
    gate, compute charge 0.02 per extra gradient evaluation) on the five 2-D multimodal test
    functions and small MLPs; held-out meta-loss (log) 0.592 (untrained = GD) -> -0.369.
"""

#: listed first, in this order: the checkpoints a user should pick
RECOMMENDED = ("garo_general", "hybrid_general")
#: shipped for the pipeline (the quick start's demonstration, regression tests), not for use on
#: real models: listed last, and their descriptions start with this note
FIXTURES = {"garo_quadratics": "PIPELINE FIXTURE (quick start and regression tests; trained on "
                               "quadratics only, not for real models; use garo_general)"}
