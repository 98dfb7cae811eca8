"""A module task's template is built on the meta device with ``torch.nn.init``'s initialisers
skipped (``metaopt.task``): its parameters still come from the task's own initialisation, and
building it never imports ``torch._dynamo`` (torch's meta ``normal_`` would, ~1 s)."""
from __future__ import annotations

import torch

import tasks

from ..fresh_python import NO_DYNAMO, run_fresh
from .conftest import FAST_KWARGS


def test_the_template_is_shaped_like_the_module_built_on_the_cpu():
    task = tasks.get("char_mlp", **FAST_KWARGS["char_mlp"]).sample_seed(0)
    template = dict(task._template().model.named_parameters())
    built = dict(task.build_module().named_parameters())
    assert {k: v.shape for k, v in template.items()} == {k: v.shape for k, v in built.items()}
    params = task.init_params(torch.Generator().manual_seed(1))
    assert all(torch.isfinite(v).all() for v in params.values())


def test_building_every_family_s_modules_never_imports_dynamo():
    code = (
        "import sys\n"
        "import tasks\n"
        "from metaopt.task import ModuleTask\n"
        "from tests.tasks.conftest import FAST_KWARGS\n"
        "built = []\n"
        "for name in tasks.names():\n"
        "    task = tasks.get(name, **FAST_KWARGS.get(name, {})).sample_seed(0)\n"
        "    if isinstance(task, ModuleTask):\n"
        "        task.init_params(); task.module(); built.append(name)\n"
        + NO_DYNAMO + "print(len(built))\n")
    assert int(run_fresh(code).split()[-1]) >= 8  # the module families were built
