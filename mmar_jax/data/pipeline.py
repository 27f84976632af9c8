"""The grain input pipeline: source -> shuffled host shard -> task sequences in workers -> rows -> batches.

Per host (`process_index` of `process_count`):
  MapDataset.source (its training records: holdout.py) -> seed -> shuffle (a new order each epoch)
  -> this host's slice -> repeat -> [MapDataset.mix of several such, mixture.py] -> random_map(decode + task sequence) -> to_iter_dataset -> mp_prefetch (worker processes) ->
  skip corrupt -> count cut / unknown text (text_accounting.py) -> pack (FirstFit) or pad -> row
  -> batch(batch_size // process_count) -> Batch
Everything after the workers is cheap numpy and stateful only through grain iterators, so the
iterator's state (grain.checkpoint.CheckpointSave / CheckpointRestore in an Orbax checkpoint)
resumes the exact batch sequence, whatever the number of workers.

Each element is a `mmar_jax.batch.Batch` of host-local numpy arrays (the fields' contract is
there); `to_global` makes jax.Arrays of it over the mesh's data axes.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
from typing import Any

import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tokenizers import Tokenizer

import grain
from mmar_jax.batch import Batch
from mmar_jax.data import (corrupt, decode, holdout, images, latent_source, mixture, sequences, synthetic,
                           text_accounting, text_tokenizer)
from mmar_jax.data.manifest import ManifestSource
from mmar_jax.data.tfds_source import TfdsConfig, TfdsSource
from mmar_jax.train import mesh as mesh_lib

@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What the pipeline needs (from config.data)."""
  source: str
  manifest: str
  mixture: tuple[mixture.MixtureEntry, ...]  # source='mixture' only; () otherwise.
  validation_fraction: float
  synthetic_records: int
  synthetic_noisy_backgrounds: bool
  synthetic_held_out_modulus: int
  image: images.ImageConfig
  batch_size: int  # global
  num_workers: int
  worker_buffer_size: int
  packing_bins: int
  seed: int
  max_corrupt_fraction: float
  sequence: sequences.SequenceConfig
  tfds: TfdsConfig
  latents: latent_source.LatentsConfig

  @classmethod
  def from_config(cls, config) -> PipelineConfig:
    d = config.data
    return cls(source=d.source, manifest=d.manifest,
               mixture=mixture.parse(d.mixture) if d.source == "mixture" else (),
               validation_fraction=d.validation_fraction, synthetic_records=d.synthetic_records,
               synthetic_noisy_backgrounds=d.synthetic_noisy_backgrounds,
               synthetic_held_out_modulus=d.synthetic_held_out_modulus,
               image=images.ImageConfig.from_config(config), batch_size=d.batch_size, num_workers=d.num_workers,
               worker_buffer_size=d.worker_buffer_size, packing_bins=d.packing_bins, seed=d.seed,
               max_corrupt_fraction=d.max_corrupt_fraction,
               sequence=sequences.SequenceConfig.from_config(config),
               tfds=TfdsConfig(name=d.tfds_name, split=d.tfds_split, data_dir=d.tfds_data_dir,
                               image_key=d.tfds_image_key, caption_key=d.tfds_caption_key,
                               question_key=d.tfds_question_key, answer_key=d.tfds_answer_key),
               latents=latent_source.LatentsConfig.from_config(config))

  @property
  def reads_moments(self) -> bool:
    """Records are latent-cache moments, not pixels (a mixture holds only one kind: mixture.py)."""
    return self.source == "latents" or bool(self.mixture) and self.mixture[0].kind == "latents"


def make_sources(config: PipelineConfig) -> list[tuple[grain.sources.RandomAccessDataSource, float]]:
  """(source, weight) of each source the config names: one, or a mixture's entries."""
  if config.source != "mixture":
    return [(make_source(config), 1.0)]
  made = []
  for entry in config.mixture:
    one = dataclasses.replace(config, source=entry.kind)
    if entry.kind == "synthetic":
      one = dataclasses.replace(one, synthetic_records=int(entry.location))
    elif entry.kind == "manifest":
      one = dataclasses.replace(one, manifest=entry.location)
    elif entry.kind == "tfds":
      one = dataclasses.replace(one, tfds=dataclasses.replace(config.tfds, name=entry.location))
    else:
      one = dataclasses.replace(one, latents=dataclasses.replace(config.latents, dir=entry.location))
    made.append((make_source(one), entry.weight))
  return made


def make_source(config: PipelineConfig) -> grain.sources.RandomAccessDataSource:
  """The random-access source named by config.data.source (one, not a mixture)."""
  if config.source == "synthetic":
    return synthetic.SyntheticShapesSource(
        synthetic.SyntheticConfig(config.synthetic_records, config.image.size, seed=config.seed,
                                  noisy_backgrounds=config.synthetic_noisy_backgrounds,
                                  held_out_modulus=config.synthetic_held_out_modulus))
  if config.source == "manifest":
    return ManifestSource(config.manifest)
  if config.source == "tfds":
    return TfdsSource(config.tfds)
  if config.source == "latents":
    return latent_source.LatentCacheSource(config.latents)
  raise ValueError(f"config.data.source={config.source!r} is not a known source")


