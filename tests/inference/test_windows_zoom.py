"""The window engine against MONAI's inferer, zoom-out-zoom-in, mirroring TTA, point and box prompts in windows."""

from __future__ import annotations

import torch
from monai.inferers import sliding_window_inference
from torch import nn

from segvolpipe.inference.sliding import predict_targets
from segvolpipe.inference.windows import ABSENT_LOGIT, TargetPrompt, lattice
from segvolpipe.inference.zoom import zoom_out_zoom_in


class WindowMean(nn.Module):
    """Logits = voxel + the window's mean: depends on where windows fall, so the blending weights matter."""

    promptable = True
    input_size = (8, 12, 10)

    def forward(self, image, prompts):
        base = image[:, :1] + image.mean(dim=(1, 2, 3, 4), keepdim=True)
        return base + prompts.text.float()[..., None, None, None]


class Threshold(nn.Module):
    """Finds bright voxels (> 0.5) whatever the prompt: a predictor whose coarse pass finds the object."""

    promptable = True
    input_size = (8, 16, 16)

    def __init__(self, level: float = 0.5) -> None:
        super().__init__()
        self.level = level

    def forward(self, image, prompts):
        return (10 * (image[:, :1] - self.level)).expand(-1, prompts.text.shape[1], -1, -1, -1)


class PaintPrompt(nn.Module):
    """+10 inside the prompt's box, or within one voxel of its positive points; −10 elsewhere (window coords)."""

    promptable = True
    input_size = (6, 8, 8)

    def forward(self, image, prompts):
        b, p = prompts.text.shape
        out = torch.full((b, p, *self.input_size), -10.0)
        grid = torch.stack(torch.meshgrid(*[torch.arange(n) for n in self.input_size], indexing="ij"), -1).float()
        for i in range(b):
            for j in range(p):
                if prompts.boxes is not None and (prompts.box_mask is None or prompts.box_mask[i, j]):
                    lo, hi = prompts.boxes[i, j, :3], prompts.boxes[i, j, 3:]
                    out[i, j][((grid >= lo) & (grid <= hi)).all(-1)] = 10.0
                if prompts.points is not None:
                    for q, lab in zip(prompts.points[i, j], prompts.point_labels[i, j], strict=True):
                        if lab == 1:
                            out[i, j][((grid - q).abs() <= 1).all(-1)] = 10.0
        return out


def test_the_engine_equals_monais_sliding_window_inference():
    model = WindowMean()
    image = torch.randn(1, 21, 30, 23, generator=torch.Generator().manual_seed(0))
    ours = predict_targets(model, image, [TargetPrompt(2)], overlap=0.5)

    def predictor(window):
        return model(window, type("P", (), {"text": torch.tensor([[2]] * window.shape[0])})())

    monai = sliding_window_inference(image[None], model.input_size, 1, predictor, overlap=0.5, mode="gaussian")
    torch.testing.assert_close(ours, monai[0], rtol=1e-5, atol=1e-5)


def _object_volume() -> torch.Tensor:
    image = torch.zeros(1, 40, 80, 72)
    image[0, 20:28, 10:22, 40:55] = 1.0
    return image


def test_zoom_finds_the_object_equals_sliding_inside_the_region_and_uses_fewer_windows():
    model, image = Threshold(), _object_volume()
    sliding_calls, zoom_calls = [], []
    sliding = predict_targets(model, image, [TargetPrompt(0)], on_window=lambda: sliding_calls.append(1))
    [(t, logits, info)] = list(zoom_out_zoom_in(model, image, [TargetPrompt(0)], on_window=lambda: zoom_calls.append(1)))
    assert t == 0 and info.found
    region = tuple(slice(a, b) for a, b in info.roi)
    torch.testing.assert_close(logits[region], sliding[0][region])
    assert torch.equal(logits > 0, image[0] > 0.5)
    lo, hi = zip(*info.roi, strict=True)
    assert all(lo[a] <= (20, 10, 40)[a] and hi[a] >= (28, 22, 55)[a] for a in range(3))  # the object is inside
    assert len(sliding_calls) == len(lattice(image.shape[1:], model.input_size, 0.5))
    assert len(zoom_calls) == 1 + info.windows and info.windows < len(sliding_calls) / 3


def test_zoom_keeps_the_coarse_result_when_nothing_is_found():
    model, image = Threshold(level=5.0), _object_volume()  # nothing passes the threshold
    calls = []
    [(_, logits, info)] = list(zoom_out_zoom_in(model, image, [TargetPrompt(0)], on_window=lambda: calls.append(1)))
    assert not info.found and info.roi is None and len(calls) == 1  # the coarse pass only
    assert (logits < 0).all()


def test_targets_with_overlapping_regions_share_window_encodings():
    class Counting(Threshold):
        encoded = 0

        def forward(self, image, prompts):
            Counting.encoded += image.shape[0]
            return super().forward(image, prompts)

    model, image = Counting(), _object_volume()
    results = list(zoom_out_zoom_in(model, image, [TargetPrompt(0), TargetPrompt(1)]))
    assert [r[2].windows for r in results] == [results[0][2].windows] * 2
    assert Counting.encoded == 1 + results[0][2].windows  # each window encoded once for both targets


def test_mirroring_tta_puts_boxes_and_points_back_where_they_were():
    model = PaintPrompt()
    image = torch.zeros(1, 13, 17, 19)
    targets = [TargetPrompt(-1, (2, 3, 4, 7, 9, 12)), TargetPrompt(-1, points=((9.0, 12.0, 5.0, 1),))]
    plain = predict_targets(model, image, targets)
    tta = predict_targets(model, image, targets, mirror_axes=(0, 1, 2))
    assert torch.equal(plain > 0, tta > 0)
    box = torch.zeros(13, 17, 19, dtype=torch.bool)
    box[2:8, 3:10, 4:13] = True
    assert torch.equal(plain[0] > 0, box)
    point = torch.zeros_like(box)
    point[8:11, 11:14, 4:7] = True
    assert torch.equal(plain[1] > 0, point)


def test_a_point_only_target_is_absent_from_windows_without_its_positive_point():
    model = PaintPrompt()
    image = torch.zeros(1, 6, 8, 40)
    out = predict_targets(model, image, [TargetPrompt(-1, points=((2.0, 3.0, 2.0, 1), (2.0, 3.0, 30.0, 0)))],
                          overlap=0.0)
    assert torch.allclose(out[0, :, :, 8:], torch.tensor(ABSENT_LOGIT))  # windows 2..5 hold only the negative point or nothing
    assert bool((out[0, :, :, :8] > 0).any())


def test_scaled_and_mirrored_prompts():
    t = TargetPrompt(3, (0, 2, 4, 9, 5, 7), ((1.0, 2.0, 3.0, 1),))
    assert t.mirrored((0, 2), (10, 10, 10)) == TargetPrompt(3, (0, 2, 2, 9, 5, 5), ((8.0, 2.0, 6.0, 1),))
    half = t.scaled((0.5, 0.5, 0.5))
    assert half.box == (0, 1, 2, 4, 2, 3) and half.points == ((0.25, 0.75, 1.25, 1),)


def test_the_zoom_out_view_is_the_foreground_box():
    from segvolpipe.inference.zoom import foreground_box

    image = torch.full((1, 30, 40, 50), -1000.0)
    image[0, 5:20, 10:30, 12:44] = 40.0  # a "body" in air
    assert foreground_box(image, margin=2) == [(3, 22), (8, 32), (10, 46)]
    assert foreground_box(torch.zeros(1, 4, 5, 6)) == [(0, 4), (0, 5), (0, 6)]
