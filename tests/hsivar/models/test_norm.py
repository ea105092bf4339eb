"""The group norm that keeps a bf16 activation in bf16 under autocast (hsivar.models.norm), on the CPU.

CPU autocast does not list group_norm among its fp32 ops (CUDA autocast does), so on the CPU the comparison is with
what the kernel computes on bf16 directly; tests/hsivar/test_cuda.py holds both policies against the fp32 model (the
encoder's features and the decoder's image) on a GPU, where autocast's own policy is fp32.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from hsivar.models.norm import GroupNorm, autocast_policy_norms


def _norm(channels: int = 32, groups: int = 8) -> GroupNorm:
    torch.manual_seed(0)
    norm = GroupNorm(groups, channels, eps=1e-6)
    with torch.no_grad():  # affine parameters away from their (1, 0) start, so a rounding of them would show
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


def test_outside_autocast_it_is_torchs_group_norm() -> None:
    norm = _norm()
    x = torch.randn(2, 32, 9, 7) * 3 + 1
    ref = torch.nn.GroupNorm(8, 32, eps=1e-6)
    ref.load_state_dict(norm.state_dict())
    assert torch.equal(norm(x), ref(x))


def test_under_autocast_a_bf16_input_is_normalised_in_bf16_with_bf16_affine_parameters() -> None:
    norm = _norm()
    x = (torch.randn(2, 32, 9, 7) * 3 + 1).bfloat16()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y = norm(x)
    assert y.dtype == torch.bfloat16
    expected = F.group_norm(x, 8, norm.weight.bfloat16(), norm.bias.bfloat16(), 1e-6)
    assert torch.equal(y, expected)
    # to bf16 precision, what fp32 gives for the same input (its statistics accumulate in fp32)
    fp32 = F.group_norm(x.float(), 8, norm.weight, norm.bias, 1e-6)
    assert (y.float() - fp32).abs().max() <= 2 ** -7 * fp32.abs().max()


def test_an_fp32_input_a_gradient_or_the_switch_keeps_torchs_behaviour() -> None:
    norm = _norm()
    ref = torch.nn.GroupNorm(8, 32, eps=1e-6)
    ref.load_state_dict(norm.state_dict())
    x = torch.randn(2, 32, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(norm(x), ref(x))  # fp32 input: not autocast's dtype
        xb = x.bfloat16()
        assert torch.equal(norm(xb), ref(xb))  # a gradient flows to the weight: training keeps autocast's policy
        with torch.no_grad():
            with autocast_policy_norms(norm):
                assert torch.equal(norm(xb), ref(xb))
            assert not torch.equal(norm(xb), ref(xb))  # the switch is back
    xg = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        norm(xg).float().sum().backward()
    assert xg.grad is not None and norm.weight.grad is not None


def test_the_vqvae_under_autocast_is_as_close_to_fp32_as_with_autocasts_own_norms(
        vqvae_norms_both_ways: Callable) -> None:
    """On the CPU autocast's own policy is nn.GroupNorm's mixed-type kernel (bf16 in and out, fp32 affine
    parameters): the low-precision norms round those parameters and land about as close to the fp32 model."""
    for low, policy in vqvae_norms_both_ways("cpu"):
        assert low <= 0.05 and low <= 1.5 * policy + 0.005
