"""The typed hyperparameter containers (metaopt.rules.hyper): construction, the one converter
for mappings, the errors, and that rules read them under vmap and autograd as they read dicts."""
import warnings

import pytest
import torch

from metaopt.dcao import DCAOHyper, DCAORule
from metaopt.garo import GAROController, GAROHyper, GARORule
from metaopt.hybrid import HybridHyper
from metaopt.rules import (
    AdamRule,
    GDHyper,
    HyperError,
    ODEHyper,
    RMSpropRule,
    RungeKuttaRule,
    SGDRule,
)


def quadratic_grad_fn(points):
    loss = sum((p * p).sum() for p in points) / 2
    return loss, [p.clone() for p in points]


def test_fields_defaults_and_positional_order():
    h = GDHyper(0.1, 0.9)
    assert (h.lr, h.momentum, h.weight_decay) == (0.1, 0.9, 0.0)
    assert ODEHyper(lr=0.5).weight_decay == 0.0
    assert DCAOHyper(0.1).spectral_gap == 0.0
    g = GAROHyper("ctrl")
    assert (g.controller, g.lr_scale, g.weight_decay_scale, g.segment_ids) == ("ctrl", 1.0,
                                                                                1.0, None)
    assert h.replace(lr=0.2).lr == 0.2 and h.lr == 0.1  # frozen: replace copies
    with pytest.raises(AttributeError):
        h.lr = 0.3


@pytest.mark.parametrize("build,message", [
    (lambda: GDHyper(lr=0.1, momentun=0.9),
     "GDHyper: unknown field 'momentun' (did you mean 'momentum'?); "
     "valid: lr, momentum, weight_decay"),
    (lambda: GDHyper(momentum=0.9), "GDHyper: missing field 'lr'"),
    (lambda: GDHyper(0.1, lr=0.2), "field 'lr' given twice"),
    (lambda: ODEHyper(0.1, 0.0, 3), "takes at most 2 positional fields (lr, weight_decay)"),
    (lambda: GAROHyper("c", lr_scal=2.0), "(did you mean 'lr_scale'?)"),
    (lambda: GDHyper.coerce({"lr": 0.1, "weight_decy": 0.1}), "did you mean 'weight_decay'"),
    (lambda: GDHyper.coerce([0.1]), "expected a GDHyper (or a mapping of its fields"),
    (lambda: GDHyper(0.1)["lr"], "read by field, not by key: use hyper.lr"),
    (lambda: "controller" in GAROHyper("c"), "read by field, not by key: every field is"),
    (lambda: GDHyper(0.1).replace(betas=1), "unknown field 'betas'"),
])
def test_bad_fields_are_one_line_errors_naming_the_valid_ones(build, message):
    with pytest.raises(HyperError) as error:
        build()
    assert message in str(error.value) and "\n" not in str(error.value)
    assert isinstance(error.value, ValueError) and isinstance(error.value, TypeError)


def test_a_misspelt_key_is_refused_by_the_rule_not_silently_defaulted():
    # The dict protocol read ``hyper.get("momentum", 0.0)``: a typo stepped without momentum.
    x = [torch.ones(3)]
    with pytest.raises(HyperError, match="did you mean 'momentum'"):
        SGDRule().step(x, quadratic_grad_fn, SGDRule().init(x), {"lr": 0.1, "momentun": 0.9})
    with pytest.raises(HyperError, match="did you mean 'weight_decay'"):
        RungeKuttaRule("rk4").step(x, quadratic_grad_fn, {}, {"lr": 0.1, "weightdecay": 0.1})


