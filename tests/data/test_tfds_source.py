"""The TFDS source round-trips a small array_record dataset that the test prepares (no download)."""

from __future__ import annotations

import concurrent.futures
import io
import multiprocessing
import pickle
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmar_jax import configs
from mmar_jax.data import decode, images, pipeline, synthetic, text_tokenizer
from mmar_jax.data.tfds_source import TfdsConfig, TfdsSource
from tests.views import view

RECORDS = [synthetic.SyntheticShapesSource(synthetic.SyntheticConfig(12, 32, seed=8))[i] for i in range(12)]


def png(image):
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  return buffer.getvalue()


def gray(image):
  return np.asarray(Image.fromarray(image).convert("L"))


class MmarTinyShapes(tfds.core.GeneratorBasedBuilder):
  """Twelve synthetic records with the features `tfds build` writes: Image and Text.

  Image features are given as PNG bytes or PIL images, as a builder passes downloaded files:
  tfds stores those as they are. Only numpy arrays would need TensorFlow (tf.image.encode_png),
  which this project does not install; reading needs none (tfds decodes with PIL). A Tensor of
  pixels and a string tensor of PNG bytes stand for datasets that store images so.
  """
  VERSION = tfds.core.Version("1.0.0")
  # tfds looks for the builder's source files through the optional importlib_resources package
  # (absent here) when the class lives in a package; None is its answer for builders without
  # files (as in a notebook), and this one has none to find.
  code_path = None

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "gray": tfds.features.Image(shape=(32, 32, 1)),
        "pixels": tfds.features.Tensor(shape=(32, 32, 3), dtype=np.uint8),
        "png": tfds.features.Tensor(shape=(), dtype=np.object_),
        "text": tfds.features.Text(),
        "question": tfds.features.Text(),
        "answer": tfds.features.Text(),
        "id": tfds.features.Tensor(shape=(), dtype=np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i, r in enumerate(RECORDS):
      yield i, {"image": png(r["image"]), "gray": Image.fromarray(gray(r["image"])),
                "pixels": r["image"], "png": png(r["image"]), "text": r["caption"], "question": r["qa"][2][0],
                "answer": r["qa"][2][1], "id": i}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("tfds")
  MmarTinyShapes(data_dir=str(directory), file_format="array_record").download_and_prepare()
  return str(directory)


@pytest.mark.parametrize("image_key", ["image", "gray", "pixels", "png"])
def test_tfds_records_round_trip(data_dir, image_key):
  source = TfdsSource(TfdsConfig("mmar_tiny_shapes", data_dir=data_dir, image_key=image_key, caption_key="text",
                                 question_key="question", answer_key="answer"))
  assert len(source) == 12
  # tfds shuffles examples while preparing; match them up by caption, distinct among these 12.
  assert len({r["caption"] for r in RECORDS}) == 12
  for i in range(12):
    got = decode.decode_record(source[i], view(images.ImageConfig, {"tokenizer.image_size": 32}))
    want = next(r for r in RECORDS if r["caption"] == got["caption"])
    pixels = gray(want["image"])[..., None].repeat(3, -1) if image_key == "gray" else want["image"]
    assert np.array_equal(got["image"], pixels) and got["qa"] == [want["qa"][2]]


# A worker that never answers (as when tfds's import deadlocked in it, see the next test) fails
# this test in 3 minutes instead of the suite's 10, and is ended so it holds nothing afterwards.
@pytest.mark.timeout(180)
def test_tfds_source_through_the_pipeline_with_a_worker(data_dir):
  config = configs.load_config("configs/demo.py", [
      "data.source=tfds", "data.tfds_name=mmar_tiny_shapes", f"data.tfds_data_dir={data_dir}",
      "data.tfds_image_key=image", "data.tfds_caption_key=text", "data.packing=False", "data.batch_size=4",
      "data.num_workers=1", "data.generation_fraction=1.0", "data.caption_dropout=0.0"])
  pc = pipeline.PipelineConfig.from_config(config)
  tok = text_tokenizer.build_demo_tokenizer()
  it = iter(pipeline.build_dataset(pc, tok, process_index=0, process_count=1))
  try:
    indices = np.concatenate([next(it).record_index[:, 0] for _ in range(3)])
  except BaseException:
    for worker in multiprocessing.active_children():
      worker.terminate()
    raise
  it.close()
  assert sorted(indices) == list(range(12))  # One epoch, every example once.


def test_concurrent_first_reads_open_the_dataset_once(data_dir, monkeypatch):
  # As in a grain worker: an unpickled source is opened by whichever of grain's threads reads
  # first; two threads importing tfds at once can deadlock on Python 3.11 (seen in CI).
  source = TfdsSource(TfdsConfig("mmar_tiny_shapes", data_dir=data_dir, image_key="image", caption_key="text"))
  shipped = pickle.loads(pickle.dumps(source))
  opened, data_source = [], tfds.data_source

  def slow_data_source(*args, **kwargs):
    opened.append(threading.get_ident())
    time.sleep(0.2)  # Wide enough for every thread to arrive while the first still opens.
    return data_source(*args, **kwargs)

  monkeypatch.setattr(tfds, "data_source", slow_data_source)
  with concurrent.futures.ThreadPoolExecutor(16) as pool:
    records = list(pool.map(shipped.__getitem__, range(12)))
  assert len(opened) == 1
  assert [r["caption"] for r in records] == [source[i]["caption"] for i in range(12)]


def test_unprepared_dataset_fails_by_name(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.data.tfds_name='nothing_here'"):
    TfdsSource(TfdsConfig("nothing_here", data_dir=str(tmp_path)))
