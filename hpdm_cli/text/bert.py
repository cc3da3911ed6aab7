"""A BERT encoder's forward pass in plain torch, reading a Hugging Face `BertModel` directory.

The MiniLM-L6 text encoder (`encoders.MiniLMEncoder`) is a 6-layer BERT. Importing transformers
to build it cost 9.3 s of a CPU `hpdm sample` call of under a minute (docs/benchmarks.md, "The
packaged model on the CPU", its start-up figure); this module computes the same last hidden states (post-LayerNorm BERT: embeddings, then
per layer self-attention and a GELU MLP, each added to its input and layer-normalised) from the
directory's config.json and model.safetensors, with the `tokenizers` library's fast tokenizer from
its tokenizer.json. tests/test_text.py checks both against transformers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F


class BertForward(torch.nn.Module):
    """The last hidden states [B, S, hidden] of a post-LayerNorm BERT encoder (absolute positions, erf GELU)."""

    def __init__(self, model_dir: str | Path):
        super().__init__()
        from safetensors.torch import load_file
        path = Path(model_dir)
        cfg = json.loads((path / "config.json").read_text())
        if cfg.get("model_type") != "bert" or cfg.get("hidden_act", "gelu") != "gelu" or \
                cfg.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: a BERT with absolute positions and GELU expected, found {cfg.get('model_type')!r}")
        self.hidden_size = int(cfg["hidden_size"])
        self.heads = int(cfg["num_attention_heads"])
        self.layers = int(cfg["num_hidden_layers"])
        self.eps = float(cfg.get("layer_norm_eps", 1e-12))
        w = load_file(str(path / "model.safetensors"))
        w = {k.removeprefix("bert."): v for k, v in w.items()}
        self.weights = torch.nn.ParameterDict({k.replace(".", "/"): torch.nn.Parameter(v, requires_grad=False)
                                               for k, v in w.items() if v.is_floating_point()})

    def _w(self, name: str) -> torch.Tensor:
        return self.weights[name.replace(".", "/")]

    def _linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self._w(f"{name}.weight"), self._w(f"{name}.bias"))

    def _norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(x, (self.hidden_size,), self._w(f"{name}.weight"), self._w(f"{name}.bias"), self.eps)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Token ids and mask [B, S] (1 = a token, 0 = padding) -> last hidden states [B, S, hidden]."""
        B, S = input_ids.shape
        positions = torch.arange(S, device=input_ids.device)
        x = (F.embedding(input_ids, self._w("embeddings.word_embeddings.weight"))
             + F.embedding(positions, self._w("embeddings.position_embeddings.weight"))
             + self._w("embeddings.token_type_embeddings.weight")[0])
        x = self._norm(x, "embeddings.LayerNorm")
        d = self.hidden_size // self.heads
        # padded keys get the dtype's lowest value added to their logits, as transformers' BERT does
        bias = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * torch.finfo(x.dtype).min
        for i in range(self.layers):
            p = f"encoder.layer.{i}"
            q, k, v = (self._linear(x, f"{p}.attention.self.{n}").view(B, S, self.heads, d).transpose(1, 2)
                       for n in ("query", "key", "value"))
            att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d) + bias, dim=-1) @ v
            att = self._linear(att.transpose(1, 2).reshape(B, S, -1), f"{p}.attention.output.dense")
            x = self._norm(att + x, f"{p}.attention.output.LayerNorm")
            h = self._linear(F.gelu(self._linear(x, f"{p}.intermediate.dense")), f"{p}.output.dense")
            x = self._norm(h + x, f"{p}.output.LayerNorm")
        return x


def bert_tokenizer(model_dir: str | Path):
    """The directory's fast tokenizer (tokenizer.json), with its stored truncation and padding switched off."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


def tokenize(tok, texts: list[str], *, max_length: int, pad_to: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [B, S] of `texts`, as transformers' tokenizer call with truncation=True.

    Truncated to `max_length` tokens ([CLS] and [SEP] included), padded to `pad_to` (None: the
    batch's longest).
    """
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]")
    tok.enable_padding(pad_id=0 if pad_id is None else pad_id, pad_token="[PAD]", length=pad_to)
    try:
        enc = tok.encode_batch(list(texts))
    finally:
        tok.no_truncation()
        tok.no_padding()
    ids = torch.tensor([e.ids for e in enc], dtype=torch.long)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)
    return ids, mask
