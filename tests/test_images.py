"""The one image reader: every Pillow mode, EXIF orientation, frames, bit depth and alpha, the same everywhere."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from botnet.image_files import NothingToRead, image_inputs
from botnet.images import find_unreadable, read_image

# A 4x6 RGB pattern with distinct values per pixel and channel.
BASE = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 5 % 256).astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    """Pillow's L conversion (ITU-R 601-2), integer arithmetic as Pillow does it."""
    return np.array(Image.fromarray(rgb, "RGB").convert("L"))


def _save(tmp_path, name: str, image: Image.Image, **kwargs) -> str:
    path = tmp_path / name
    image.save(path, **kwargs)
    return str(path)


def test_rgb_and_grey_are_read_exactly(tmp_path):
    path = _save(tmp_path, "rgb.png", Image.fromarray(BASE, "RGB"))
    rgb = read_image(path, 3)
    assert rgb.dtype == torch.uint8 and rgb.shape == (3, 4, 6)
    assert torch.equal(rgb, torch.from_numpy(BASE).permute(2, 0, 1))
    grey = read_image(path, 1)
    assert grey.shape == (1, 4, 6) and torch.equal(grey[0], torch.from_numpy(_luma(BASE)))
    # A grey file read for an RGB model repeats its channel.
    gpath = _save(tmp_path, "grey.png", Image.fromarray(_luma(BASE), "L"))
    assert torch.equal(read_image(gpath, 3), torch.from_numpy(_luma(BASE))[None].expand(3, -1, -1))


@pytest.mark.parametrize("mode", ["1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB"])
def test_every_opaque_mode_becomes_rgb_or_grey(tmp_path, mode):
    source = Image.fromarray(BASE, "RGB").convert(mode)
    path = _save(tmp_path, f"x_{mode}.tiff", source)
    expected = np.array(source.convert("RGB"))
    assert torch.equal(read_image(path, 3), torch.from_numpy(expected).permute(2, 0, 1))
    assert read_image(path, 1).shape == (1, 4, 6)


@pytest.mark.parametrize("mode,dtype", [("I;16", np.uint16), ("I", np.int32)])
def test_sixteen_bit_is_scaled_by_its_range(tmp_path, mode, dtype):
    values = np.array([[0, 257, 1000], [32896, 65280, 65535]], dtype=dtype)
    path = _save(tmp_path, f"deep_{mode.replace(';', '')}.png" if mode == "I;16" else "deep.tiff",
                 Image.fromarray(values))  # uint16 -> I;16, int32 -> I
    image = read_image(path, 1)[0].numpy()
    np.testing.assert_array_equal(image, np.rint(values / 257.0).astype(np.uint8))  # 65535 -> 255, 1000 -> 4
    assert torch.equal(read_image(path, 3), torch.from_numpy(image)[None].expand(3, -1, -1))


def test_float_images(tmp_path):
    unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    path = _save(tmp_path, "unit.tiff", Image.fromarray(unit, "F"))
    np.testing.assert_array_equal(read_image(path, 1)[0].numpy(), [[0, 128, 255]])
    wide = np.array([[0.0, 100.0, 300.0]], dtype=np.float32)  # not in [0, 1]: taken as 0..255
    path = _save(tmp_path, "wide.tiff", Image.fromarray(wide, "F"))
    np.testing.assert_array_equal(read_image(path, 1)[0].numpy(), [[0, 100, 255]])


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_composited_on_white(tmp_path, mode):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[..., 0] = 200  # red everywhere, also under transparent pixels
    rgba[0, :, 3] = 255  # top row opaque
    rgba[1, 0, 3] = 0  # fully transparent
    rgba[1, 1, 3] = 128  # half
    image = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        image = image.convert("LA")
    elif mode == "P":  # palette with one transparent index
        pal = Image.new("P", (2, 2))
        pal.putpalette([200, 0, 0, 0, 0, 0] + [0] * 762)
        pal.putdata([0, 0, 1, 0])
        pal.info["transparency"] = 1
        image = pal
    path = _save(tmp_path, f"alpha_{mode}.png", image)
    rgb = read_image(path, 3).permute(1, 2, 0).numpy()
    white = Image.alpha_composite(Image.new("RGBA", image.size, (255,) * 4), image.convert("RGBA")).convert("RGB")
    np.testing.assert_array_equal(rgb, np.asarray(white))
    assert (rgb[1, 0] == 255).all() or mode == "P"  # the hidden red never shows through
    if mode == "P":
        assert (rgb[1, 0] == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.fromarray(BASE, "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = _save(tmp_path, "phone.jpg", image, exif=exif.tobytes(), quality=100, subsampling=0)
    upright = read_image(path, 3)
    assert upright.shape == (3, 6, 4)  # width and height swapped: shown upright
    stored = read_image(path, 3, orient=False)
    assert stored.shape == (3, 4, 6)
    assert torch.equal(upright, torch.rot90(stored, k=-1, dims=(1, 2)))


def test_multi_frame_files_give_the_first_frame(tmp_path):
    frames = [Image.fromarray(np.full((5, 5, 3), value, np.uint8)) for value in (10, 200)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    tiff = tmp_path / "pages.tiff"
    frames[0].save(tiff, save_all=True, append_images=frames[1:])
    for source in (path, tiff):
        image = read_image(source, 3)
        assert image.shape == (3, 5, 5) and int(image.float().mean().round()) == 10


def test_truncated_jpeg_is_found_by_the_scan(tmp_path):
    """``Image.verify`` passes a truncated JPEG; the scan decodes every byte and finds it."""
    rng = np.random.default_rng(0)
    good = _save(tmp_path, "good.jpg", Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)))
    data = open(good, "rb").read()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])
    with Image.open(cut) as opened:
        opened.verify()  # the old scan's check: no complaint
    (tmp_path / "text.png").write_text("not an image")
    paths = [good, str(cut), str(tmp_path / "text.png")]
    for workers in (0, 2):
        bad = find_unreadable(paths, 3, workers)
        assert [p for p, _ in bad] == [str(cut), str(tmp_path / "text.png")]
        assert all("cannot read image" in reason for _, reason in bad)
    with pytest.raises(ValueError, match="cut.jpg"):
        read_image(cut)


