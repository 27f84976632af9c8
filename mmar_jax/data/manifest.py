"""An image-text manifest as a grain data source: JSONL captions or LLaVA-style conversations.

Accepted, one record per JSONL line (or a JSON array of the same objects, as LLaVA ships):
  {"image": "rel/path.png", "caption": "a red circle"}
  {"image": "rel/path.png", "conversations": [{"from": "human", "value": "<image>\\nwhat colour?"},
                                               {"from": "gpt", "value": "red"}, ...]}
Image paths are relative to the manifest's directory. Each human turn followed by a gpt turn
becomes one question / answer pair. A JSONL line that is not UTF-8 or does not parse stays a
record that decodes as corrupt, so it is counted like any other bad record instead of failing at
start-up. Each record knows its 1-based line in the file, for messages.
"""

from __future__ import annotations

import json
import os
from typing import SupportsIndex

import grain

IMAGE_PLACEHOLDER = "<image>"  # LLaVA marks where the image goes; our layout puts it first.


def _conversation_pairs(turns: list[dict]) -> list[tuple[str, str]]:
  pairs = []
  for ask, reply in zip(turns, turns[1:]):
    if ask.get("from") == "human" and reply.get("from") == "gpt":
      question = ask.get("value", "").replace(IMAGE_PLACEHOLDER, " ").strip()
      pairs.append((" ".join(question.split()), reply.get("value", "")))
  return pairs


def parse_entry(entry: dict, root: str) -> dict:
  """One manifest object -> a source record ({'image': path, 'caption', 'qa'}) or one with 'error'."""
  if not isinstance(entry, dict) or not isinstance(entry.get("image"), str):
    return {"error": "entry has no 'image' path"}
  if not isinstance(entry.get("caption", ""), str):
    return {"error": f"caption is not a string: {type(entry['caption']).__name__}"}
  record = {"image": os.path.join(root, entry["image"]), "caption": entry.get("caption", ""), "qa": []}
  if "conversations" in entry:
    turns = entry["conversations"]
    if not isinstance(turns, list) or not all(
        isinstance(t, dict) and isinstance(t.get("value", ""), str) for t in turns):
      return {"error": "conversations are not a list of {'from', 'value': string} turns"}
    record["qa"] = _conversation_pairs(turns)
    if not record["qa"]:
      return {"error": "conversations hold no human / gpt pair"}
  return record


def _array_entries(text: str, path: str) -> list[tuple[int, object]]:
  """(1-based line, object) for each element of a JSON array manifest.

  A JSON array is one value: past a syntax error its elements cannot be told apart, so the error
  refuses the file, naming the line.
  """
  decoder, entries, pos = json.JSONDecoder(), [], text.index("[") + 1
  while True:
    pos = _skip_space(text, pos)
    if text.startswith("]", pos):
      return entries
    try:
      entry, end = decoder.raw_decode(text, pos)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: the JSON array does not parse: {e.msg}") from None
    entries.append((_line_of(text, pos), entry))
    pos = _skip_space(text, end)
    if text.startswith(",", pos):
      pos += 1
    elif not text.startswith("]", pos):
      raise ValueError(f"{path}:{_line_of(text, pos)}: the JSON array does not parse: expected ',' or ']'")


def _line_of(text: str, pos: int) -> int:
  return text.count("\n", 0, pos) + 1


def _skip_space(text: str, pos: int) -> int:
  while pos < len(text) and text[pos] in " \t\r\n":
    pos += 1
  return pos


def _jsonl_entries(data: bytes, root: str) -> list[dict]:
  """One record a non-blank line; a line that is not UTF-8 or not JSON is a record with 'error'."""
  records = []
  for number, raw in enumerate(data.split(b"\n"), start=1):
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
      records.append({"error": f"line is not UTF-8: byte {raw[e.start]:#04x} at column {e.start + 1}",
                      "line": number})
      continue
    if not line.strip():
      continue
    try:
      record = parse_entry(json.loads(line), root)
    except json.JSONDecodeError as e:
      record = {"error": f"line is not JSON: {e.msg} at column {e.colno}"}
    records.append({**record, "line": number})
  return records


class ManifestSource(grain.sources.RandomAccessDataSource):
  """Records of a JSONL (or JSON array) manifest, images read lazily by the decode step.

  Each record holds 'line', the 1-based line of the manifest where it starts.
  """

  def __init__(self, path: str):
    if os.path.isdir(path):
      hint = (f"; it is a latent cache: train from it with --config.data.source=latents "
              f"--config.data.latents_dir={path}") if os.path.isfile(os.path.join(path, "cache_info.json")) else ""
      raise FileNotFoundError(f"config.data.manifest={path!r} is a directory, not a JSONL manifest{hint}")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config.data.manifest={path!r} does not exist")
    self._path = path
    root = os.path.dirname(os.path.abspath(path))
    with open(path, "rb") as f:
      data = f.read()
    if data.lstrip().startswith(b"["):
      try:
        text = data.decode("utf-8")
      except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"{path}:{line}: not UTF-8 "
                         f"(byte {data[e.start]:#04x}); a JSON array manifest must be UTF-8 throughout") from None
      self._records = [{**parse_entry(e, root), "line": n} for n, e in _array_entries(text, path)]
    else:
      self._records = _jsonl_entries(data, root)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: SupportsIndex) -> dict:  # grain passes numpy ints too.
    return {**self._records[index], "source": self._path, "index": int(index)}

  def __repr__(self) -> str:
    return f"ManifestSource({self._path!r}, {len(self)} records)"
