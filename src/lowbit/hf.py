"""A Hugging Face ``transformers`` model folder as a lowbit model (``--model path/to/folder``).

The folder is what ``model.save_pretrained(folder)`` writes: ``config.json`` and the weights as
``model.safetensors`` (a folder with only pickled ``pytorch_model.bin`` weights is refused: loading never
runs pickled code; ``save_pretrained`` writes safetensors by default). The model is built by
``transformers.AutoModel.from_pretrained(folder, local_files_only=True, use_safetensors=True)`` (no
download) and wrapped by :class:`FirstOutput`, whose ``forward(input_ids, attention_mask=None)`` returns
the model's first output: ``last_hidden_state`` for an encoder (BERT-style) or a base decoder, ``logits``
for a model with a head. ``transformers`` is optional and imported only here.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lowbit.errors import ConfigError


def is_hf_folder(spec: str) -> bool:
    """A folder holding a ``config.json``: a saved Hugging Face model."""
    path = Path(spec)
    return path.is_dir() and (path / "config.json").is_file()


class FirstOutput(nn.Module):
    """A ``transformers`` model that returns one tensor: its first output (``last_hidden_state`` or ``logits``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask)[0]


def load_hf(spec: str) -> nn.Module:
    """The model saved in folder ``spec`` (see the module docstring), in eval mode."""
    path = Path(spec)
    if not any(path.glob("*.safetensors")):
        raise ConfigError(f"--model {spec}: the folder has no .safetensors weights (lowbit does not load pickled "
                          "pytorch_model.bin files); save the model with model.save_pretrained(folder)")
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"--model {spec} is a Hugging Face model folder: it needs the transformers package "
                          "(pip install transformers)") from None
    try:
        model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True, use_safetensors=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ConfigError(f"--model {spec}: transformers cannot build a model from this folder "
                          f"({type(exc).__name__}: {first[:300]})") from None
    return FirstOutput(model).eval()


__all__ = ["FirstOutput", "is_hf_folder", "load_hf"]
