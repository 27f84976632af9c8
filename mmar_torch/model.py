"""MMARTorch: the unified model over transformers' Qwen2, with image generation and description.

Inputs are laid out as in mmar_jax (infer/generate_image.py, infer/describe.py): prompts left-
padded, positions restarting at 0 on each row's first real token; attention causal over text
and bidirectional inside an image (models/masks.py), passed to Qwen2 as a 4-D additive mask.

Generation (MAR): each image gets a random order of its N token positions, all masked at first;
over the AR steps the number still masked follows floor(N cos(pi/2 (k+1)/S)); each step runs the
image span after the prompt's KV cache (computed once, cropped back after every step, since the
image's keys change as tokens become known) and the diffusion sampler draws the tokens revealed.
Classifier-free guidance runs the empty-caption prompt `<|im_start|> <boi>` beside each caption.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import DynamicCache

from mmar_torch import diffusion
from mmar_torch.adapter import ImageAdapter
from mmar_torch.head import DiffusionHead
from mmar_torch.tokenizer import PatchTokenizer, images_from_pixels, pixels_from_images
from mmar_torch.vae import AutoencoderKL, KLTokenizer

ADAPTER_FILE, HEAD_FILE, MMAR_CONFIG = "mmar_adapter.safetensors", "mmar_head.safetensors", "mmar_config.json"
VAE_FILE = "mmar_vae.safetensors"
POSITIONS = "image_position_embedding"
PAD_MULTIPLE = 8  # As mmar_jax's prompts: padding lengths, not results, depend on it.


class ExportError(ValueError):
  """An export directory that does not hold what mmar_config.json says."""


def reveal_schedule(num_tokens: int, num_steps: int) -> list[int]:
  """Tokens still masked before each AR step and after the last: N down to 0 [MAR]."""
  steps = min(num_steps, num_tokens)
  remaining = [num_tokens]
  for k in range(steps - 1):
    target = math.floor(num_tokens * math.cos(math.pi / 2 * (k + 1) / steps))
    remaining.append(max(1, min(remaining[-1] - 1, target)))
  return remaining + [0]


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
  """(ids [b, l], mask [b, l] with 1 on real tokens), rows flush right."""
  length = -(-max(len(r) for r in rows) // PAD_MULTIPLE) * PAD_MULTIPLE
  ids = torch.full((len(rows), length), pad, dtype=torch.long)
  mask = torch.zeros((len(rows), length), dtype=torch.long)
  for i, r in enumerate(rows):
    if len(r):
      ids[i, length - len(r):], mask[i, length - len(r):] = torch.tensor(r), 1
  return ids, mask


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
  """[b, q, k] bool -> [b, 1, q, k] float: 0 where allowed, the dtype's minimum elsewhere."""
  return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[:, None]


def prompt_attention(mask: torch.Tensor, span: torch.Tensor | None = None) -> torch.Tensor:
  """[b, l, l] bool: causal over real tokens, bidirectional inside image spans (span id > 0), own key always."""
  length = mask.shape[1]
  causal = torch.tril(torch.ones(length, length, dtype=torch.bool, device=mask.device))[None]
  if span is not None:
    causal = causal | ((span[:, :, None] == span[:, None, :]) & (span > 0)[:, :, None])
  eye = torch.eye(length, dtype=torch.bool, device=mask.device)[None]
  return (causal & (mask[:, None, :] != 0)) | eye