def test_errors_and_file_listing(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        read_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="1 .*or 3"):
        read_image(tmp_path / "missing.png", channels=4)
    _save(tmp_path, "b.png", Image.new("RGB", (2, 2)))
    _save(tmp_path, "a.jpg", Image.new("RGB", (2, 2)))
    (tmp_path / "notes.txt").write_text("x")
    assert image_inputs([tmp_path]) == [(str(tmp_path / "a.jpg"), None), (str(tmp_path / "b.png"), None)]
    with pytest.raises(NothingToRead, match="no image or folder"):
        image_inputs([tmp_path / "nope"])


def test_every_reader_of_the_package_sees_the_same_pixels(tmp_path):
    """Training folders, predict, attention and detection all go through read_image."""
    from torchvision.transforms import v2

    from botnet.classification.data import build_data
    from botnet.preprocess import Preprocessing
    from botnet.visualize.images import load_image

    rng = np.random.default_rng(1)
    for split in ("train", "val"):
        for cls in ("a", "b"):
            folder = tmp_path / "data" / split / cls
            folder.mkdir(parents=True)
            for i in range(2):
                deep = rng.integers(0, 65535, (12, 12), dtype=np.uint16)
                Image.fromarray(deep).save(folder / f"{i}.png")  # 16-bit PNG
    path = tmp_path / "data" / "val" / "a" / "0.png"
    reference = read_image(path, 1)
    assert 0 < int(reference.max()) <= 255 and int(reference.float().mean()) > 60  # scaled, not saturated
    data = build_data("folder", tmp_path / "data", img_size=12, aug="none", in_chans=1, norm=((0.0,), (1.0,)))
    assert torch.allclose(data.val[0][0], reference.float() / 255, atol=1e-6)
    prep = Preprocessing(img_size=(12, 12), mean=(0.0,), std=(1.0,), in_chans=1, class_names=("a", "b"))
    assert torch.allclose(prep.transform()(reference), reference.float() / 255, atol=1e-6)
    np.testing.assert_allclose(load_image(path, channels=1)[..., 0], reference[0].numpy() / 255, atol=1e-6)
    expected = v2.functional.to_dtype(read_image(path, 3), torch.float32, scale=True)
    pycocotools = pytest.importorskip("pycocotools")  # noqa: F841
    import json

    from botnet.detection.data import CocoDetection

    (tmp_path / "coco" / "val").mkdir(parents=True)
    (tmp_path / "coco" / "annotations").mkdir()
    Image.open(path).save(tmp_path / "coco" / "val" / "x.png")
    (tmp_path / "coco" / "annotations" / "instances_val.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "x.png", "width": 12, "height": 12}], "annotations": [],
        "categories": [{"id": 1, "name": "a"}]}))
    image, _ = CocoDetection(tmp_path / "coco" / "val", tmp_path / "coco" / "annotations" / "instances_val.json",
                             with_masks=False)[0]
    assert torch.equal(image, expected)


def test_channels_last_reading_gives_the_same_pixels_and_the_same_transformed_images(tmp_path):
    # The training path reads with contiguous=False (no transposing copy, faster resampling):
    # the values, and what every train / eval transform makes of them, must be exactly the old ones.
    from torchvision import tv_tensors

    from botnet.classification.data import _Samples, build_transforms
    from botnet.images import IMAGENET_MEAN, IMAGENET_STD

    skdata = pytest.importorskip("skimage.data")
    photo = skdata.astronaut()
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(375, 500), (333, 257), (64, 97), (500, 375)]):
        y, x = rng.integers(0, 512 - h + 1), rng.integers(0, 512 - w + 1)
        paths.append(_save(tmp_path, f"p{i}.jpg", Image.fromarray(photo[y : y + h, x : x + w]), quality=90))
    paths.append(_save(tmp_path, "grey.png", Image.fromarray(_luma(photo[:100, :120]), "L")))
    for channels in (3, 1):
        transforms = [build_transforms(False, IMAGENET_MEAN[:channels], IMAGENET_STD[:channels], (224, 224),
                                       from_files=True),
                      build_transforms(True, IMAGENET_MEAN[:channels], IMAGENET_STD[:channels], (224, 224),
                                       from_files=True, reprob=0.5)]  # fmt: skip
        for path in paths:
            plain, strided = read_image(path, channels), read_image(path, channels, contiguous=False)
            assert torch.equal(plain, strided) and plain.is_contiguous() and not (channels == 3 and strided.is_contiguous())
            for transform in transforms:
                torch.manual_seed(7)
                expected = transform(tv_tensors.Image(plain))
                torch.manual_seed(7)
                assert torch.equal(transform(tv_tensors.Image(strided)), expected)
            torch.manual_seed(7)
            image, label = _Samples([(path, 4)], transforms[1], channels)[0]
            assert label == 4 and image.is_contiguous() and torch.equal(image, expected)
