"""Batched augmentation (botnet.classification_augment): real properties, on random uint8 and float batches."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from botnet.classification_augment import (
    augment_batch,
    hflip_tta_logits,
    normalize_batch,
    random_crop_batch,
    random_erasing_batch,
    random_hflip_batch,
    shuffled_batches,
)


def _images(batch: int = 16, channels: int = 1, size: int = 12, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    x = torch.randint(1, 256, (batch, channels, size, size), dtype=torch.int64)  # no zeros: padding is visible
    return x.to(dtype)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("padding", [1, 2, 4])
@pytest.mark.parametrize("channels", [1, 3])
def test_crop_is_a_window_of_the_padded_image(padding: int, channels: int) -> None:
    images = _images(channels=channels)
    out = random_crop_batch(images, padding, _gen())
    assert out.shape == images.shape and out.dtype == images.dtype
    padded = F.pad(images, (padding,) * 4, value=0)
    size = images.shape[-1]
    for b in range(images.shape[0]):
        windows = [
            (dy, dx)
            for dy in range(2 * padding + 1)
            for dx in range(2 * padding + 1)
            if torch.equal(out[b], padded[b, :, dy : dy + size, dx : dx + size])
        ]
        assert len(windows) == 1, f"image {b}: matches {windows}"


def test_crop_offsets_cover_every_shift() -> None:
    # Each image a distinct constant-free ramp, so its offset is recoverable from the output.
    images = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8).repeat(400, 1, 1, 1) + 1
    out = random_crop_batch(images, 2, _gen(3))
    padded = F.pad(images[:1], (2, 2, 2, 2))
    seen = set()
    for b in range(out.shape[0]):
        for dy in range(5):
            for dx in range(5):
                if torch.equal(out[b, 0], padded[0, 0, dy : dy + 8, dx : dx + 8]):
                    seen.add((dy, dx))
    assert seen == {(dy, dx) for dy in range(5) for dx in range(5)}


def test_crop_padding_zero_is_identity_and_fill_is_used() -> None:
    images = _images()
    assert torch.equal(random_crop_batch(images, 0, _gen()), images)
    out = random_crop_batch(torch.zeros(64, 1, 4, 4), 3, _gen(), fill=7.0)
    # A 4x4 window of a 10x10 canvas with a 4x4 zero centre: shifted windows see the fill.
    assert set(out.unique().tolist()) == {0.0, 7.0}


def test_flip_is_an_exact_mirror_or_the_original() -> None:
    images = _images(batch=64, channels=3)
    out = random_hflip_batch(images, _gen())
    flipped = [torch.equal(out[b], images[b].flip(-1)) for b in range(64)]
    kept = [torch.equal(out[b], images[b]) for b in range(64)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 10 < sum(flipped) < 54  # p = 0.5 over 64 images
    assert torch.equal(random_hflip_batch(images, _gen(), p=0.0), images)
    assert torch.equal(random_hflip_batch(images, _gen(), p=1.0), images.flip(-1))


def test_erasing_sets_one_rectangle_to_the_value() -> None:
    images = _images(batch=200, size=28)
    out = random_erasing_batch(images, _gen(), p=1.0, value=0)
    assert out.shape == images.shape and out.dtype == torch.uint8
    for b in range(images.shape[0]):
        erased = out[b, 0] != images[b, 0]
        assert erased.any()
        assert torch.all(out[b, 0][erased] == 0)
        rows = erased.any(1).nonzero().flatten()
        cols = erased.any(0).nonzero().flatten()
        # A full rectangle: contiguous rows and columns, every pixel inside erased.
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)
        assert erased.sum() == len(rows) * len(cols)
        area = len(rows) * len(cols) / 28**2
        assert area <= 1.0
    assert torch.equal(random_erasing_batch(images, _gen(), p=0.0), images)


def test_erasing_probability_and_area() -> None:
    images = torch.ones(2000, 1, 28, 28)
    out = random_erasing_batch(images, _gen(), p=0.5, scale=(0.02, 0.33))
    frac = (out == 0).flatten(1).float().mean(1)
    hit = frac > 0
    assert 0.44 < hit.float().mean() < 0.56
    # Clipping to the image only ever shrinks a side: areas stay below the scale's top (rounding aside).
    assert frac[hit].max() < 0.4 and frac[hit].min() >= 1 / 28**2


def test_same_generator_state_same_output() -> None:
    images = _images(batch=32, size=28)
    kwargs = dict(padding=2, flip=True, erasing=0.5)
    g = _gen(5)
    state = g.get_state()
    first = augment_batch(images, g, **kwargs)
    second_draw = augment_batch(images, g, **kwargs)
    g.set_state(state)
    again = augment_batch(images, g, **kwargs)
    assert torch.equal(first, again)
    assert not torch.equal(first, second_draw)
    assert torch.equal(augment_batch(images, _gen(5), **kwargs), first)


def test_draw_count_does_not_depend_on_the_values() -> None:
    # Two different batches of the same size leave the generator in the same state (exact resume).
    g1, g2 = _gen(1), _gen(1)
    augment_batch(_images(batch=8), g1, erasing=0.5)
    augment_batch(torch.zeros(8, 1, 12, 12, dtype=torch.uint8), g2, erasing=0.5)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_input_untouched_and_labels_follow_images() -> None:
    images = _images(batch=32)
    before = images.clone()
    labels = torch.arange(32)
    out = augment_batch(images, _gen(), padding=2, flip=True, erasing=1.0)
    assert torch.equal(images, before)
    # Row b of the output comes from row b of the input: label b still applies.
    padded = F.pad(images, (2, 2, 2, 2))
    for b in range(32):
        own = padded[b].flatten()
        values = out[b][out[b] != 0]
        assert torch.isin(values, own).all(), f"image {b} holds pixels of another image (label {labels[b]})"


def test_uint8_and_float_agree() -> None:
    images = _images(batch=16, size=28)
    a = augment_batch(images, _gen(2), erasing=0.5)
    b = augment_batch(images.float(), _gen(2), erasing=0.5)
    assert torch.equal(a.float(), b)


def test_normalize_batch() -> None:
    images = _images(batch=4, channels=3)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.2)
    out = normalize_batch(images, mean, std)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    torch.testing.assert_close(out, expected)
    with pytest.raises(ValueError):
        normalize_batch(images, (0.1, 0.2), (0.5, 0.5))


def test_hflip_tta_logits_is_the_mean_of_both_views() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(5)).eval()
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        got = hflip_tta_logits(model, x)
        torch.testing.assert_close(got, (model(x) + model(x.flip(-1))) / 2)
        # A mirror-symmetric input gives the plain logits.
        sym = x + x.flip(-1)
        torch.testing.assert_close(hflip_tta_logits(model, sym), model(sym))


def test_shuffled_batches_is_a_permutation() -> None:
    batches = list(shuffled_batches(103, 10, _gen()))
    assert all(len(b) == 10 for b in batches) and len(batches) == 10
    flat = torch.cat(batches)
    assert len(flat.unique()) == 100
    full = torch.cat(list(shuffled_batches(103, 10, _gen(), drop_last=False)))
    assert torch.equal(full.sort().values, torch.arange(103))
    assert torch.equal(torch.cat(list(shuffled_batches(103, 10, _gen()))), flat)


def test_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="B, C, H, W"):
        random_crop_batch(torch.zeros(3, 8, 8), 2, _gen())
    with pytest.raises(ValueError, match="padding"):
        random_crop_batch(torch.zeros(1, 1, 8, 8), -1, _gen())
