"""Shipped controller checkpoints: ``<name>.safetensors`` files loadable by name.

``metaopt.list_pretrained()`` lists them and ``metaopt.load_optimizer(name, params)`` rebuilds the
runtime optimizer from one; files are written by ``metaopt.checkpoint.save_checkpoint`` (the
meta-training script exports ``optimizer.safetensors`` into its run directory).

Shipped:
    ``garo_quadratics``: GARO (global GRU, hidden 16, sgd direction) meta-trained by
    ``configs/garo.yaml`` (seed 0, 300 outer steps, truncated BPTT) on ill-conditioned and noisy
    quadratics; held-out meta-loss 0.548 (untrained) -> 0.0094. A demonstration of the pipeline,
    not a general-purpose optimizer: it has only seen quadratics.
    ``hybrid_general``: the GD/ODE switching policy (``SwitchingPolicy``, hidden 16) of a
    ``HybridGDODE`` (momentum SGD lr 0.02 / RK4 step 0.05 capped at 1/curvature), meta-trained
    by ``configs/hybrid.yaml`` (seed 0, 150 outer steps, truncated BPTT with the straight-through
    gate, compute charge 0.02 per extra gradient evaluation) on the five 2-D multimodal test
    functions and small MLPs; held-out meta-loss (log) 0.592 (untrained = GD) -> -0.369.
"""
