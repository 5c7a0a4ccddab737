"""The ``segvol`` variant: SegVol's promptable model (image encoder, prompt encoder, mask decoder, text encoder).

The image is encoded once; its ``P`` prompts are decoded together in one decoder call. Sub-modules carry
SegVol's names, so a SegVol checkpoint maps onto this model key for key (:mod:`segvolpipe.models.pretrained`).
With ``spec.lora`` the base is frozen and LoRA adapters (always on) are its only trainable parameters.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from segvolpipe.models.detail import ImageDetail
from segvolpipe.models.image_encoder import ImageEncoder
from segvolpipe.models.lora import AdapterRouter, freeze, inject_lora
from segvolpipe.models.mask_decoder import MaskDecoder
from segvolpipe.models.prompt_encoder import FlatPrompts, PromptEncoder, Prompts
from segvolpipe.models.spec import ModelSpec
from segvolpipe.models.text import TextEncoder
from segvolpipe.models.transformer import expand_batch


class SegVolModel(nn.Module):
    """Image ``[B, C, Z, Y, X]`` + :class:`Prompts` → mask logits ``[B, P, Z, Y, X]`` at the input size."""

    promptable = True

    def __init__(self, spec: ModelSpec, text_features: Tensor | None = None) -> None:
        super().__init__()
        self.spec = spec
        hidden = spec.vit.hidden_size
        if spec.decoder.prompt_embed_dim != hidden:
            raise ValueError(f"the decoder width {spec.decoder.prompt_embed_dim} must equal the ViT width {hidden}")
        self.image_encoder = ImageEncoder(spec.in_channels, spec.vit)
        self.prompt_encoder = PromptEncoder(hidden, spec.vit.grid, spec.vit.input_size, spec.point_tokens)
        self.mask_decoder = MaskDecoder(spec.decoder, spec.vit.grid)
        self.text_encoder = TextEncoder(spec, hidden, text_features)
        detail = spec.decoder.image_detail_channels
        self.image_detail = ImageDetail(spec.in_channels, detail, spec.decoder.upscale_channels[1], spec.vit.input_size,
                                        tuple(4 * g for g in spec.vit.grid), classes=len(spec.labels) + 1
                                        ) if detail else None
        # Which rows of the current call run through the modality adapters (the ``prior`` variant's gate);
        # shared by reference with every adapter layer, empty for the plain model.
        self.router = AdapterRouter()
        if spec.lora is not None:  # the plain-LoRA baseline: ungated adapters on a frozen base
            freeze(self)
            self.lora_layers = inject_lora(self, spec.lora, self.router)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return self.spec.vit.input_size

    def encode_image(self, image: Tensor, modality: Tensor | None = None) -> Tensor:
        """``[B, C, Z, Y, X]`` → embeddings ``[B, hidden, gz, gy, gx]``."""
        if tuple(image.shape[2:]) != self.input_size:
            raise ValueError(f"the model input must be {self.input_size} (z, y, x), got {tuple(image.shape[2:])}")
        with self.router.route(modality):
            return self.image_encoder(image)

    def encode_detail(self, image: Tensor) -> Tensor | None:
        """``[B, C, Z, Y, X]`` → the image path's features at the decoder's output grid, or None without one."""
        return self.image_detail(image) if self.image_detail is not None else None

    def decode(self, embeddings: Tensor, prompts: Prompts, multimask: bool = False,
               detail: Tensor | None = None) -> Tensor:
        """Embeddings ``[B, hidden, gz, gy, gx]`` (+ :meth:`encode_detail`'s features when the model has the image
        path) + prompts → logits ``[B, P, Z, Y, X]`` (or ``[B, P, K, Z, Y, X]`` with ``multimask``)."""
        b, p = prompts.batch_size, prompts.per_image
        if embeddings.shape[0] != b:
            raise ValueError(f"{embeddings.shape[0]} image embeddings for prompts of {b} images")
        if (detail is None) != (self.image_detail is None):
            raise ValueError("decode needs encode_detail's features exactly when the model has the image path")
        flat = prompts.flat()
        with self.router.route(flat.modality):
            has_text = flat.text >= 0
            text = self.text_encoder(flat.text, flat.modality) if bool(has_text.any()) else None
            sparse = self.prompt_encoder(flat, text)
            rows = self.adapt_image(expand_batch(embeddings, p), flat)
            masks, _ = self.mask_decoder(rows, self.prompt_encoder.dense_pe(), self.prompt_encoder.dense_prompts(flat),
                                         sparse, text, has_text if text is not None else None, multimask,
                                         self.mask_token_offset(rows, flat),
                                         detail)
        masks = F.interpolate(masks, size=self.input_size, mode="trilinear", align_corners=False)
        masks = masks.reshape(b, p, *masks.shape[1:])
        return masks if multimask else masks[:, :, 0]

    def forward(self, image: Tensor, prompts: Prompts, with_classes: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits ``[B, P, Z, Y, X]``; with ``with_classes`` (training) also the image path's class logits
        ``[B, len(labels) + 1, *decoder grid]``."""
        embeddings = self.encode_image(image, prompts.modality)
        if not with_classes:
            return self.decode(embeddings, prompts, detail=self.encode_detail(image))
        if self.image_detail is None:
            raise ValueError("with_classes needs the image path (plans' decoder.image_detail_channels > 0)")
        detail, classes = self.image_detail(image, with_classes=True)
        return self.decode(embeddings, prompts, detail=detail), classes

    # Extension points of the variants (identity here).
    def adapt_image(self, rows: Tensor, prompts: FlatPrompts) -> Tensor:
        """Per-prompt image embeddings ``[M, C, gz, gy, gx]`` before the decoder."""
        return rows

    def mask_token_offset(self, rows: Tensor, prompts: FlatPrompts) -> Tensor | None:
        """``[M, num_mask_tokens, C]`` added to the decoder's mask tokens, or None."""
        return None

    def unused_parameter_names(self, class_head: bool = False) -> list[str]:
        """Parameters SegVol keeps for checkpoint compatibility but never uses with ``multimask=False`` (the
        IoU head, the extra mask tokens' hypernetworks), and the image path's class head unless ``class_head``
        (training with its loss): a trainer freezes them so DDP sees no unused ones."""
        names = [n for n, _ in self.named_parameters()
                 if n.startswith("mask_decoder.iou_prediction_head")
                 or (not class_head and n.startswith("image_detail.classes."))]
        names += [n for n, _ in self.named_parameters() if n.startswith("mask_decoder.output_hypernetworks_mlps.")
                  and not n.startswith("mask_decoder.output_hypernetworks_mlps.0.")]
        return names
