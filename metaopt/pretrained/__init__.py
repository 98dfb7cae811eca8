"""Shipped controller checkpoints: ``<name>.safetensors`` files loadable by name.

``metaopt.list_pretrained()`` lists them and ``metaopt.load_optimizer(name, params)`` rebuilds the
runtime optimizer from one; files are written by ``metaopt.checkpoint.save_checkpoint`` (the
meta-training script exports ``optimizer.safetensors`` into its run directory).

Shipped, in the order ``metaopt.list_pretrained()`` lists them (``RECOMMENDED`` first: what a
user should pick; then anything else alphabetically; ``FIXTURES`` last, their one-line
descriptions prefixed with what they are for); ``describe=True`` gives each one's line:
    ``garo_general``: GARO (global GRU, hidden 16, adam direction, loss-scale invariant relative
    features + training progress) whose lr_t multiplies Prodigy's distance estimate and a cosine
    annealing over ``num_training_steps``, meta-trained by ``configs/garo_general.yaml`` (seeds 0
    and 1, 1,000 outer steps each, truncated second-order BPTT, 16 runs x 20-step truncations of
    100..2000-step horizons) on an augmented mixture of 13 task families; the validation-best
    snapshot of two seeds (seed 1, step 800). Pass ``num_training_steps``. Measured against
    tuned Adam and the tuning-free optimizers by ``scripts/benchmark.py learned`` (README card).
    ``garo_quadratics`` (a pipeline fixture, listed last): GARO (global GRU, hidden 16, sgd
    direction) meta-trained by ``configs/garo.yaml`` (seed 0, 300 outer steps, truncated BPTT) on
    ill-conditioned and noisy quadratics (when it was trained, on the loop engine with 4 runs);
    held-out meta-loss 0.548 (untrained) -> 0.0094. Kept as the quick start's demonstration and a
    regression fixture, not a general-purpose optimizer: it has only seen quadratics and is not
    loss-scale invariant.
    ``hybrid_general``: a ``HybridGDODE`` whose GD module is ``garo_general``'s controller
    (Prodigy's scale, cosine prior) and whose ODE module is an RK4 step of GARO's own step
    size, with a learned GD/ODE switch (``SwitchingPolicy``, hidden 16, reading GARO's state),
    meta-trained over the fixed GARO by ``configs/hybrid_general.yaml`` and selected by the
    benchmark's protocol per gradient evaluation; on the benchmark's tasks it takes GD steps
    only. Load it with ``num_training_steps``.
"""

#: listed first, in this order: the checkpoints a user should pick
RECOMMENDED = ("garo_general", "hybrid_general")
#: shipped for the pipeline (the quick start's demonstration, regression tests), not for use on
#: real models: listed last, and their descriptions start with this note
FIXTURES = {"garo_quadratics": "PIPELINE FIXTURE (quick start and regression tests; trained on "
                               "quadratics only, not for real models; use garo_general)"}
