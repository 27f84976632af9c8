"""MMAR in PyTorch: the model mmar_jax trained, read from an `mmar-jax export-torch` directory.

    from mmar_torch import MMARTorch
    model = MMARTorch.from_pretrained("exported/", device="cpu", dtype=torch.float32)
    images = model.generate_images(["a red circle top left"], cfg_scale=3.0, generator=torch.Generator().manual_seed(0))
    answers = model.describe(images, ["what colour is the shape?"], max_new_tokens=8)

Needs only torch, transformers, safetensors, tokenizers, numpy and Pillow: no JAX. The backbone
is transformers' Qwen2; the adapter, the diffusion head, the noise schedule and samplers and
the patch tokenizer are here, each a short file that follows its mmar_jax twin.
"""

from mmar_torch.model import MMARTorch

__all__ = ["MMARTorch"]
