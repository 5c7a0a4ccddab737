"""Adapted variants start as their base, the MoA gate keeps CT exact, the registry, counts on meta, the U-Net."""

from __future__ import annotations

import pytest
import torch

from segvolpipe.errors import UserError
from segvolpipe.models.lora import LoRALinear
from segvolpipe.models.registry import VARIANTS, build_model, check_variant, parameter_counts
from segvolpipe.models.spec import LoRAOptions
from segvolpipe.models.summary import reference_spec
from tests.models.conftest import TINY_UNET, mixed_prompts, tiny_spec


def _adapted(variant: str, **options):
    torch.manual_seed(0)
    base = build_model(tiny_spec()).eval()
    model = build_model(tiny_spec(variant, **options))
    missing, unexpected = model.load_state_dict(base.state_dict(), strict=False)
    assert not unexpected
    assert all("lora_" in k or k.startswith(("context_prior.", "image_encoder.token_adapter.")) for k in missing)
    return base, model.eval()


def _perturb_adapters(model) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))


@pytest.mark.parametrize("lora", [LoRAOptions(), LoRAOptions(rank=4, targets=("qkv", "mlp", "decoder_qv"), dropout=0.1)])
def test_prior_equals_its_base_at_initialisation_for_both_modalities(image, lora):
    from segvolpipe.models.spec import PriorOptions

    base, prior = _adapted("prior", prior=PriorOptions(lora=lora))
    with torch.no_grad():
        reference = base(image, mixed_prompts())
        for modality in ([0, 0], [1, 1], [1, 0]):
            assert torch.equal(prior(image, mixed_prompts(modality)), reference)


def test_moa_gate_keeps_ct_bit_identical_after_the_adapters_trained(image):
    base, prior = _adapted("prior")
    _perturb_adapters(prior)
    with torch.no_grad():
        reference = base(image, mixed_prompts())
        ct = prior(image, mixed_prompts([0, 0]))
        mri = prior(image, mixed_prompts([1, 1]))
        mixed = prior(image, mixed_prompts([0, 1]))
    assert torch.equal(ct, reference)
    assert (mri - reference).abs().max() > 1e-3
    assert torch.equal(mixed[0], reference[0])  # the CT image of a mixed batch too
    torch.testing.assert_close(mixed[1], mri[1], rtol=1e-4, atol=1e-4)


def test_prior_trains_only_its_adapters(image):
    _, prior = _adapted("prior")
    prior.train()
    prior(image, mixed_prompts([1, 0])).sum().backward()
    trainable = {n for n, p in prior.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("context_prior.") for n in trainable)
    assert all(p.grad is None for n, p in prior.named_parameters() if not p.requires_grad)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in prior.named_parameters() if "lora_B" in n)


def test_lora_keeps_the_base_parameter_names():
    prior = build_model(tiny_spec("prior"))
    layer = prior.image_encoder.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear)
    keys = set(prior.state_dict())
    assert "image_encoder.blocks.0.attn.qkv.weight" in keys and "image_encoder.blocks.0.attn.qkv.lora_A" in keys


def test_unet_forward_backward():
    torch.manual_seed(0)
    model = build_model(tiny_spec("unet"))
    x = torch.randn(2, 1, *TINY_UNET.patch_size)
    out = model(x)  # training: full-resolution logits, then the supervision heads at their own resolutions
    assert out[0].shape == (2, 4, *TINY_UNET.patch_size)  # 3 classes + background
    for finer, head in zip(out, out[1:], strict=False):  # each head coarser than the one before
        assert head.shape[:2] == (2, 4) and head.numel() < finer.numel()
        assert all(c <= f for c, f in zip(head.shape[2:], finer.shape[2:], strict=True))
    sum(h.sum() for h in out).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 4, *TINY_UNET.patch_size)


def test_registry_suggests_the_closest_name():
    assert check_variant("so3") == "so3"
    with pytest.raises(UserError, match="did you mean 'prior'"):
        check_variant("priors")
    with pytest.raises(UserError, match="choose from segvol, so3, prior, unet"):
        check_variant("transformer")


def test_segvol_reference_counts_on_the_meta_device_allocate_nothing():
    spec = reference_spec()
    counts = parameter_counts(spec)
    # 87,388,416 (ViT) + 29,923,716 (decoder) + 4,608 (prompt encoder without SAM's 2D leftovers)
    # + dim_align 393,984 + 15 learned 512-d label embeddings + the dense box/point vectors (3 × 768, ours)
    assert counts.total == 87_388_416 + 29_923_716 + 4_608 + 393_984 + 15 * 512 + 3 * 768
    assert counts.trainable == counts.total
    with torch.device("meta"):
        model = build_model(spec)
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_counts_on_meta(variant):
    counts = parameter_counts(tiny_spec(variant))
    assert 0 < counts.trainable <= counts.total


@pytest.mark.parametrize("field_type", ["scalar", "irreps"])
def test_so3_equals_its_base_at_initialisation_and_trains_only_its_branch(image, field_type):
    from segvolpipe.models.spec import SO3Options

    base, so3 = _adapted("so3", so3=SO3Options(field_type=field_type, channels=4))
    with torch.no_grad():
        assert torch.equal(so3(image, mixed_prompts()), base(image, mixed_prompts()))
    so3.train()
    so3(image, mixed_prompts()).sum().backward()
    trainable = {n for n, p in so3.named_parameters() if p.requires_grad}
    assert all("lora_" in n or n.startswith("image_encoder.token_adapter.") for n in trainable)
    adapter = so3.image_encoder.token_adapter
    assert adapter.merge[3].weight.grad.abs().sum() > 0  # the zero-initialised layer learns
    _perturb_adapters(so3)
    so3.eval()
    with torch.no_grad():
        assert (so3(image, mixed_prompts()) - base(image, mixed_prompts())).abs().max() > 1e-4
    assert sorted({n.split(".")[-2] for n in trainable if "lora_" in n}) == ["out_proj"]
