"""``all_finite`` (the non-finite step policy's check) against the elementwise oracle
``torch.isfinite(t).all()``, including large finite values whose sum of squares overflows."""
import pytest
import torch

from metaopt.adapters.non_finite import all_finite


def oracle(tensors):
    return all(bool(torch.isfinite(t).all()) for t in tensors if t is not None)


def cases():
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(64, 33, generator=g), torch.randn(7, generator=g)]
    yield "finite", base
    for bad in (float("nan"), float("inf"), -float("inf")):
        for which, index in ((0, (63, 32)), (1, (0,))):
            tensors = [t.clone() for t in base]
            tensors[which][index] = bad
            yield f"{bad}@{which}", tensors
    # Finite, but the 2-norm overflows: the check must not refuse these.
    yield "huge_f32", [torch.full((1000,), 3e37), torch.ones(3)]
    yield "huge_f64", [torch.full((10,), 1e300, dtype=torch.float64)]
    yield "huge_f16", [torch.full((100,), 6e4, dtype=torch.float16)]
    yield "huge_bf16", [torch.full((100,), 3e38, dtype=torch.bfloat16)]
    huge_and_nan = torch.full((1000,), 3e37)
    huge_and_nan[500] = float("nan")
    yield "huge_and_nan", [huge_and_nan]
    yield "mixed_dtypes", [torch.ones(3, dtype=torch.float64), torch.full((5,), 6e4,
                                                                       dtype=torch.float16)]
    yield "empty_and_none", [torch.empty(0), None, torch.ones(2)]
    yield "nothing", []


@pytest.mark.parametrize("name,tensors", list(cases()), ids=[c[0] for c in cases()])
def test_all_finite_matches_elementwise_oracle(name, tensors):
    assert all_finite(tensors) == oracle(tensors)


def test_huge_finite_values_really_overflow_the_two_norm():
    # Guards the test above: these inputs exercise the max-norm fallback.
    assert not torch.isfinite(torch._foreach_norm([torch.full((1000,), 3e37)])[0])