class RecordToSequence(grain.transforms.RandomMap):
  """Decodes a record and builds its task sequence (a padded row unless packing); runs in workers."""

  def __init__(self, config: PipelineConfig, tokenizer: Tokenizer):
    self._config = config
    self._tokenizer = tokenizer
    self._ids = text_tokenizer.special_ids(tokenizer)

  def random_map(self, element: dict, rng: np.random.Generator) -> dict:
    stream = element.get(corrupt.STREAM, 0)
    if self._config.reads_moments:
      record = latent_source.decode_record(element)
    else:
      record = decode.decode_record(element, self._config.image)
    if "corrupt" in record:
      return {**record, corrupt.STREAM: stream}
    return {**self._sequence(record, rng), corrupt.STREAM: stream}  # The skip stage counts by stream, drops it.

  def _sequence(self, record: dict, rng: np.random.Generator) -> dict:
    seq = sequences.build_sequence(record, rng, self._config.sequence, self._tokenizer, self._ids)
    # MAR's random flip of cached moments, drawn after the sequence so that the task draws are
    # those a pixel source of the same records gets from the same seed.
    if self._config.reads_moments and self._config.latents.flip and rng.random() < 0.5:
      seq["image_moments"] = record["moments_flip"][None]
    if self._config.sequence.packing:
      return seq
    return sequences.pad_sequence(seq, self._config.sequence, self._ids.pad)


def host_batch_size(config: PipelineConfig, process_count: int) -> int:
  if config.batch_size % process_count:
    raise ValueError(f"config.data.batch_size={config.batch_size} must divide evenly over {process_count} hosts")
  return config.batch_size // process_count


def _with_stream(stream: int, record: dict) -> dict:
  return {**record, corrupt.STREAM: stream}