class MMARTorch(torch.nn.Module):
  """The exported model: `backbone` (Qwen2ForCausalLM), `adapter`, `head`, and the settings."""

  def __init__(self, backbone, adapter: ImageAdapter, head: DiffusionHead, config: dict, tokenizer: Tokenizer,
               image_positions: torch.Tensor | None, vae: AutoencoderKL | None = None):
    super().__init__()
    self.backbone, self.adapter, self.head = backbone, adapter, head
    self.config, self.tokenizer = config, tokenizer
    t = config["tokenizer"]
    self.image_tokenizer = PatchTokenizer(**t) if vae is None else KLTokenizer(
        vae, t["image_size"], t["latent_patch"], t["scale_factor"])
    self.vae = vae
    self.ids = config["text"]["special_ids"]
    self.image_positions = None if image_positions is None else torch.nn.Parameter(image_positions,
                                                                                   requires_grad=False)

  # ---------------------------------------------------------------------------- loading

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, *, device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> MMARTorch:
    """Reads an `mmar-jax export-torch` directory; fails naming a missing or misshapen tensor."""
    path = os.fspath(path)
    config_file = os.path.join(path, MMAR_CONFIG)
    if not os.path.isfile(config_file):
      raise ExportError(f"{config_file}: not found; is {path} an `mmar-jax export-torch` directory?")
    config = json.loads(open(config_file).read())
    if config.get("format") != 1:
      raise ExportError(f"{config_file}: format={config.get('format')!r}, this mmar_torch reads format 1")
    backbone = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    width = backbone.config.hidden_size
    adapter = ImageAdapter(**config["adapter"])
    head = DiffusionHead(**config["head"], cond_width=width)
    adapter_state = _load(os.path.join(path, ADAPTER_FILE))
    positions = adapter_state.pop(POSITIONS, None)
    if config["adapter"]["image_position_embedding"]:
      _check_shape(ADAPTER_FILE, POSITIONS, positions, (config["tokenizer"]["num_tokens"], width))
    _load_state(adapter, adapter_state, ADAPTER_FILE)
    _load_state(head, _load(os.path.join(path, HEAD_FILE)), HEAD_FILE)
    tokenizer = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    vae = None
    if config["tokenizer"]["kind"] == "kl16":  # float32 whatever `dtype`: the VAE is small and frozen.
      vae = AutoencoderKL(**config["tokenizer"]["vae"])
      _load_state(vae, _load(os.path.join(path, VAE_FILE)), VAE_FILE)
      vae = vae.to(device).eval()
    model = cls(backbone, adapter.to(device, dtype).eval(), head.to(device).eval(), config, tokenizer,
                None if positions is None else positions.to(device, dtype), vae)
    return model

  @property
  def device(self) -> torch.device:
    return self.backbone.device

  @property
  def dtype(self) -> torch.dtype:
    return self.backbone.dtype

  # ---------------------------------------------------------------------------- pieces

  def embed_image(self, tokens: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """[b, n, c] tokens, [b, n] known -> [b, n, d]: adapted where known, the <mask> row elsewhere."""
    adapted = self.adapter(tokens.to(self.dtype), known)
    table = self.backbone.get_input_embeddings().weight
    mask_embedding = table[self.config["text"]["mask_embedding_row"]]
    x = torch.where(known[..., None], adapted, mask_embedding.to(adapted.dtype))
    if self.image_positions is not None:
      x = x + self.image_positions.to(x.dtype)
    return x

  @torch.no_grad()
  def text_logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 logits [b, l, v] of left-padded text, positions from each row's first real token."""
    positions = torch.clamp(torch.cumsum(mask, -1) - 1, min=0)
    out = self.backbone(input_ids=ids.to(self.device), position_ids=positions.to(self.device),
                        attention_mask=additive(prompt_attention(mask.to(self.device)), self.dtype))
    return out.logits.float()

  def _text(self, text: str) -> list[int]:
    return self.tokenizer.encode(text, add_special_tokens=False).ids

  # ---------------------------------------------------------------------------- generation

  @torch.no_grad()
  def generate_tokens(self, caption_ids: Sequence[Sequence[int]], *, cfg_scale: float | None = None,
                      num_steps: int | None = None, sampling_steps: int | None = None,
                      temperature: float | None = None, sampler: str | None = None, ddim_eta: float | None = None,
                      cfg_schedule: str | None = None, generator: torch.Generator | None = None,
                      order: torch.Tensor | None = None, noise: diffusion.NoiseFn | None = None) -> torch.Tensor:
    """Image tokens [b, n, c] float32 for captions given as token ids (no special tokens).

    Settings default to mmar_config.json's. `order` [b, n] (each row a permutation: the token
    revealed r-th is order[b, r]) and `noise` (shape -> standard normal) replace the random
    draws, e.g. to reproduce another implementation's sample exactly.
    """
    d = self.config["diffusion"]
    cfg_scale = d["cfg_scale"] if cfg_scale is None else cfg_scale
    num_steps = d["num_generation_steps"] if num_steps is None else num_steps
    sampling_steps = d["num_sampling_steps"] if sampling_steps is None else sampling_steps
    temperature = d["temperature"] if temperature is None else temperature
    sampler, ddim_eta = sampler or d["sampler"], d["ddim_eta"] if ddim_eta is None else ddim_eta
    cfg_schedule = cfg_schedule or d["cfg_schedule"]
    ids, device = self.ids, self.device
    b, n = len(caption_ids), self.config["tokenizer"]["num_tokens"]
    channels = self.config["tokenizer"]["token_dim"]
    guided = float(cfg_scale) != 1.0
    rows = [[ids["im_start"], *c, ids["boi"]] for c in caption_ids]
    rows += [[ids["im_start"], ids["boi"]]] * (b if guided else 0)
    prompt, mask = (t.to(device) for t in left_pad(rows, ids["pad"]))
    length = prompt.shape[1]

    cache = DynamicCache()
    self.backbone.model(input_ids=prompt, position_ids=torch.clamp(torch.cumsum(mask, -1) - 1, min=0),
                        attention_mask=additive(prompt_attention(mask), self.dtype), past_key_values=cache,
                        use_cache=True)
    next_position = mask.sum(-1)
    # The image after the prompt: every image query sees every real prompt key and the whole image.
    see = torch.cat([mask, torch.ones(len(rows), n, dtype=mask.dtype, device=device)], 1) != 0
    image_attention = additive(see[:, None, :].expand(-1, n, -1), self.dtype)
    positions = next_position[:, None] + torch.arange(n, device=device)

    if order is None:
      order = torch.stack([torch.randperm(n, generator=generator) for _ in range(b)])
    order = order.to(device)
    rank = torch.argsort(order, dim=-1)
    if noise is None:
      noise = lambda shape: torch.randn(shape, generator=generator)  # noqa: E731
    schedule = diffusion.Schedule.create(d["schedule"], d["num_train_steps"], sampling_steps)
    remaining = reveal_schedule(n, num_steps)
    tokens = torch.zeros(b, n, channels, device=device)
    for before, after in zip(remaining[:-1], remaining[1:]):
      known = rank >= before
      both = (lambda a: torch.cat([a, a])) if guided else (lambda a: a)  # noqa: E731
      out = self.backbone.model(inputs_embeds=self.embed_image(both(tokens), both(known)),
                                position_ids=positions, attention_mask=image_attention, past_key_values=cache,
                                use_cache=True)
      cache.crop(-n)  # Back to the prompt's keys: the image's change as tokens become known.
      slots = order[:, after:before]  # This step reveals ranks [after, before).
      hidden = out.last_hidden_state
      pick = lambda h: torch.gather(h, 1, slots[..., None].expand(-1, -1, h.shape[-1]))  # noqa: E731
      z = pick(hidden[:b]).reshape(-1, hidden.shape[-1])
      z_uncond = pick(hidden[b:]).reshape(-1, hidden.shape[-1]) if guided else None
      scale = diffusion.linear_cfg_scale(cfg_scale, n - after, n, cfg_schedule)
      new = diffusion.sample(self.head, z, lambda shape: noise((b, before - after, channels)).reshape(shape),
                             schedule=schedule, prediction=d["prediction"], method=sampler, cfg_scale=scale,
                             z_uncond=z_uncond, temperature=temperature, eta=ddim_eta)
      tokens.scatter_(1, slots[..., None].expand(-1, -1, channels), new.reshape(b, before - after, channels))
    return tokens

  def generate_images(self, prompts: Sequence[str], **settings) -> list:
    """PIL images for text prompts; keyword settings as `generate_tokens` (defaults from the export)."""
    tokens = self.generate_tokens([self._text(p) for p in prompts], **settings)
    return images_from_pixels(self.image_tokenizer.decode(tokens))

  # ---------------------------------------------------------------------------- understanding

  @torch.no_grad()
  def describe_tokens(self, image_tokens: torch.Tensor, question_ids: Sequence[Sequence[int]], *,
                      max_new_tokens: int = 32, temperature: float = 0.0,
                      generator: torch.Generator | None = None) -> list[list[int]]:
    """Answer ids (cut before `<|im_end|>`) for clean image tokens [b, n, c] and question ids."""
    ids, device = self.ids, self.device
    b, n = image_tokens.shape[:2]
    if len(question_ids) != b:
      raise ValueError(f"{len(question_ids)} questions for {b} images: give one per image")
    rows = [[ids["boi"], *[ids["mask"]] * n, ids["eoi"], *q] for q in question_ids]
    prompt, mask = (t.to(device) for t in left_pad(rows, ids["pad"]))
    length = prompt.shape[1]
    starts = length - torch.tensor([len(r) for r in rows], device=device)
    slots = starts[:, None] + 1 + torch.arange(n, device=device)
    x = self.backbone.get_input_embeddings()(prompt)
    adapted = self.embed_image(image_tokens.to(device), torch.ones(b, n, dtype=torch.bool, device=device))
    x = x.scatter(1, slots[..., None].expand(-1, -1, x.shape[-1]), adapted.to(x.dtype))
    span = torch.zeros_like(prompt).scatter(1, slots, 1)
    cache = DynamicCache()
    out = self.backbone(inputs_embeds=x, position_ids=torch.clamp(torch.cumsum(mask, -1) - 1, min=0),
                        attention_mask=additive(prompt_attention(mask, span), self.dtype), past_key_values=cache,
                        use_cache=True, logits_to_keep=1)
    position, valid = mask.sum(-1), mask != 0
    answers = torch.full((b, max_new_tokens), ids["pad"], dtype=torch.long)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    for i in range(max_new_tokens):
      logits = out.logits[:, -1].float()
      if temperature == 0:
        token = torch.argmax(logits, -1)
      else:
        probs = torch.softmax(logits / temperature, -1)
        token = torch.multinomial(probs.cpu(), 1, generator=generator)[:, 0].to(device)
      token = torch.where(done, ids["pad"], token)
      answers[:, i] = token.cpu()
      done = done | (token == ids["im_end"])
      if bool(done.all()) or i == max_new_tokens - 1:
        break
      valid = torch.cat([valid, torch.ones(b, 1, dtype=torch.bool, device=device)], 1)
      out = self.backbone(input_ids=token[:, None], position_ids=position[:, None], past_key_values=cache,
                          attention_mask=additive(valid[:, None, :], self.dtype), use_cache=True)
      position = position + 1
    result = []
    for row in answers.tolist():
      result.append(row[:row.index(ids["im_end"])] if ids["im_end"] in row else row)
    return result

  def describe(self, images, questions: Sequence[str], *, max_new_tokens: int = 32, temperature: float = 0.0,
               generator: torch.Generator | None = None) -> list[str]:
    """Answers (strings) to one question about each PIL image ('' asks for a caption)."""
    pixels = pixels_from_images(images, self.config["tokenizer"]["image_size"])
    tokens = self.image_tokenizer.encode(pixels)
    answers = self.describe_tokens(tokens, [self._text(q) for q in questions], max_new_tokens=max_new_tokens,
                                   temperature=temperature, generator=generator)
    return [self.tokenizer.decode(a, skip_special_tokens=True) for a in answers]


def _load(file: str) -> dict[str, torch.Tensor]:
  if not os.path.isfile(file):
    raise ExportError(f"{file}: not found (export-torch writes it)")
  return load_file(file)


def _check_shape(file: str, name: str, tensor: torch.Tensor | None, shape: tuple[int, ...]) -> None:
  if tensor is None:
    raise ExportError(f"{file}: tensor {name} is missing")
  if tuple(tensor.shape) != tuple(shape):
    raise ExportError(f"{file}: tensor {name} has shape {tuple(tensor.shape)}, mmar_config.json implies {tuple(shape)}")


def _load_state(module: torch.nn.Module, state: dict[str, torch.Tensor], file: str) -> None:
  expected = module.state_dict()
  for name, tensor in expected.items():
    _check_shape(file, name, state.get(name), tuple(tensor.shape))
  unexpected = sorted(set(state) - set(expected))
  if unexpected:
    raise ExportError(f"{file}: unexpected tensors {unexpected[:8]}")
  module.load_state_dict(state)
