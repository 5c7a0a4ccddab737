"""bf16 autocast only where the plans want it and the device computes bfloat16 natively."""

from __future__ import annotations

import torch

from segvolpipe import precision


def test_use_bf16_needs_the_wish_and_native_support(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device: True)
    assert precision.use_bf16("cpu", on_cuda=False, on_cpu=True)
    assert not precision.use_bf16("cpu", on_cuda=True, on_cpu=False)
    assert precision.use_bf16("cuda", on_cuda=True, on_cpu=False)
    monkeypatch.setattr(precision, "native_bf16", lambda device: False)
    assert not precision.use_bf16("cpu", on_cuda=True, on_cpu=True)


def test_native_bf16_is_false_for_a_cuda_device_torch_cannot_see(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.native_bf16("cuda") is False
    assert isinstance(precision.native_bf16("cpu"), bool)


def test_autocast_factory_enables_bf16_only_when_asked():
    with precision.autocast("cpu", True)():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3)).dtype == torch.bfloat16
    with precision.autocast("cpu", False)():
        assert not torch.is_autocast_enabled("cpu")
