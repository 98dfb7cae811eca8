"""GARO's lr and weight_decay_scale: what they mean, their old names, and that the shipped
checkpoints step exactly as before the multiplier was renamed.

``RECORDED`` holds six steps of ``garo_general`` (float32 and float64) and ``garo_quadratics``
(float64) computed by the code *before* the rename (group key ``weight_decay``), with a StepLR
schedule halving ``lr`` every two steps and a second group with its own ``lr`` and no decay: the
same run today must give the same numbers. ``garo_general`` here is the checkpoint shipped under
that name when they were recorded (DoG's scale, ``configs/garo_general_dog.yaml``), kept in
``data/``.

To the last bit on the CPU that recorded them, and in float32 on every CPU tried. In float64 the
vectorised kernels of another CPU family round differently, and the controllers amplify it: on
an AMD EPYC the trajectories sit 3.3e-10 (``garo_general``) and 5.1e-6 (``garo_quadratics``) away,
relatively. ``TOLERANCE`` is ~30x those and ~50-100x below what a 0.1% larger ``lr`` moves them
(9.7e-7 and 7.8e-3).
"""
import copy
import math
import warnings
from pathlib import Path

import pytest
import torch

import metaopt
from metaopt.adapters.state_loading import StateDictError
from metaopt.checkpoint import save_checkpoint
from metaopt.garo import GAROController
from metaopt.optim import GARO

SHIPPED_THEN = {"garo_general": Path(__file__).parent / "data" / "garo_general_dog.safetensors"}
RECORDED = {
    ("garo_general", "float32"): [
        ([1.5409375429153442, -0.29348745942115784, -2.1787307262420654,
          0.5683726668357849, -1.0844638347625732, -1.3985369205474854],
         [0.40337613224983215, 0.8379970788955688]),
        ([1.5408037900924683, -0.2936212122440338, -2.1785969734191895,
          0.5682388544082642, -1.0843300819396973, -1.3984031677246094],
         [0.40344300866127014, 0.8379302024841309]),
        ([1.5407044887542725, -0.29372045397758484, -2.178497552871704,
          0.5681395530700684, -1.0842307806015015, -1.3983038663864136],
         [0.40349265933036804, 0.837880551815033]),
        ([1.5405584573745728, -0.2938663959503174, -2.178351402282715,
          0.5679934620857239, -1.0840847492218018, -1.3981578350067139],
         [0.4035656750202179, 0.8378074765205383]),
        ([1.5404337644577026, -0.29399096965789795, -2.1782267093658447,
          0.567868709564209, -1.0839600563049316, -1.3980330228805542],
         [0.40362802147865295, 0.8377450704574585]),
        ([1.5402581691741943, -0.29416629672050476, -2.178050994873047,
          0.5676930546760559, -1.0837844610214233, -1.3978573083877563],
         [0.4037157893180847, 0.8376572132110596]),
    ],
    ("garo_general", "float64"): [
        ([1.5409375440928543, -0.29337034161122416, -2.1787308179222706,
          0.5683727131302915, -1.084463778281736, -1.398536831220988],
         [0.4033175655546461, 0.8379970509227943]),
        ([1.540803758583702, -0.29323655676782756, -2.1785970313368215,
          0.568238928897827, -1.0843299968837226, -1.398403046188766],
         [0.4032506726731989, 0.8379301579716544]),
        ([1.5407044553592204, -0.29313725510347066, -2.178497725586656,
          0.5681396286714316, -1.0842307032889407, -1.3983037440804225],
         [0.4032010207599369, 0.8378805058954036]),
        ([1.5405583584834692, -0.2929911619039213, -2.1783516227583517,
          0.5679935388627677, -1.0840846291025839, -1.3981576498340071],
         [0.4031279716113012, 0.837807456362877]),
        ([1.5404335892854437, -0.29286639730269914, -2.1782268461166097,
          0.5678687785032545, -1.0839598882751527, -1.398032883923272],
         [0.4030655861226258, 0.8377450703943207]),
        ([1.5402579055574632, -0.2926907220745904, -2.1780511486244154,
          0.5676931111200855, -1.0837842570072125, -1.3978572062732746],
         [0.40297774261272395, 0.8376572259972586]),
    ],
    ("garo_quadratics", "float64"): [
        ([-0.08590039136237293, 0.7399836266007218, 1.1569288861194227,
          -0.7438923712585294, -0.8331038691991914, -0.48350107184658586],
         [-0.060446572957537185, 0.2909625469641472]),
        ([0.7142013387298048, 0.5256007526072143, -0.23278433517539807,
          0.19716438226278457, 0.06631182138069767, -0.5084835524471055],
         [-0.2668225536113529, 0.05611377871170394]),
        ([0.7985703101077594, 0.5043779205370056, -0.16965544213179434,
          0.1675910397444749, 0.02014318842527724, -0.49935992732304124],
         [-0.23802823815589885, 0.06428957401167207]),
        ([0.7837300078744881, 0.508501701489681, 0.027083925963464962,
          0.044548795442350644, -0.10263872088746326, -0.4940885468103556],
         [-0.1818358436847308, 0.09829463546056219]),
        ([0.7761597858157225, 0.5061738086441511, 0.05041307967893152,
          0.023393229080900465, -0.12502731206226972, -0.502410036320325],
         [-0.1618304574290668, 0.11116753725255052]),
        ([0.771601737497887, 0.5020168381287408, 0.045672087816776175,
          0.018506504632903598, -0.13172145561636994, -0.5134645816142915],
         [-0.14626287909078767, 0.1212261364674243]),
    ],
}

