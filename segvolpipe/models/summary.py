"""``segvol models``: every variant of a configuration with its parameter counts; optionally a load check of
a pretrained file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segvolpipe.models.pretrained import LoadReport, load_pretrained
from segvolpipe.models.registry import VARIANTS, build_model, check_variant, parameter_counts
from segvolpipe.models.spec import ModelSpec, normalise_label_name, spec_from_plans
from segvolpipe.paths import preprocessed_root, resolve_dataset
from segvolpipe.planning.planner import plan_unet
from segvolpipe.planning.plans import DecoderPlan, ViTPlan, load_plans

# SegVol's headline structures (ANCHORS.md): the vocabulary of the reference model shown without -d
SEGVOL_STRUCTURES = ("aorta", "colon cancer", "esophagus", "gallbladder", "inferior vena cava", "left adrenal gland",
                     "left kidney", "liver", "lung tumor", "pancreas", "portal vein and splenic vein",
                     "right adrenal gland", "right kidney", "spleen", "stomach")


@dataclass(frozen=True)
class VariantRow:
    variant: str
    description: str
    total: int
    trainable: int

    @property
    def trainable_percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0


@dataclass(frozen=True)
class ModelsResult:
    source: str
    configuration: str
    input_size: tuple[int, int, int]
    rows: tuple[VariantRow, ...]
    load_report: LoadReport | None = None


def reference_spec(variant: str = "segvol") -> ModelSpec:
    """SegVol's published model: one CT channel, 32×256×256 input, ViT-B, SegVol's headline structures."""
    vit = ViTPlan((32, 256, 256), (4, 16, 16), 768, 3072, 12, 12)
    unet = plan_unet((128, 256, 256), (1.5, 0.8, 0.8), 64 * 128 * 128, 32)
    vocabulary = tuple(normalise_label_name(n) for n in SEGVOL_STRUCTURES)
    return ModelSpec(variant, "3d_segvol", 1, vit, DecoderPlan(768), unet, vocabulary, vocabulary)


def describe_models(dataset: str | None, configuration: str | None, variants: list[str] | None = None,
                    pretrained: Path | None = None, clip_tokenizer: Path | None = None) -> ModelsResult:
    """Parameter counts of ``variants`` (all by default) for a dataset's configuration, or for SegVol's reference
    model without a dataset; with ``pretrained``, load it into the first promptable variant and report."""
    names = [check_variant(v) for v in (variants or list(VARIANTS))]
    if dataset is None:
        base, source = reference_spec(), "SegVol reference (1 CT channel, 15 structures)"
    else:
        name = resolve_dataset(dataset, preprocessed_root())
        plans = load_plans(preprocessed_root() / name / "plans.json")
        base, source = spec_from_plans(plans, configuration), name
    rows = []
    for variant in names:
        counts = parameter_counts(base.with_variant(variant))
        rows.append(VariantRow(variant, VARIANTS[variant][2], counts.total, counts.trainable))
    report = None
    if pretrained is not None:
        promptable = [v for v in names if v != "unet"] or ["segvol"]
        model = build_model(base.with_variant(promptable[0]))
        report = load_pretrained(model, pretrained, clip_tokenizer)
    return ModelsResult(source, base.configuration, base.vit.input_size, tuple(rows), report)
