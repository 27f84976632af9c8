"""An image-text manifest as a grain data source: JSONL captions or LLaVA-style conversations.

Accepted, one record per JSONL line (or a JSON array of the same objects, as LLaVA ships):
  {"image": "rel/path.png", "caption": "a red circle"}
  {"image": "rel/path.png", "conversations": [{"from": "human", "value": "<image>\\nwhat colour?"},
                                               {"from": "gpt", "value": "red"}, ...]}
Image paths are relative to the manifest's directory. Each human turn followed by a gpt turn
becomes one question / answer pair. A line that does not parse stays a record that decodes as
corrupt, so it is counted like any other bad record instead of failing at start-up.
"""

from __future__ import annotations

import json
import os

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
  record = {"image": os.path.join(root, entry["image"]), "caption": entry.get("caption", ""), "qa": []}
  if "conversations" in entry:
    record["qa"] = _conversation_pairs(entry["conversations"])
    if not record["qa"]:
      return {"error": "conversations hold no human / gpt pair"}
  return record


class ManifestSource(grain.sources.RandomAccessDataSource):
  """Records of a JSONL (or JSON array) manifest, images read lazily by the decode step."""

  def __init__(self, path: str):
    if os.path.isdir(path):
      hint = (f"; it is a latent cache: train from it with --config.data.source=latents "
              f"--config.data.latents_dir={path}") if os.path.isfile(os.path.join(path, "cache_info.json")) else ""
      raise FileNotFoundError(f"config.data.manifest={path!r} is a directory, not a JSONL manifest{hint}")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config.data.manifest={path!r} does not exist")
    self._path = path
    root = os.path.dirname(os.path.abspath(path))
    with open(path, encoding="utf-8") as f:
      text = f.read()
    if text.lstrip().startswith("["):
      entries = [parse_entry(e, root) for e in json.loads(text)]
    else:
      entries = []
      for line in text.splitlines():
        if not line.strip():
          continue
        try:
          entries.append(parse_entry(json.loads(line), root))
        except json.JSONDecodeError as e:
          entries.append({"error": f"line is not JSON: {e}"})
    self._records = entries

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> dict:
    return {**self._records[index], "source": self._path, "index": int(index)}

  def __repr__(self) -> str:
    return f"ManifestSource({self._path!r}, {len(self)} records)"