TOLERANCE = {("garo_general", "float32"): 0.0, ("garo_general", "float64"): 1e-8,
             ("garo_quadratics", "float64"): 1.5e-4}  # relative (module docstring)


def assert_recorded(name, dtype, trajectory):
    key = (name, str(dtype).split(".")[1])
    for step, ((w, b), (w_old, b_old)) in enumerate(zip(trajectory, RECORDED[key], strict=True)):
        for got, old, label in ((w, w_old, "w"), (b, b_old, "b")):
            torch.testing.assert_close(got, torch.tensor(old, dtype=dtype), rtol=TOLERANCE[key],
                                       atol=0, msg=lambda m: f"step {step + 1}: {label}: {m}")


def problem(dtype):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(3, 2, generator=g, dtype=dtype)
    b = torch.randn(2, generator=g, dtype=dtype)
    x = torch.randn(8, 3, generator=g, dtype=dtype)
    y = torch.randn(8, 2, generator=g, dtype=dtype)
    return w.requires_grad_(), b.requires_grad_(), x, y


def run(name, dtype, steps=6, **second_group):
    w, b, x, y = problem(dtype)
    group_lr = 0.05 if name == "garo_general" else 0.005
    groups = [{"params": [w]}, {"params": [b], "lr": group_lr, **second_group}]
    kwargs = {"num_training_steps": 20} if name == "garo_general" else {}
    opt = metaopt.load_optimizer(SHIPPED_THEN.get(name, name), groups, **kwargs)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    out = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ((x @ w + b - y) ** 2).mean() + 0.1 * (w ** 2).sum()
        loss.backward()
        opt.step(loss=loss)
        schedule.step()
        out.append((w.detach().reshape(-1).clone(), b.detach().clone()))
    return out, opt


@pytest.mark.parametrize("name,dtype", list(RECORDED))
def test_shipped_checkpoints_step_bit_identically_to_before_the_rename(name, dtype):
    dtype = getattr(torch, dtype)
    trajectory, _ = run(name, dtype, weight_decay_scale=0.0)
    assert_recorded(name, dtype, trajectory)


def test_the_old_group_key_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="group weight_decay is deprecated.*"
                                                "weight_decay_scale"):
        old, opt = run("garo_quadratics", torch.float64, weight_decay=0.0)
    assert [sorted(k for k in g if k != "params") for g in opt.param_groups] == \
        [["initial_lr", "lr", "weight_decay_scale"]] * 2
    assert_recorded("garo_quadratics", torch.float64, old)


