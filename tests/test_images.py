"""load_image on real files of every PIL mode we promise to handle, plus masks and overlays."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ppcr.errors import ImageError
from ppcr.images import GT_COLOR, PRED_COLOR, load_image, overlay, save_mask_png


def _pixels(path_or_image) -> np.ndarray:
    image = load_image(path_or_image)
    assert image.mode == "RGB"
    return np.asarray(image)


def test_rgb_png_roundtrip(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(data, "RGB").save(tmp_path / "a.png")
    assert np.array_equal(_pixels(tmp_path / "a.png"), data)
    assert np.array_equal(_pixels(str(tmp_path / "a.png")), data)


def test_grey_l_and_1(tmp_path):
    grey = np.array([[0, 50], [128, 255]], dtype=np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    assert np.array_equal(_pixels(tmp_path / "l.png"), np.repeat(grey[:, :, None], 3, axis=2))
    Image.fromarray(np.array([[True, False], [False, True]])).convert("1").save(tmp_path / "one.png")
    assert Image.open(tmp_path / "one.png").mode == "1"
    expected = np.array([[255, 0], [0, 255]], dtype=np.uint8)
    assert np.array_equal(_pixels(tmp_path / "one.png")[:, :, 1], expected)


def test_alpha_is_composited_onto_white(tmp_path):
    rgba = np.array(
        [[[10, 20, 30, 0], [10, 20, 30, 255]], [[0, 0, 0, 128], [200, 100, 50, 255]]], dtype=np.uint8
    )
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = _pixels(tmp_path / "rgba.png").astype(int)
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent → white, not (10, 20, 30)
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque unchanged
    assert out[1, 1].tolist() == [200, 100, 50]
    assert np.all(np.abs(out[1, 0] - 127) <= 1)  # half-transparent black over white → mid grey

    grey, alpha = (Image.fromarray(np.array([values], np.uint8)) for values in ([0, 100], [0, 255]))
    la = Image.merge("LA", [grey, alpha])
    la.save(tmp_path / "la.png")
    assert Image.open(tmp_path / "la.png").mode == "LA"
    assert _pixels(tmp_path / "la.png").tolist() == [[[255, 255, 255], [100, 100, 100]]]


def test_palette_with_and_without_transparency(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    plain = Image.fromarray(indices, "P")
    plain.putpalette(palette)
    plain.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    assert _pixels(tmp_path / "p.png").tolist() == [[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [255, 0, 0]]]

    plain.save(tmp_path / "pt.png", transparency=1)  # index 1 (green) is transparent
    reopened = Image.open(tmp_path / "pt.png")
    assert reopened.mode == "P" and "transparency" in reopened.info
    white = [255, 255, 255]
    assert _pixels(tmp_path / "pt.png").tolist() == [[[255, 0, 0], white], [[0, 0, 255], [255, 0, 0]]]

    gif = Image.fromarray(indices, "P")
    gif.putpalette(palette)
    gif.save(tmp_path / "t.gif", transparency=2)
    assert _pixels(tmp_path / "t.gif")[1, 0].tolist() == [255, 255, 255]


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257 * 100], [32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    out = _pixels(tmp_path / "g16.png")[:, :, 0]
    assert out.tolist() == [[0, 100], [128, 255]]  # a clip would give 255 for all but 0


def test_thirty_two_bit_integer_mode(tmp_path):
    wide = Image.fromarray(np.array([[0, 257 * 10], [40000, 65535]], dtype=np.int32), "I")
    wide.save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    assert _pixels(tmp_path / "i.tif")[:, :, 0].tolist() == [[0, 10], [156, 255]]
    narrow = Image.fromarray(np.array([[0, 7], [128, 255]], dtype=np.int32), "I")
    assert _pixels(narrow)[:, :, 0].tolist() == [[0, 7], [128, 255]]  # 8-bit data kept as is
    huge = Image.fromarray(np.array([[-1000, 79_000], [39_000, 199_000]], dtype=np.int32), "I")
    assert _pixels(huge)[:, :, 0].tolist() == [[0, 102], [51, 255]]  # stretched min..max


def test_float_mode(tmp_path):
    unit = Image.fromarray(np.array([[0.0, 0.5], [1.0, np.nan]], dtype=np.float32), "F")
    unit.save(tmp_path / "f.tif")
    assert Image.open(tmp_path / "f.tif").mode == "F"
    assert _pixels(tmp_path / "f.tif")[:, :, 0].tolist() == [[0, 128], [255, 0]]
    byte_range = Image.fromarray(np.array([[0.0, 12.0], [200.4, 255.0]], dtype=np.float32), "F")
    assert _pixels(byte_range)[:, :, 0].tolist() == [[0, 12], [200, 255]]
    other = Image.fromarray(np.array([[-1.0, 0.0], [1.0, 3.0]], dtype=np.float32), "F")
    assert _pixels(other)[:, :, 0].tolist() == [[0, 64], [128, 255]]


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 48, 4), dtype=np.uint8)
    cmyk[:, 16:32, 0] = 255  # middle: pure cyan ink
    cmyk[:, 32:, 3] = 255  # right: pure black ink; left: no ink = white
    Image.fromarray(cmyk, "CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = _pixels(tmp_path / "c.jpg").astype(int)
    assert np.array_equal(out, np.asarray(Image.open(tmp_path / "c.jpg").convert("RGB")))
    assert np.all(np.abs(out[8, 4] - [255, 255, 255]) <= 6)
    assert np.all(np.abs(out[8, 24] - [0, 255, 255]) <= 6)
    assert np.all(out[8, 44] <= 6)


def _marked(width: int, height: int) -> Image.Image:
    """Blue image with a red 4×4 block in the stored top-left corner."""
    data = np.zeros((height, width, 3), dtype=np.uint8)
    data[:, :, 2] = 255
    data[:4, :4] = [255, 0, 0]
    return Image.fromarray(data, "RGB")


def _is_red(pixel) -> bool:
    return pixel[0] > 200 and pixel[2] < 60


@pytest.mark.parametrize(
    "orientation, corner",
    [(6, (1, -2)), (8, (-2, 1)), (3, (-2, -2)), (1, (1, 1))],  # (row, col) where the red block lands
)
def test_exif_orientation_is_applied(tmp_path, orientation, corner):
    image = _marked(40, 24)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation tag
    path = tmp_path / f"o{orientation}.jpg"
    image.save(path, exif=exif.tobytes(), quality=95)
    assert Image.open(path).getexif()[0x0112] == orientation
    out = _pixels(path)
    rotated = orientation in (6, 8)
    assert out.shape[:2] == ((40, 24) if rotated else (24, 40))
    assert _is_red(out[corner])
    assert not _is_red(out[out.shape[0] // 2, out.shape[1] // 2])


def test_pil_input_honours_exif_and_arrays_convert(tmp_path):
    image = _marked(40, 24)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(tmp_path / "o.jpg", exif=exif.tobytes())
    with Image.open(tmp_path / "o.jpg") as opened:
        assert load_image(opened).size == (24, 40)

    rgb = np.random.default_rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    assert np.array_equal(_pixels(rgb), rgb)
    assert _pixels(np.array([[True, False]]))[0].tolist() == [[255, 255, 255], [0, 0, 0]]
    assert _pixels(np.array([[0, 65535]], dtype=np.uint16))[0, :, 0].tolist() == [0, 255]
    assert _pixels(np.array([[[0.0, 0.5, 1.0]]], dtype=np.float64))[0, 0].tolist() == [0, 128, 255]
    rgba = np.array([[[9, 9, 9, 0]]], dtype=np.uint8)
    assert _pixels(rgba)[0, 0].tolist() == [255, 255, 255]
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((2, 2, 2), np.uint8))
    with pytest.raises(ImageError):
        load_image(12)


def test_unreadable_inputs_raise_one_line_image_errors(tmp_path):
    corrupt = tmp_path / "bad.jpg"
    corrupt.write_bytes(b"this is not an image at all")
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 7).save(good)
    truncated = tmp_path / "trunc.png"
    truncated.write_bytes(good.read_bytes()[:60])
    cases = {
        tmp_path / "missing.png": "not found",
        tmp_path: "directory",
        corrupt: "cannot read image",
        truncated: "cannot read image",
    }
    for path, message in cases.items():
        with pytest.raises(ImageError, match=message) as info:
            load_image(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_save_mask_png_roundtrip(tmp_path):
    mask = np.zeros((5, 6), dtype=bool)
    mask[1:3, 2:5] = True
    path = save_mask_png(mask, tmp_path / "out" / "m.png")
    with Image.open(path) as saved:
        assert saved.mode == "L" and saved.format == "PNG"
        values = np.asarray(saved)
    assert set(np.unique(values)) == {0, 255}
    assert np.array_equal(values == 255, mask)
    assert sorted(p.name for p in path.parent.iterdir()) == ["m.png"]
    with pytest.raises(ValueError):
        save_mask_png(np.zeros((2, 2, 1), bool), tmp_path / "x.png")


def test_overlay_tints_mask_and_draws_boxes():
    base = np.full((40, 40, 3), 100, dtype=np.uint8)
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:20, 10:20] = True
    gt = np.zeros((40, 40), dtype=bool)
    gt[25:35, 25:35] = True
    out = np.asarray(overlay(base, mask, box_xyxy=(5, 5, 22, 22), gt_mask=gt, gt_box=(30, 2, 38, 8)))
    expected_tint = np.rint(0.5 * 100 + 0.5 * np.array(PRED_COLOR)).astype(int)
    assert out[15, 15].tolist() == expected_tint.tolist()  # inside predicted mask
    assert out[0, 0].tolist() == [100, 100, 100]  # untouched background
    assert out[5, 12].tolist() == list(PRED_COLOR)  # predicted box top edge
    assert out[13, 7].tolist() == [100, 100, 100]  # inside the box, outside the mask
    assert out[25, 30].tolist() == list(GT_COLOR)  # gt contour
    assert out[30, 30].tolist() == [100, 100, 100]  # gt interior is not filled
    assert out[2, 34].tolist() == list(GT_COLOR)  # gt box (corners given in any order below)
    swapped = np.asarray(overlay(base, box_xyxy=(22, 22, 5, 5)))
    assert swapped[5, 12].tolist() == list(PRED_COLOR)
    with pytest.raises(ValueError, match="shape"):
        overlay(base, np.zeros((10, 10), bool))
