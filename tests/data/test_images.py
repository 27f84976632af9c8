"""Images become the model's square RGB pixels faithfully: upright by EXIF, transparency on the
background, 16-bit and CMYK scaled right, padded whole or centre-cropped exactly as before, too small
ones refused by name and upscaled ones said so. Every image is made here with PIL."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from mmar_jax.data import decode, images
from tests.views import view


def config(size: int, **data) -> images.ImageConfig:
  return view(images.ImageConfig, {"tokenizer.image_size": size, **{f"data.{k}": v for k, v in data.items()}})


def encoded(pil: Image.Image, fmt: str = "PNG", **save) -> bytes:
  buffer = io.BytesIO()
  pil.save(buffer, fmt, **save)
  return buffer.getvalue()


def old_load_image(image, image_size: int) -> np.ndarray:
  """decode.load_image as it was before data/images.py, the reference for the centre crop."""
  if isinstance(image, np.ndarray) and image.shape == (image_size, image_size, 3) and image.dtype == np.uint8:
    return image
  if isinstance(image, np.ndarray):
    pil = Image.fromarray(image)
  elif isinstance(image, bytes):
    pil = Image.open(io.BytesIO(image))
  else:
    pil = Image.open(image)
  pil = pil.convert("RGB")
  while min(pil.size) >= 2 * image_size:
    pil = pil.resize(tuple(s // 2 for s in pil.size), resample=Image.BOX)
  scale = image_size / min(pil.size)
  pil = pil.resize(tuple(round(s * scale) for s in pil.size), resample=Image.BICUBIC)
  pixels = np.asarray(pil, np.uint8)
  top, left = (pixels.shape[0] - image_size) // 2, (pixels.shape[1] - image_size) // 2
  return pixels[top:top + image_size, left:left + image_size]


@pytest.mark.parametrize("height, width", [(200, 300), (51, 77), (64, 64), (50, 20), (32, 33), (517, 129)])
def test_center_crop_is_bit_identical_to_the_old_crop_for_rgb(tmp_path, height, width):
  rng = np.random.default_rng(height * width)
  smooth = np.cumsum(rng.integers(0, 3, (height, width, 3)), axis=1) % 256  # Bicubic's overshoot clips.
  pixels = np.where(rng.random((height, width, 1)) < 0.2, rng.integers(0, 256, (height, width, 3)), smooth)
  pixels = pixels.astype(np.uint8)
  Image.fromarray(pixels).save(tmp_path / "a.jpg", quality=90)
  for image in (pixels, encoded(Image.fromarray(pixels)), str(tmp_path / "a.jpg")):
    got = images.load_image(image, config(32))
    assert got.pixels.shape == (32, 32, 3) and got.pixels.dtype == np.uint8
    np.testing.assert_array_equal(got.pixels, old_load_image(image, 32))
    assert got.upscaled == (min(height, width) < 32)


def test_exif_orientation_turns_the_image_upright():
  # Stored 64 wide x 32 tall, red on the left, blue on the right; Orientation 6 says "rotate 90
  # degrees clockwise to show": shown 32 wide x 64 tall, red on top.
  stored = np.zeros((32, 64, 3), np.uint8)
  stored[:, :32] = (255, 0, 0)
  stored[:, 32:] = (0, 0, 255)
  exif = Image.Exif()
  exif[0x0112] = 6  # Orientation
  jpeg = encoded(Image.fromarray(stored), "JPEG", exif=exif, quality=95)
  got = images.load_image(jpeg, config(32, image_resize="pad_to_square")).pixels
  # Shown 32 x 64 -> padded 16 x 32 in the middle columns: red rows on top, blue below.
  top, bottom = got[2:14, 10:22].reshape(-1, 3).mean(0), got[18:30, 10:22].reshape(-1, 3).mean(0)
  assert top[0] > 230 and top[2] < 25, top
  assert bottom[2] > 230 and bottom[0] < 25, bottom
  np.testing.assert_array_equal(got[:, :8], 255)  # The white padding left and right of the upright image.
  np.testing.assert_array_equal(got[:, 24:], 255)
  # Without the tag the same pixels are a wide image: red left, blue right.
  plain = images.load_image(encoded(Image.fromarray(stored), "JPEG", quality=95), config(32)).pixels
  assert plain[:, :12, 0].mean() > 230 and plain[:, 20:, 2].mean() > 230


def _bands(alpha_of_band: dict[int, tuple]) -> np.ndarray:
  """16 x 16 RGBA: rows 0-5 opaque green, rows 6-10 half-transparent red, rows 11-15 transparent black."""
  rgba = np.zeros((16, 16, 4), np.uint8)
  for (start, stop), value in alpha_of_band.items():
    rgba[start:stop] = value
  return rgba


RGBA = _bands({(0, 6): (0, 255, 0, 255), (6, 11): (255, 0, 0, 128), (11, 16): (0, 0, 0, 0)})


@pytest.mark.parametrize("background, half_red, behind", [
    ("white", (255, 127, 127), (255, 255, 255)),   # 255 * 128/255 + 255 * 127/255 = 255; 0 + 255 * 127/255 = 127.
    ("#0000ff", (128, 0, 127), (0, 0, 255)),        # 255 * 128/255 = 128 red over blue's 255 * 127/255 = 127.
])
def test_rgba_is_composited_onto_the_background(background, half_red, behind):
  got = images.load_image(encoded(Image.fromarray(RGBA, "RGBA")), config(16, image_background=background)).pixels
  np.testing.assert_array_equal(got[:6], np.broadcast_to((0, 255, 0), (6, 16, 3)))
  np.testing.assert_array_equal(got[6:11], np.broadcast_to(half_red, (5, 16, 3)))
  np.testing.assert_array_equal(got[11:], np.broadcast_to(behind, (5, 16, 3)))


def test_la_and_a_palettes_transparency_are_composited_too():
  la = np.zeros((16, 16, 2), np.uint8)
  la[:8] = (0, 128)  # Black, half transparent: 255 * 127/255 = 127 on white.
  la[8:] = (200, 255)
  got = images.load_image(encoded(Image.fromarray(la, "LA")), config(16)).pixels
  np.testing.assert_array_equal(got[:8], 127)
  np.testing.assert_array_equal(got[8:], 200)
  # A palette image whose index 1 is transparent (PNG's tRNS chunk), on a grey background.
  palette = Image.fromarray(np.repeat(np.array([[0] * 8 + [1] * 8], np.uint8), 16, axis=0), "P")
  palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
  data = encoded(palette, transparency=1)
  assert Image.open(io.BytesIO(data)).mode == "P" and "transparency" in Image.open(io.BytesIO(data)).info
  got = images.load_image(data, config(16, image_background="#808080")).pixels
  np.testing.assert_array_equal(got[:, :8], np.broadcast_to((255, 0, 0), (16, 8, 3)))
  np.testing.assert_array_equal(got[:, 8:], 128)  # The green index is transparent: the background shows.


def test_cmyk_becomes_the_rgb_its_inks_give():
  inks = [(0, 0, 0, 0), (255, 0, 0, 0), (0, 0, 0, 255), (0, 128, 255, 64)]
  cmyk = np.zeros((16, 16, 4), np.uint8)
  for i, value in enumerate(inks):
    cmyk[(i // 2) * 8:(i // 2 + 1) * 8, (i % 2) * 8:(i % 2 + 1) * 8] = value
  data = encoded(Image.fromarray(cmyk, "CMYK"), "TIFF")
  assert Image.open(io.BytesIO(data)).mode == "CMYK"
  got = images.load_image(data, config(16)).pixels
  # White paper, cyan, black, and (255 - 0)(255 - 64)/255 = 191, (255 - 128)(191)/255 = 95, 0.
  for i, expected in enumerate([(255, 255, 255), (0, 255, 255), (0, 0, 0), (191, 95, 0)]):
    block = got[(i // 2) * 8:(i // 2 + 1) * 8, (i % 2) * 8:(i % 2 + 1) * 8].astype(int)
    assert np.abs(block - expected).max() <= 1, (inks[i], block[0, 0])


def test_16_bit_and_float_grey_are_scaled_not_clipped():
  grey = np.zeros((16, 16), np.uint16)
  grey[:, :5], grey[:, 5:10], grey[:, 10:] = 65535, 32768, 1000  # PIL's own conversion makes all three 255.
  data = encoded(Image.fromarray(grey))
  assert Image.open(io.BytesIO(data)).mode == "I;16"
  got = images.load_image(data, config(16)).pixels.astype(int)
  np.testing.assert_array_equal(got[:, :5], 255)
  assert np.abs(got[:, 5:10] - 128).max() <= 1
  assert np.abs(got[:, 10:] - 4).max() <= 1  # 1000 * 255 / 65535 = 3.9
  # Mode I (how some 16-bit files read) and float greyscale in [0, 1].
  assert Image.fromarray(grey.astype(np.int32)).mode == "I"
  np.testing.assert_array_equal(images.load_image(grey.astype(np.int32), config(16)).pixels, got)
  floats = np.full((16, 16), 0.5, np.float32)
  assert Image.fromarray(floats).mode == "F"
  np.testing.assert_array_equal(images.load_image(floats, config(16)).pixels, 128)


def test_pad_to_square_keeps_the_whole_image_on_the_background():
  # A 2.5:1 picture of random 2x2 blocks: the box filter halves it to its 40 x 16 base exactly,
  # and 40 is the target, so the base must come back whole, centred, the rest the background.
  base = np.random.default_rng(0).integers(0, 256, (16, 40, 3), dtype=np.uint8)
  wide = np.repeat(np.repeat(base, 2, axis=0), 2, axis=1)
  padded = config(40, image_resize="pad_to_square", image_background="#102030")
  got = images.load_image(encoded(Image.fromarray(wide)), padded)
  assert not got.upscaled
  np.testing.assert_array_equal(got.pixels[12:28], base)
  np.testing.assert_array_equal(got.pixels[:12], np.broadcast_to((16, 32, 48), (12, 40, 3)))
  np.testing.assert_array_equal(got.pixels[28:], np.broadcast_to((16, 32, 48), (12, 40, 3)))
  # Tall, and smaller than the target: enlarged (and said so) to the full height, padded left and right.
  tall = images.load_image(np.full((30, 18, 3), 90, np.uint8), config(40, image_resize="pad_to_square"))
  assert tall.upscaled and tall.pixels.shape == (40, 40, 3)
  np.testing.assert_array_equal(tall.pixels[:, 8:32], 90)  # round(18 * 40 / 30) = 24 columns, centred.
  np.testing.assert_array_equal(tall.pixels[:, :8], 255)
  np.testing.assert_array_equal(tall.pixels[:, 32:], 255)


def test_an_image_below_the_minimum_is_a_corrupt_record_saying_why():
  record = {"image": encoded(Image.new("RGB", (12, 40), "red")), "caption": "small", "source": "s", "index": 3}
  got = decode.decode_record(record, config(32))
  assert got == {"corrupt": "image too small: 12x40 is below config.data.min_image_size=16", "source": "s",
                 "index": 3}
  with pytest.raises(images.TooSmall, match=r"^12x40 is below config.data.min_image_size=16$"):
    images.load_image(record["image"], config(32))
  # A lower minimum lets it through, upscaled.
  assert decode.decode_record(record, config(32, min_image_size=12))["upscaled"]


def test_an_image_smaller_than_the_target_is_upscaled_and_says_so():
  small = {"image": encoded(Image.new("RGB", (20, 30), "red")), "caption": "c", "source": "s", "index": 0}
  large = {"image": encoded(Image.new("RGB", (40, 64), "red")), "caption": "c", "source": "s", "index": 1}
  got = decode.decode_record(small, config(32))
  assert got["upscaled"] and got["image"].shape == (32, 32, 3)
  np.testing.assert_array_equal(got["image"], np.broadcast_to((255, 0, 0), (32, 32, 3)))
  assert not decode.decode_record(large, config(32))["upscaled"]
