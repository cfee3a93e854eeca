"""Every attention backend agrees with the written-out reference, forward and backward."""

import pytest
import torch

from vmae.model.attention import (Attention, attention, available_backends, fastest,
                                  kernel_problem, resolve_backend)


def qkv(shape=(2, 4, 157, 64), dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=g).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def forward_and_grads(backend, tensors):
    out = attention(*tensors, backend=backend)
    grads = torch.autograd.grad(out.float().square().sum(), tensors)
    return out, grads


@pytest.mark.parametrize("n", [1, 156, 157])
def test_sdpa_matches_math_on_cpu(n):
    tensors = qkv((2, 3, n, 64))
    ref, ref_grads = forward_and_grads("math", tensors)
    out, grads = forward_and_grads("sdpa", tensors)
    assert out.shape == (2, 3, n, 64)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, atol=1e-4, rtol=1e-3)


def test_bf16_sdpa_stays_close_to_fp32_math():
    tensors = qkv((1, 2, 64, 64))
    ref = attention(*tensors, backend="math")
    out = attention(*[t.detach().bfloat16() for t in tensors], backend="sdpa")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)


def test_auto_is_sdpa_on_cpu_and_bad_choices_are_refused(caplog):
    with caplog.at_level("INFO", logger="vmae.model.attention"):
        assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    assert available_backends(torch.device("cpu")) == ["sdpa", "math"]
    for cuda_only in ("xformers", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient"):
        with pytest.raises(ValueError, match=f"the {cuda_only} backend has no CPU kernels"):
            resolve_backend(cuda_only, torch.device("cpu"))
    with pytest.raises(ValueError, match="one of"):
        resolve_backend("flash9", torch.device("cpu"))


def test_auto_keeps_the_fastest_kernel_that_ran():
    assert fastest({"sdpa-flash": 0.41, "sdpa-cudnn": 0.38, "sdpa-efficient": 0.52, "math": 1.9,
                    "xformers": "ImportError: no module"}) == "sdpa-cudnn"
    assert fastest({"xformers": "ImportError: no module", "sdpa-flash": "RuntimeError: head dim"}) == "sdpa"


def test_attention_module_is_permutation_equivariant_and_backend_independent():
    torch.manual_seed(0)
    module = Attention(96, 4)
    x = torch.randn(2, 10, 96)
    perm = torch.randperm(10)
    out = module(x)
    torch.testing.assert_close(module(x[:, perm]), out[:, perm], atol=1e-5, rtol=1e-5)
    module.backend = "math"
    torch.testing.assert_close(module(x), out, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        Attention(100, 3)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["xformers", "sdpa-flash", "sdpa-cudnn", "sdpa-efficient", "sdpa"])
@pytest.mark.parametrize("n, width", [(156, 64), (1568, 32)])  # ViT-L's encoder and decoder shapes
def test_cuda_backends_match_math_in_bf16(backend, n, width):
    problem = kernel_problem(backend, (1, 16, n, width), torch.bfloat16) if backend != "sdpa" else None
    if problem:  # e.g. an xformers wheel built for another torch, or a kernel this GPU lacks
        pytest.skip(f"{backend} does not run here: {problem}")
    tensors = qkv((2, 16, n, width), dtype=torch.bfloat16, device="cuda")
    ref, ref_grads = forward_and_grads("math", [t.detach().float().requires_grad_() for t in tensors])
    out, grads = forward_and_grads(backend, tensors)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g.float(), r, atol=5e-2, rtol=5e-2)


@pytest.mark.gpu
def test_auto_on_cuda_times_the_kernels_at_the_shape_and_logs_the_choice(caplog):
    with caplog.at_level("INFO", logger="vmae.model.attention"):
        chosen = resolve_backend("auto", torch.device("cuda"), (1, 16, 156, 64), torch.bfloat16)
    assert chosen in available_backends(torch.device("cuda"), (1, 16, 156, 64))
    assert "attention at 156 tokens x 16 heads x 64 (bfloat16):" in caplog.text and f"-> {chosen}" in caplog.text