@pytest.mark.parametrize("rule", [SGDRule(), AdamRule(), RMSpropRule()])
def test_a_mapping_and_the_container_step_identically(rule):
    x = [torch.linspace(-1, 1, 5, dtype=torch.float64), torch.ones(2, dtype=torch.float64)]
    typed, plain = [p.clone() for p in x], [p.clone() for p in x]
    s_typed, s_plain = rule.init(typed), rule.init(plain)
    for _ in range(3):
        typed, s_typed = rule.step(typed, quadratic_grad_fn, s_typed,
                                   GDHyper([0.1, 0.05], 0.5, 0.01))
        plain, s_plain = rule.step(plain, quadratic_grad_fn, s_plain,
                                   {"lr": [0.1, 0.05], "momentum": 0.5, "weight_decay": 0.01})
    assert all(torch.equal(a, b) for a, b in zip(typed, plain))


def test_garo_old_multiplier_keys_convert_with_a_deprecation_warning():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        h = GAROHyper.coerce({"controller": "c", "lr": 0.5, "weight_decay": 0.0})
    assert [str(w.message) for w in caught if w.category is DeprecationWarning] == [
        "GAROHyper: the key 'lr' is deprecated; it is now the field 'lr_scale'",
        "GAROHyper: the key 'weight_decay' is deprecated; it is now the field "
        "'weight_decay_scale'"]
    assert (h.lr_scale, h.weight_decay_scale) == (0.5, 0.0)
    with pytest.raises(HyperError, match="pass 'lr_scale' only"):
        GAROHyper.coerce({"controller": "c", "lr": 0.5, "lr_scale": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert GAROHyper.coerce({"controller": "c", "lr_scale": 2.0}).lr_scale == 2.0


def test_garo_rule_reads_the_renamed_multipliers():
    """lr_scale multiplies the step, weight_decay_scale the decay: against SGD's own oracle."""
    torch.manual_seed(0)
    controller = GAROController(init_lr=0.1, init_weight_decay=0.05).double()
    rule = GARORule()
    x = [torch.randn(4, dtype=torch.float64)]
    state = rule.init(x, controller)
    (new,), _ = rule.step(x, quadratic_grad_fn, state,
                          GAROHyper(controller, lr_scale=0.5, weight_decay_scale=2.0))
    # untrained controller: lr_t = 0.1, mom_t = 0, wd_t = 0.05 -> SGD(0.05, weight_decay=0.1)
    assert torch.allclose(new, x[0] - 0.05 * (x[0] + 0.1 * x[0]), rtol=1e-6)


def test_gradients_flow_through_fields_and_vmap_batches_them():
    x = torch.tensor([1.0, -2.0], dtype=torch.float64)
    lr = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    (new,), _ = SGDRule().step([x], quadratic_grad_fn, SGDRule().init([x]), GDHyper(lr))
    (d_lr,) = torch.autograd.grad(new.sum(), lr)
    assert d_lr.item() == pytest.approx(-x.sum().item())  # d/dlr Σ(x − lr·x) = −Σx

    def one_run(theta, rate):  # the container is built inside the vmapped function
        rule = SGDRule()
        (out,), _ = rule.step([theta], quadratic_grad_fn, rule.init([theta]),
                              GDHyper(rate, momentum=0.5, weight_decay=0.1))
        return out

    thetas = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    rates = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    batched = torch.func.vmap(one_run)(thetas, rates)
    looped = torch.stack([one_run(t, r) for t, r in zip(thetas, rates)])
    assert torch.allclose(batched, looped, rtol=0, atol=1e-15)


def test_dcao_and_hybrid_containers_are_what_their_rules_read():
    rule = DCAORule(alpha=0.05, beta=0.02, gamma=0.1)
    lr, mom, wd = rule.effective(DCAOHyper(0.1, 0.9, spectral_radius=2.0), 2)
    assert (lr, mom, wd) == rule.effective({"lr": 0.1, "momentum": 0.9,
                                            "spectral_radius": 2.0}, 2)
    with pytest.raises(HyperError, match="did you mean 'spectral_gap'"):
        rule.effective({"lr": 0.1, "spectral_gab": 1.0}, 1)
    with pytest.raises(HyperError, match="missing field 'policy'"):
        HybridHyper(gd=GDHyper(0.1), ode=ODEHyper(0.1))