def test_the_old_keyword_warns_and_sets_the_multiplier_both_names_are_refused():
    p = [torch.zeros(2, requires_grad=True)]
    with pytest.warns(DeprecationWarning, match="keyword weight_decay is deprecated: it "
                                                "multiplies the learned wd_t"):
        opt = GARO(p, weight_decay=0.5)
    assert opt.param_groups[0]["weight_decay_scale"] == 0.5
    assert "weight_decay" not in opt.param_groups[0] and "weight_decay" not in opt.defaults
    with pytest.raises(ValueError, match="pass weight_decay_scale only") as error:
        GARO(p, weight_decay=0.5, weight_decay_scale=0.5)
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="weight_decay_scale: must be a finite number >= 0"):
        GARO(p, weight_decay_scale=-1.0)
    with pytest.raises(ValueError, match="weight_decay_scale: must be a finite number >= 0"):
        GARO(p).add_param_group({"params": [torch.zeros(1)], "weight_decay_scale": math.nan})


def test_repr_names_the_multiplier_as_one():
    text = repr(GARO([torch.zeros(2, requires_grad=True)]))
    assert "weight_decay_scale: 1.0" in text and "weight_decay:" not in text
    assert "lr: 0.01" in text  # the untrained controller's rate: SGD(lr=0.01)


def _old_format(state_dict):
    """The state dict as the code before the rename saved it (group key ``weight_decay``)."""
    groups = [{("weight_decay" if k == "weight_decay_scale" else k): v for k, v in g.items()}
              for g in state_dict["param_groups"]]
    return {**state_dict, "param_groups": groups}


def test_a_state_dict_saved_under_the_old_group_key_loads_and_resumes_bit_exactly():
    def fresh():
        w, b, x, y = problem(torch.float64)
        opt = metaopt.load_optimizer("garo_quadratics",
                                     [{"params": [w]}, {"params": [b], "weight_decay_scale": 0.0}])
        return opt, (w, b, x, y)

    def steps(opt, data, n):
        w, b, x, y = data
        for _ in range(n):
            opt.zero_grad()
            loss = ((x @ w + b - y) ** 2).mean()
            loss.backward()
            opt.step(loss=loss)

    reference, data = fresh()
    steps(reference, data, 3)
    saved = copy.deepcopy(_old_format(reference.state_dict()))  # (as from a file: no aliasing)
    assert "weight_decay" in saved["param_groups"][1]
    resumed, other = fresh()
    with torch.no_grad():
        for p, q in zip(other[:2], data[:2]):
            p.copy_(q)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stored file is not the caller's to fix: no warning
        resumed.load_state_dict(saved)
    assert [g["weight_decay_scale"] for g in resumed.param_groups] == [1.0, 0.0]
    assert all("weight_decay" not in g for g in resumed.param_groups)
    steps(reference, data, 3)
    steps(resumed, other, 3)
    assert torch.equal(data[0], other[0]) and torch.equal(data[1], other[1])
    both = _old_format(reference.state_dict())
    both["param_groups"][0]["weight_decay_scale"] = 1.0
    with pytest.raises(StateDictError, match=r"\[0\]: both 'weight_decay' \(the old name\)"):
        resumed.load_state_dict(both)


def test_a_checkpoint_storing_the_old_option_name_loads(tmp_path):
    path = save_checkpoint(tmp_path / "old.safetensors", GAROController(hidden_size=4),
                           {"weight_decay": 0.25, "direction": "sgd"})
    opt = metaopt.load_optimizer(path, [torch.zeros(2, requires_grad=True)])
    assert opt.param_groups[0]["weight_decay_scale"] == 0.25


def test_an_lr_scheduler_scales_the_steps():
    """lr is the untrained controller's rate: halved by a scheduler, every step is SGD's at the
    halved rate (the controller emits lr_t = init_lr)."""
    ours = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    theirs = ours.detach().clone().requires_grad_()
    opt = GARO([ours], lr=0.1, weight_decay_scale=0.0)  # the untrained controller
    sgd = torch.optim.SGD([theirs], lr=0.1)
    schedules = [torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5) for o in (opt, sgd)]
    for _ in range(4):
        for o, p in ((opt, ours), (sgd, theirs)):
            o.zero_grad()
            (p ** 2).sum().backward()
            o.step()
        for s in schedules:
            s.step()
    # (lr_t = softplus(softplus⁻¹(init_lr)) on the host: init_lr to float32 rounding)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=0)