def _training_stream(source, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
  """One epoch of this host's records of `source`, shuffled anew each time it repeats."""
  # Shuffle before slicing: every host draws the same permutation per epoch and takes its own
  # stride of it, so hosts are disjoint within an epoch and together cover it.
  ds = grain.MapDataset.source(source).seed(seed).shuffle()
  return ds[process_index::process_count]


def build_dataset(config: PipelineConfig, tokenizer: Tokenizer, *, source=None, process_index: int | None = None,
                  process_count: int | None = None, start: int = 0) -> grain.IterDataset:
  """This host's infinite stream of batches (`Batch`es of numpy arrays) of the training records.

  `process_index` / `process_count` default to jax's; tests pass them to simulate hosts.
  `start` skips that many records of this host's slice (a resume at another process count
  repositions the stream this way, train/checkpointing.py).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  ds, per_epoch = _training_records(config, source, process_index, process_count)
  return _to_batches(ds, config, tokenizer, process_count, start=start, announce=True, records_per_epoch=per_epoch)


def training_records(config: PipelineConfig, *, source=None, process_index: int, process_count: int
                     ) -> grain.MapDataset:
  """This host's infinite stream of raw training records: each source's records less the held-out
  ones, shuffled per epoch, and for a mixture interleaved by grain in proportion to the weights."""
  return _training_records(config, source, process_index, process_count)[0]


def _training_records(config: PipelineConfig, source, process_index: int, process_count: int
                      ) -> tuple[grain.MapDataset, tuple[int, ...]]:
  """`training_records` and each stream's records per epoch on this host (the skip stage's distinct counts)."""
  weighted = make_sources(config) if source is None else [(source, 1.0)]
  if config.validation_fraction:
    weighted = [(holdout.split(s, config.validation_fraction)[0], w) for s, w in weighted]
  # Each source its own seed, so two mixed copies of one source are not shuffled alike.
  epochs = [_training_stream(s, config.seed + k, process_index, process_count) for k, (s, _) in enumerate(weighted)]
  per_epoch = tuple(len(epoch) for epoch in epochs)
  streams = [epoch.repeat(None) for epoch in epochs]  # Reseeds the shuffle every epoch.
  if len(streams) == 1:
    return streams[0], per_epoch
  tagged = [stream.map(functools.partial(_with_stream, k)) for k, stream in enumerate(streams)]
  return grain.MapDataset.mix(tagged, [w for _, w in weighted]), per_epoch


def build_validation_dataset(config: PipelineConfig, tokenizer: Tokenizer, *, process_index: int | None = None,
                             process_count: int | None = None) -> grain.IterDataset | None:
  """This host's share of the held-out records, once, as padded batches (the same rows every
  time: task draws come from data.seed); None when config.data.validation_fraction is 0."""
  if not config.validation_fraction:
    return None
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  held = [holdout.split(s, config.validation_fraction)[1] for s, _ in make_sources(config)]
  ds = grain.MapDataset.concatenate([grain.MapDataset.source(s) for s in held]).seed(config.seed)
  # Every host as many records, so each runs as many batches (the loss is a collective).
  ds = ds[process_index::process_count][:len(ds) // process_count]
  if len(ds) < host_batch_size(config, process_count):
    raise ValueError(f"config.data.validation_fraction={config.validation_fraction} holds out {len(ds)} records "
                     f"a host, fewer than one batch ({host_batch_size(config, process_count)} rows): hold out more")
  # Padded rows: a packed row's contents would depend on its neighbours.
  unpacked = dataclasses.replace(config, num_workers=0, sequence=dataclasses.replace(config.sequence, packing=False))
  return _to_batches(ds, unpacked, tokenizer, process_count, start=0, announce=False, records_per_epoch=(len(ds),))


def _to_batches(ds: grain.MapDataset, config: PipelineConfig, tokenizer: Tokenizer, process_count: int, *,
                start: int, announce: bool, records_per_epoch: tuple[int, ...]) -> grain.IterDataset:
  seq = config.sequence
  pad_id = text_tokenizer.special_ids(tokenizer).pad
  if start:
    ds = ds[start:]
  ds = ds.random_map(RecordToSequence(config, tokenizer)).to_iter_dataset()
  if config.num_workers > 0:
    # Grain reads its absl flags when it starts workers; outside an absl app (tests, notebooks,
    # benchmarks) nobody parsed them, so parse the defaults.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS(["mmar-jax"], known_only=True)
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=config.num_workers,
                                                     per_worker_buffer_size=config.worker_buffer_size))
  ds = corrupt.SkipCorruptIterDataset(ds, config.max_corrupt_fraction, records_per_epoch=records_per_epoch)
  # The validation set is read again at every evaluation: its text is counted, not announced each time.
  ds = text_accounting.TextAccountingIterDataset(ds, announce=announce)
  if seq.packing:
    lengths = {key: seq.seq_len for key in sequences.TOKEN_FEATURES}
    images = sequences.MOMENTS_FEATURES if config.reads_moments else sequences.IMAGE_FEATURES
    lengths.update({key: seq.max_images for key in images})
    padding = {key: 0 for key in lengths} | {"input_ids": pad_id, "targets": pad_id}
    ds = grain.experimental.FirstFitPackIterDataset(
        ds, length_struct=lengths, num_packing_bins=config.packing_bins, seed=config.seed, shuffle_bins=True,
        padding_struct=padding)
    ds = ds.map(sequences.packed_to_row)
  ds = ds.map(lambda row: sequences.finalize_row(row, seq))
  # The rows' keys are Batch's fields: the one place a Batch is made from data.
  return ds.batch(host_batch_size(config, process_count), drop_remainder=True).map(lambda rows: Batch(**rows))


def corrupt_counts(iterator: grain.DatasetIterator) -> dict[str, Any]:
  """This host's record counts so far (SkipCorruptIterator.counts), read from the pipeline's skip stage."""
  stack = [iterator]
  while stack:
    it = stack.pop()
    if isinstance(it, corrupt.SkipCorruptIterator):
      return it.counts
    stack.extend(getattr(it, "_parents", ()))
  raise ValueError("the iterator has no corrupt-record stage; was it made by build_dataset?")


def release_shared_memory() -> None:
  """Unlinks the shared memory of worker outputs this process has dropped, before it exits.

  grain frees a consumed element's shared memory in a thread pool (`SharedMemoryArray.enable_async_del`);
  a process that exits before the pool ran (sooner on a loaded machine) leaves the segments to
  multiprocessing's resource tracker, which reports them as leaked. Collect what is unreferenced,
  then let the pool finish (a private attribute of grain's: absent, there is nothing to wait for).
  """
  gc.collect()
  from grain._src.python.ipc import shared_memory_array  # pylint: disable=g-import-not-at-top
  pool = getattr(shared_memory_array.SharedMemoryArray, "_del_thread_pool", None)
  if pool is not None:
    pool.close()
    pool.join()
    shared_memory_array.SharedMemoryArray._disable_async_del()  # Later frees run inline.


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """The batch dimension split as the rule table's 'batch' axis says; every other dimension whole."""
  return NamedSharding(mesh, PartitionSpec(mesh_lib.mesh_axes("batch", rules)))


def to_global(batch: Batch | Any, mesh: Mesh, rules) -> Batch | Any:
  """Host-local batches from every host -> global jax.Arrays, split over the mesh as `rules` say
  (a Batch, or any pytree of [B, ...] arrays)."""
  sharding = batch_sharding(mesh, rules)
  return jax.tree.map(lambda value: jax.make_array_from_process_local_data(sharding, value), batch)
