"""The skip stage on small grain datasets: each bad record warned about and counted once, the
limit judged on distinct records, the counts carried through the iterator state."""

from __future__ import annotations

import json
import logging

import pytest

import grain
from mmar_jax.data import corrupt


def records(n: int, bad: dict[int, str], source: str = "m.jsonl", stream: int | None = None) -> list[dict]:
  """n elements: good ones {'value'}, bad ones corrupt markers with a manifest line (index + 1)."""
  out = []
  for i in range(n):
    element = ({"corrupt": bad[i], "source": source, "index": i, "line": i + 1} if i in bad else {"value": i})
    out.append(element if stream is None else {**element, corrupt.STREAM: stream})
  return out


def skip_iterator(elements: list[dict], max_fraction: float, per_epoch, min_records: int = 100):
  # Copies: the stage pops the stream key off the elements it is given.
  ds = grain.MapDataset.source(elements).map(dict).repeat(None).to_iter_dataset()
  return iter(corrupt.SkipCorruptIterDataset(ds, max_fraction, min_records, per_epoch))


def warnings_of(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if "skipping corrupt record" in r.getMessage()]


BAD = {2: "image missing: No such file or directory: a.png", 7: "line is not JSON: Expecting value at column 1"}


def test_a_bad_record_across_epochs_is_warned_about_and_counted_once(caplog):
  it = skip_iterator(records(10, BAD), 0.5, (10,))
  with caplog.at_level(logging.WARNING):
    got = [next(it)["value"] for _ in range(24)]  # 8 good a pass: 3 epochs.
  assert got == [i for i in range(10) if i not in BAD] * 3
  assert it.counts == {"reads": 30, "distinct": 10, "corrupt": 2, "skips": 6,
                       "reasons": {"image missing": 1, "line is not JSON": 1}}
  messages = warnings_of(caplog)
  assert len(messages) == 2, messages
  assert messages[0].startswith("skipping corrupt record m.jsonl:3: image missing: No such file")
  assert messages[1].startswith("skipping corrupt record m.jsonl:8: line is not JSON")


def test_the_counts_survive_the_state_round_trip(caplog):
  it = skip_iterator(records(10, BAD), 0.5, (10,))
  [next(it) for _ in range(12)]  # Into the second epoch: both bad records met, one of them twice.
  state = it.get_state()
  counts = it.counts
  # The state is what a checkpoint stores as JSON: small, the bad records a sorted list per source.
  assert json.loads(json.dumps(state)) == state
  assert state["bad"] == {"m.jsonl": [2, 7]}
  expected = [next(it)["value"] for _ in range(12)]
  resumed = skip_iterator(records(10, BAD), 0.5, (10,))
  resumed.set_state(state)
  assert resumed.counts == counts
  caplog.clear()
  with caplog.at_level(logging.WARNING):
    assert [next(resumed)["value"] for _ in range(12)] == expected
  assert not warnings_of(caplog)  # Known before the resume: not warned about again.
  assert resumed.counts == it.counts and resumed.counts["corrupt"] == 2 and resumed.counts["distinct"] == 10


def test_the_limit_is_judged_on_distinct_records():
  # 1 bad record in 10 is 10%, under the 15% limit, however many epochs repeat it.
  it = skip_iterator(records(10, {3: "image missing: x"}), 0.15, (10,))
  [next(it) for _ in range(9 * 20)]
  assert it.counts["corrupt"] == 1 and it.counts["skips"] == 20
  # 2 in 10 is over it: the verdict comes once all 10 were read (fewer than min_records=100).
  it = skip_iterator(records(10, BAD), 0.15, (10,))
  with pytest.raises(corrupt.CorruptDataError) as error:
    [next(it) for _ in range(20)]
  assert str(error.value).startswith("2 of 10 distinct records (20.0%) were corrupt, more than "
                                     "config.data.max_corrupt_fraction=0.15; the last was m.jsonl:8: line is not JSON")
  assert it.counts["reads"] == 10


def test_a_small_stream_of_a_mixture_does_not_inflate_the_distinct_records():
  # A 4-record stream (one bad) interleaved with a 40-record one: after 40 reads the small
  # stream has repeated five times, yet only 4 + 20 records were distinct. 1 bad of 24 is 4.2%.
  small = records(4, {1: "image missing: x"}, source="small.jsonl", stream=0)
  large = records(40, {}, source="large.jsonl", stream=1)
  mixed = [element for pair in zip(small * 10, large) for element in pair]
  ds = grain.MapDataset.source(mixed).map(dict).repeat(None).to_iter_dataset()
  it = iter(corrupt.SkipCorruptIterDataset(ds, 0.5, 5, (4, 40)))
  while it.counts["reads"] < 40:
    assert corrupt.STREAM not in next(it)  # Dropped before packing and batching see the element.
  assert it.counts["distinct"] == 24 and it.counts["corrupt"] == 1 and it.counts["skips"] == 5


def test_the_summary_table_and_the_scalars():
  counts = {"reads": 30, "distinct": 10, "corrupt": 2, "skips": 6,
            "reasons": {"image missing": 1, "line is not JSON": 1}}
  lines = corrupt.summary_lines(counts)
  assert lines[0] == "data (this host):"
  table = {line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1].replace(",", "")) for line in lines[1:]}
  assert table == {"records read": 30, "distinct records": 10, "bad records skipped": 2, "image missing": 1,
                   "line is not JSON": 1, "skips, repeats included": 6}
  assert corrupt.scalars(counts) == {"data/records_read": 30, "data/records_seen": 10, "data/corrupt_records": 2}


@pytest.mark.parametrize("marker, kind", [
    ({"corrupt": "image unreadable: UnidentifiedImageError: cannot identify", "source": "m", "index": 0},
     "image unreadable"),
    ({"corrupt": "no caption and no answer", "source": "m", "index": 0}, "no caption and no answer"),
    ({"corrupt": "/c/shard-0: record 5: not a latent cache record (KeyError: 'moments')", "source": "/c/shard-0",
      "index": 5}, "not a latent cache record"),
])
def test_reason_kinds_drop_the_particulars(marker, kind):
  assert corrupt.reason_kind(marker) == kind


def test_passes_of_one_dataset_warn_once_and_count_each(caplog):
  # The validation records are read afresh at every evaluation, each time by a new iterator.
  ds = corrupt.SkipCorruptIterDataset(grain.MapDataset.source(records(10, BAD)).map(dict).to_iter_dataset(), 0.5,
                                      records_per_epoch=(10,))
  with caplog.at_level(logging.WARNING):
    passes = [list(ds) for _ in range(3)]
  assert all(len(p) == 8 for p in passes)
  assert len(warnings_of(caplog)) == 2, warnings_of(caplog)
  it = iter(ds)
  list(it)
  assert it.counts["corrupt"] == 2 and it.counts["reads"] == 10
