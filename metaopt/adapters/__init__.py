"""What every ``torch.optim`` adapter of metaopt shares, below the method packages:

* ``closure_rule``: the base class of optimizers that run a pure rule with a closure
  (``ClosureRuleOptimizer``) and the argument checks;
* ``state_loading``: the validate-then-apply ``load_state_dict`` (a refused load changes nothing);
* ``non_finite``: the policy for non-finite steps (refuse, keep the parameters, warn, raise after
  ``max_consecutive_skips`` in a row);
* ``grad_evals``: ``num_grad_evals``, the gradient evaluations a step consumed.

The method packages (``metaopt.garo``, ``metaopt.hybrid``, ``metaopt.dcao``) and
``metaopt.optim`` import these; nothing here imports a method.
"""
