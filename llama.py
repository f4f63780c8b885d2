"""LLaMA (Touvron et al., 2023, arXiv:2302.13971) in tinygrad.

Read this file next to the paper: the model follows §2.2 top to bottom, in the shape of Meta's v1 `model.py`
(a ModelArgs dataclass, one small class per block, Meta's weight names so real checkpoints map by name).
"""
from __future__ import annotations
import math
from dataclasses import dataclass, fields
import numpy as np
from tinygrad import Tensor, UOp, dtypes, nn
from tinygrad.nn.state import get_parameters

# ***** configuration *****

@dataclass
class ModelArgs:
  dim: int = 4096
  n_layers: int = 32
  n_heads: int = 32
  n_kv_heads: int | None = None        # None: as many K/V heads as query heads (plain multi-head attention)
  vocab_size: int = 32000
  multiple_of: int = 256               # the SwiGLU hidden size is rounded up to a multiple of this
  ffn_dim_multiplier: float | None = None
  hidden_dim: int | None = None        # explicit FFN size; overrides the rule (real checkpoints need it)
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  max_seq_len: int = 2048
  tie_embeddings: bool = False         # output layer shares the token embedding matrix (llama2.c, SmolLM)

  def __post_init__(self):
    if self.n_kv_heads is None: self.n_kv_heads = self.n_heads
    if self.dim % self.n_heads: raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
    if self.n_heads % self.n_kv_heads: raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
    if self.head_dim % 2: raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

  @property
  def head_dim(self) -> int: return self.dim // self.n_heads

  @property
  def ffn_hidden(self) -> int:
    # §2.2 SwiGLU: "a dimension of 2/3·4d instead of 4d as in PaLM", Meta's rounding rule
    if self.hidden_dim is not None: return self.hidden_dim
    hidden = int(2 * 4 * self.dim / 3)
    if self.ffn_dim_multiplier is not None: hidden = int(self.ffn_dim_multiplier * hidden)
    return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

  def num_params(self) -> int:
    """Parameter count from the config alone, nothing allocated."""
    d, kv = self.dim, self.n_kv_heads * self.head_dim
    attn = d * d * 2 + d * kv * 2                      # wq, wo and wk, wv
    ffn = 3 * d * self.ffn_hidden                      # w1, w2, w3
    per_layer = attn + ffn + 2 * d                     # + attention_norm, ffn_norm
    embed = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.n_layers * per_layer + embed + d       # + final norm

  def to_dict(self) -> dict: return {f.name: getattr(self, f.name) for f in fields(self)}

  @classmethod
  def from_dict(cls, d: dict) -> ModelArgs:
    known = {f.name for f in fields(cls)}
    if unknown := set(d) - known: raise ValueError(f"unknown ModelArgs fields: {sorted(unknown)}")
    return cls(**d)

# Table 2 of the paper: the four released models (vocab 32000, context 2048). norm_eps as in Meta's params.json.
PRESETS: dict[str, ModelArgs] = {
  "7B":  ModelArgs(dim=4096, n_layers=32, n_heads=32),
  "13B": ModelArgs(dim=5120, n_layers=40, n_heads=40),
  "33B": ModelArgs(dim=6656, n_layers=60, n_heads=52),
  "65B": ModelArgs(dim=8192, n_layers=80, n_heads=64),
  # small configs that train on a laptop CPU; vocab set by the tokenizer at train time
  "tiny":  ModelArgs(dim=64,  n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=32, max_seq_len=256, norm_eps=1e-5),
  "small": ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=2048, multiple_of=32, max_seq_len=256, norm_eps=1e-5),
  # the size of Karpathy's stories15M (llama2.c)
  "15M":   ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, multiple_of=32, max_seq_len=256, norm_eps=1e-5),
}

# ***** §2.2 Pre-normalization [GPT3]: RMSNorm on the input of each sub-layer *****
# tinygrad's nn.RMSNorm is exactly Meta's: x * rsqrt(mean(x²) + eps), computed in float32, times a learned gain.
RMSNorm = nn.RMSNorm

# ***** §2.2 Rotary Embeddings [GPTNeo] *****

def precompute_freqs(head_dim: int, max_len: int, theta: float = 10000.0) -> Tensor:
  """cos and sin of m·θ_i for positions m < max_len, θ_i = theta^(-2i/head_dim): shape (max_len, head_dim/2, 2).
  Built in numpy so it is a real buffer: a table made only from arange would be recomputed inside every kernel."""
  inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
  angles = np.outer(np.arange(max_len, dtype=np.float64), inv_freq)
  return Tensor(np.stack([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32))

def apply_rotary_emb(x: Tensor, freqs: Tensor) -> Tensor:
  """Rotate each interleaved pair (x[2i], x[2i+1]) of every head by the angle m·θ_i (Meta's convention:
  the pair is the complex number x[2i] + j·x[2i+1], multiplied by e^{j·m·θ_i}).
  x: (batch, seq, heads, head_dim), freqs: (seq, head_dim/2, 2) for the positions of x."""
  xr = x.float().reshape(*x.shape[:-1], -1, 2)
  a, b = xr[..., 0], xr[..., 1]
  cos, sin = freqs[..., 0].reshape(1, x.shape[1], 1, -1), freqs[..., 1].reshape(1, x.shape[1], 1, -1)
  return Tensor.stack(a * cos - b * sin, a * sin + b * cos, dim=-1).reshape(x.shape).cast(x.dtype)

# ***** Causal multi-head attention, grouped-query heads, KV cache *****

class Attention:
  def __init__(self, args: ModelArgs):
    self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
    self.wq = nn.Linear(args.dim, args.n_heads * self.head_dim, bias=False)
    self.wk = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
    self.wv = nn.Linear(args.dim, self.n_kv_heads * self.head_dim, bias=False)
    self.wo = nn.Linear(args.n_heads * self.head_dim, args.dim, bias=False)
    self.cache_kv: Tensor | None = None   # (2, batch, kv_heads, max_context, head_dim), made by Transformer.init_cache

  def __call__(self, x: Tensor, start_pos: int | UOp, freqs: Tensor) -> Tensor:
    bsz, seqlen, _ = x.shape
    xq = self.wq(x).reshape(bsz, seqlen, self.n_heads, self.head_dim)
    xk = self.wk(x).reshape(bsz, seqlen, self.n_kv_heads, self.head_dim)
    xv = self.wv(x).reshape(bsz, seqlen, self.n_kv_heads, self.head_dim)
    xq, xk = apply_rotary_emb(xq, freqs), apply_rotary_emb(xk, freqs)
    xq, xk, xv = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)   # (batch, heads, seq, head_dim)

    if self.cache_kv is None:   # training, or a one-shot forward: attend within this sequence only
      keys, values, mask = xk, xv, None
    else:                       # incremental decoding: write this chunk at start_pos, attend to everything so far
      # store-then-read as one graph (tinygrad's own llm does this): no extra realize, and it replays under TinyJit
      store = self.cache_kv[:, :bsz, :, start_pos:start_pos+seqlen].uop.store(Tensor.stack(xk, xv).cast(self.cache_kv.dtype).uop)
      cache = Tensor(self.cache_kv.uop.after(store))
      keys, values = cache[0, :bsz, :, 0:start_pos+seqlen], cache[1, :bsz, :, 0:start_pos+seqlen]
      # query i sits at position start_pos+i and may see keys at positions ≤ start_pos+i
      mask = Tensor.ones(seqlen, seqlen, dtype=dtypes.bool, device=xq.device).tril().pad(((0, 0), (start_pos, 0)), value=True) if seqlen > 1 else None

    keys, values = keys.cast(xq.dtype), values.cast(xq.dtype)
    if seqlen == 1 and self.cache_kv is not None: out = decode_attention(xq, keys, values)
    else:  # GQA: each K/V head serves n_heads/n_kv_heads consecutive query heads (Meta's repeat_kv)
      out = xq.scaled_dot_product_attention(keys, values, attn_mask=mask, is_causal=mask is None and seqlen > 1,
                                            enable_gqa=self.n_kv_heads != self.n_heads)
    return self.wo(out.transpose(1, 2).reshape(bsz, seqlen, -1))

def decode_attention(q: Tensor, keys: Tensor, values: Tensor) -> Tensor:
  """softmax(q·kᵀ/√d)·v for one query token, q (B, H, 1, d), keys/values (B, KV, S, d): the same math as
  scaled_dot_product_attention, written for decoding. Query heads are grouped onto their K/V head by a reshape (no
  repeated copy of the cache), and each dot product over d is summed in 8 independent lanes first: tinygrad's CPU code
  for a plain reduction is one dependent chain per score, and S is symbolic so it cannot be unrolled instead.
  Measured 3.2x faster than scaled_dot_product_attention at S=1000 for SmolLM2's 9/3 heads of 64 (1.65 → 0.52 ms)."""
  (b, h, _, d), kv = q.shape, keys.shape[1]
  lanes = 8 if d % 8 == 0 else 1
  qg = q.reshape(b, kv, h // kv, 1, lanes, d // lanes)
  scores = (qg * keys.reshape(b, kv, 1, -1, lanes, d // lanes)).sum(-1).sum(-1) / math.sqrt(d)   # (B, KV, group, S)
  out = (scores.float().softmax(-1).cast(q.dtype).unsqueeze(-1) * values.unsqueeze(2)).sum(-2)   # (B, KV, group, d)
  return out.reshape(b, h, 1, d)

# ***** §2.2 SwiGLU activation function [PaLM] *****

class FeedForward:
  def __init__(self, dim: int, hidden_dim: int):
    self.w1 = nn.Linear(dim, hidden_dim, bias=False)   # gate
    self.w2 = nn.Linear(hidden_dim, dim, bias=False)   # down projection
    self.w3 = nn.Linear(dim, hidden_dim, bias=False)   # up projection

  def __call__(self, x: Tensor) -> Tensor:
    # contiguous_backward() gives the gradients of the two projections a buffer of their own: without it tinygrad fuses
    # silu's derivative into the backward matmuls and recomputes it for every output column (train step 1.5 → 0.9 s)
    return self.w2(self.w1(x).contiguous_backward().silu() * self.w3(x).contiguous_backward())

# ***** the block and the model *****

class TransformerBlock:
  def __init__(self, args: ModelArgs):
    self.attention = Attention(args)
    self.feed_forward = FeedForward(args.dim, args.ffn_hidden)
    self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
    self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

  def __call__(self, x: Tensor, start_pos: int | UOp, freqs: Tensor) -> Tensor:
    # §2.2 pre-normalization: normalise the input of each sub-layer, not its output
    h = x + self.attention(self.attention_norm(x), start_pos, freqs)
    # .contiguous() marks the block boundary: without it decode fuses badly (TINYGRAD_NOTES trap 6)
    return (h + self.feed_forward(self.ffn_norm(h))).contiguous()

class Transformer:
  def __init__(self, args: ModelArgs, init: bool = True):
    """init=False leaves the weights as lazy placeholders that are never realised, for loaders that overwrite them
    (the random init of a 7B model would cost a whole model's worth of memory for nothing)."""
    self.args = args
    self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
    self.layers = [TransformerBlock(args) for _ in range(args.n_layers)]
    self.norm = RMSNorm(args.dim, eps=args.norm_eps)
    self.output = None if args.tie_embeddings else nn.Linear(args.dim, args.vocab_size, bias=False)
    # table for twice the context, as Meta does, so decoding a little past max_seq_len still has angles
    self.freqs = precompute_freqs(args.head_dim, args.max_seq_len * 2, args.rope_theta)
    self.checkpoint_activations = False   # §2.4, set by train.py: recompute each block's activations in the backward pass
    if init: self._init_weights()

  def _init_weights(self):
    """Training from scratch as nanoGPT / llama2.c: N(0, 0.02) for every matrix, residual projections (wo, w2)
    scaled by 1/sqrt(2·n_layers) so the residual stream does not grow with depth; norms start at 1."""
    std = 0.02
    self.tok_embeddings.weight = Tensor.normal(self.args.vocab_size, self.args.dim, std=std)
    if self.output is not None: self.output.weight = Tensor.normal(*self.output.weight.shape, std=std)
    for layer in self.layers:
      for lin in (layer.attention.wq, layer.attention.wk, layer.attention.wv, layer.feed_forward.w1, layer.feed_forward.w3):
        lin.weight = Tensor.normal(*lin.weight.shape, std=std)
      for lin in (layer.attention.wo, layer.feed_forward.w2):
        lin.weight = Tensor.normal(*lin.weight.shape, std=std / math.sqrt(2 * self.args.n_layers))
    # random init is lazy: realise now, in a fixed order, so a seed gives the same model every time (trap 2)
    Tensor.realize(*get_parameters(self))

  def init_cache(self, max_batch: int = 1, max_context: int | None = None, dtype=None):
    """Allocate the KV cache for incremental decoding (§2.4 notes the cache is what makes sampling cheap).
    After this, calls at start_pos write into the cache; before it, every call is a one-shot forward."""
    ctx = max_context or self.args.max_seq_len
    dtype = dtype or self.tok_embeddings.weight.dtype
    for layer in self.layers:
      a = layer.attention
      # the cache lives where wk lives; on several devices (§2.4 parallel section below) it is split by kv-heads
      # under tensor parallel (wk split by rows), else replicated
      w = a.wk.weight
      multi = isinstance(w.device, tuple)
      cache = Tensor.zeros(2, max_batch, a.n_kv_heads, ctx, a.head_dim, dtype=dtype, device=None if multi else w.device)
      if multi: cache = cache.shard(w.device, 2 if w.uop.axis == 0 else None)
      layer.attention.cache_kv = cache.contiguous().realize()

  def drop_cache(self):
    for layer in self.layers: layer.attention.cache_kv = None

  def __call__(self, tokens: Tensor, start_pos: int | UOp = 0) -> Tensor:
    """tokens (batch, seq) → logits (batch, seq, vocab). start_pos is where tokens begin in the KV cache
    (an int, or a bound symbolic variable so one compiled decode step serves every position)."""
    _, seqlen = tokens.shape
    h = self.tok_embeddings(tokens)
    freqs = self.freqs[start_pos:start_pos+seqlen]
    for layer in self.layers:
      # recomputation serves training only: a decoding step writes the KV cache at start_pos
      h = checkpointed_block(layer, h, freqs) if self.checkpoint_activations and layer.attention.cache_kv is None else layer(h, start_pos, freqs)
    h = self.norm(h)
    return (h @ self.tok_embeddings.weight.T if self.output is None else self.output(h)).float()

# ***** checkpoints in and out *****
# One entry point, load(), tells the five formats apart by what is at the path. Each format's reader yields
# (Meta name, lazy tensor) pairs that _build realises on the device one at a time, so loading needs about the
# model's own size in memory (plus one tensor), never a second full copy.
import io, json, mmap, os, pathlib, re, shutil, struct, tempfile, zipfile
from typing import Callable, Iterable, Iterator
from tinygrad import Device
from tinygrad.nn.state import get_state_dict, safe_load, safe_load_metadata, safe_save, torch_load, TensorIO

class CheckpointError(ValueError):
  """A checkpoint that is missing, truncated, corrupt or of a format load() does not know; the message is one sentence."""

# what a format reader hands back: the config, the weights under Meta's names, how to make the tokenizer (or None),
# and the files the weights are read from
Weights = Iterable[tuple[str, Tensor]]
Reader = tuple[ModelArgs, Weights, Callable[[], object] | None, list[pathlib.Path]]

def _weight_shapes(model: Transformer) -> dict[str, tuple[int, ...]]:
  """The learned tensors by Meta name: the state dict without the RoPE table and the KV cache."""
  return {k: tuple(v.shape) for k, v in get_state_dict(model).items() if k != "freqs" and not k.endswith("cache_kv")}

def _drop_pages(files: list[pathlib.Path]):
  """tinygrad reads DISK tensors through an mmap of the file, so every page read stays in this process's resident set
  (clean and reclaimable, but counted) until the file is closed; without this a model loaded from one file peaks at
  twice its size in RSS. MADV_DONTNEED unmaps what was read; the page cache keeps the data."""
  for f in files:
    dev = Device[f"DISK:{f.resolve()}"]
    if getattr(dev, "size", None) is not None and hasattr(dev, "mem"): dev.mem.madvise(mmap.MADV_DONTNEED)

def _build(args: ModelArgs, weights: Weights, files: list[pathlib.Path], dtype, devices: tuple, source: pathlib.Path) -> Transformer:
  model = Transformer(args, init=False)
  check_parallel(args, len(devices), "tp")
  want, seen = _weight_shapes(model), set()
  for name, t in weights:
    if name not in want: raise CheckpointError(f"{source} holds a tensor '{name}' that this LLaMA configuration does not have")
    if tuple(t.shape) != want[name]: raise CheckpointError(f"{source}: '{name}' has shape {tuple(t.shape)} but the config implies {want[name]}")
    t = place(name, t, devices, "tp")      # off the disk first (disk tensors cannot be cast in place); split under tp
    if t.dtype == dtypes.uint16:           # bfloat16 carried as its bits (see _bits): keep it, or widen exactly to float32
      t = t.contiguous().realize().bitcast(dtypes.bfloat16) if dtype in (None, dtypes.bfloat16) else (t.cast(dtypes.uint32) << 16).bitcast(dtypes.float32)
    if dtype is not None: t = t.cast(dtype)
    *parents, leaf = name.split(".")
    obj = model
    for part in parents: obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    setattr(obj, leaf, t.contiguous().realize())
    seen.add(name)
    _drop_pages(files)
  if missing := sorted(set(want) - seen): raise CheckpointError(f"{source} lacks {len(missing)} weight(s) the config needs, e.g. '{missing[0]}'")
  model.freqs = place("freqs", model.freqs, devices, "tp").realize()
  return model

def _bits(t: Tensor) -> Tensor:
  """bfloat16 weights travel as raw uint16 bits until _build: copies, permutations and concatenations then compile
  as integer kernels, which every backend has (Debian 12's clang 14 cannot compile CPU kernels that touch __bf16)."""
  return t.bitcast(dtypes.uint16) if t.dtype == dtypes.bfloat16 else t

def _safetensors(path: pathlib.Path) -> dict[str, Tensor]:
  """Lazy views into a .safetensors file on disk, after checking that the header's offsets lie inside the file."""
  if not path.is_file(): raise CheckpointError(f"{path} is missing")
  disk, data_start, header = safe_load_metadata(path)
  end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
  if data_start + end > disk.shape[0]: raise CheckpointError(f"{path} is truncated: its header needs {data_start + end} bytes, the file has {disk.shape[0]}")
  return {k: _bits(t) for k, t in safe_load(disk).items()}

def _beside(*candidates: pathlib.Path) -> Callable[[], object] | None:
  """The first tokenizer file that exists among the candidates, loaded through data.load_tokenizer."""
  for c in candidates:
    if c.is_file():
      import data
      return lambda: data.load_tokenizer(str(c))
  return None

# ----- our own format: config.json (ModelArgs) + model.safetensors (Meta names) + tokenizer.model -----

def _read_ours(path: pathlib.Path, device) -> Reader:
  args = ModelArgs.from_dict(json.loads((path / "config.json").read_text()))
  return args, _safetensors(path / "model.safetensors").items(), _beside(path / "tokenizer.model"), [path / "model.safetensors"]

def save(model: Transformer, path, tokenizer=None) -> None:
  """Write `model` (and a sentencepiece tokenizer) as our own format directory. A new directory appears at once
  (built in a temp dir, then renamed); an existing one (train.py's out/, which also holds training state) keeps its
  other files and has each of ours replaced atomically."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir(): raise CheckpointError(f"{path} exists and is not a directory")
  path.parent.mkdir(parents=True, exist_ok=True)
  weights = {k: v for k, v in get_state_dict(model).items() if k in _weight_shapes(model)}
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  try:
    (tmp / "config.json").write_text(json.dumps(model.args.to_dict(), indent=2) + "\n")
    safe_save(weights, str(tmp / "model.safetensors"))
    if tokenizer is not None: tokenizer.save(str(tmp / "tokenizer.model"))
    if not path.exists(): os.replace(tmp, path)
    else:
      for f in tmp.iterdir(): os.replace(f, path / f.name)
  finally: shutil.rmtree(tmp, ignore_errors=True)

# ----- Karpathy's llama2.c .bin: float32 arrays, each weight kind stacked across layers -----
# legacy (version 0): 7 int32 header; version 1: 256-byte header starting with the magic "ak42" (layouts in
# llama2.c export.py, summarised in shared/fixtures/README.md)
_LLAMA2C_MAGIC = 0x616B3432

def _llama2c_header(path: pathlib.Path) -> tuple[int, tuple[int, ...], bool, int] | None:
  """(version, (dim, hidden, layers, heads, kv_heads, vocab, seq_len), shared classifier, weights offset), or None
  when the start of the file is not a plausible llama2.c header."""
  with open(path, "rb") as f: head = f.read(256)
  if len(head) >= 8 and struct.unpack("<I", head[:4])[0] == _LLAMA2C_MAGIC:
    version = struct.unpack("<i", head[4:8])[0]
    if version != 1: raise CheckpointError(f"{path} is a llama2.c version-{version} export; only the float32 legacy and version-1 layouts are supported")
    if len(head) < 256: raise CheckpointError(f"{path} is truncated inside its llama2.c header")
    return 1, struct.unpack("<7i", head[8:36]), head[36] == 1, 256
  if len(head) < 28: return None
  dim, hidden, layers, heads, kv_heads, vocab, seq = cfg = struct.unpack("<7i", head[:28])
  plausible = 0 < heads <= dim < 1 << 17 and 0 < kv_heads <= heads and 0 < hidden < 1 << 20 and 0 < layers < 1 << 12 \
              and 0 < abs(vocab) < 1 << 24 and 0 < seq < 1 << 24 and dim % heads == 0
  # a negative vocab_size says an untied classifier follows the weights
  return (0, (dim, hidden, layers, heads, kv_heads, abs(vocab), seq), vocab > 0, 28) if plausible else None

def _read_llama2c(path: pathlib.Path, device) -> Reader:
  version, (dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq), shared, offset = _llama2c_header(path)
  args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab, hidden_dim=hidden,
                   norm_eps=1e-5, max_seq_len=seq, tie_embeddings=shared)    # llama2.c's model.py: eps 1e-5, theta 1e4
  kv = n_kv_heads * args.head_dim
  kinds = {"tok_embeddings": (vocab, dim), "attention_norm": (dim,), "wq": (dim, dim), "wk": (kv, dim), "wv": (kv, dim),
           "wo": (dim, dim), "ffn_norm": (dim,), "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim), "norm": (dim,),
           "freq_cis": (2, seq, args.head_dim // 2), "output": (vocab, dim)}
  names = {"tok_embeddings": "tok_embeddings.weight", "norm": "norm.weight", "output": "output.weight",
           "attention_norm": "layers.{}.attention_norm.weight", "ffn_norm": "layers.{}.ffn_norm.weight",
           **{w: f"layers.{{}}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")},
           **{w: f"layers.{{}}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}}
  order = ["tok_embeddings", "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3", "norm", "freq_cis"] if version == 0 else \
          ["attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
  if not shared: order.append("output")
  layout = []                                     # (kind, byte offset of layer 0, bytes per layer)
  for kind in order:
    per = 4 * math.prod(kinds[kind])
    layout.append((kind, offset, per))
    offset += per * (n_layers if "{}" in names.get(kind, "") else 1)
  disk = Tensor(path)
  if offset != disk.shape[0]:
    raise CheckpointError(f"{path} has {disk.shape[0]} bytes but its llama2.c header describes {offset} (truncated or not a llama2.c checkpoint)")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for kind, start, per in layout:
      if kind == "freq_cis": continue             # the legacy RoPE table; we compute our own
      for i in range(n_layers if "{}" in names[kind] else 1):
        yield names[kind].format(i), disk[start + i * per:start + (i + 1) * per].bitcast(dtypes.float32).reshape(kinds[kind])
  return args, weights(), _beside(path.parent / "tokenizer.model", path.parent / "tokenizer.bin"), [path]

# ----- Meta's release: params.json + consolidated.NN.pth, one per model-parallel rank -----
# fairscale split each matrix across ranks: column-parallel layers (wq, wk, wv, w1, w3, output) by output rows,
# row-parallel ones (wo, w2) and the parallel embedding by input columns; norms are replicated on every rank.
_META_SPLIT_DIM = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}

def _read_meta(path: pathlib.Path, device) -> Reader:
  params = json.loads((path / "params.json").read_text())
  if not (shards := sorted(path.glob("consolidated.*.pth"))): raise CheckpointError(f"{path} has params.json but no consolidated.NN.pth files")
  if params.get("use_scaled_rope"): raise CheckpointError(f"{path} uses Llama 3.1's scaled RoPE, which this model does not implement")
  states = []
  for s in shards:     # torch_load gives lazy views into each zip: no data is read until a tensor is realised
    if not zipfile.is_zipfile(s): raise CheckpointError(f"{s} is not a PyTorch zip checkpoint (truncated, or saved by torch older than 1.6)")
    states.append({k: _bits(v) for k, v in torch_load(s).items() if k != "rope.freqs"})    # Meta's saved RoPE table: ours is computed
    if set(states[-1]) != set(states[0]): raise CheckpointError(f"{s} holds different tensors from {shards[0]}")
  first = states[0]
  args = ModelArgs(dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"], n_kv_heads=params.get("n_kv_heads"),
                   vocab_size=first["tok_embeddings.weight"].shape[0],      # params.json says -1 in the LLaMA 1 release
                   hidden_dim=first["layers.0.feed_forward.w1.weight"].shape[0] * len(states),
                   norm_eps=params.get("norm_eps", 1e-6), rope_theta=params.get("rope_theta", 10000.0),
                   max_seq_len=params.get("max_seq_len", 2048), tie_embeddings="output.weight" not in first)
  def weights() -> Iterator[tuple[str, Tensor]]:
    for name in first:
      kind = name.split(".")[-2]
      if len(states) == 1 or kind not in _META_SPLIT_DIM: yield name, first[name]
      else: yield name, Tensor.cat(*(s[name].to(device) for s in states), dim=_META_SPLIT_DIM[kind])
  return args, weights(), _beside(path / "tokenizer.model", path.parent / "tokenizer.model"), shards   # Meta ships it one level up

# ----- Hugging Face transformers: config.json + model.safetensors or shards listed in model.safetensors.index.json -----
_HF_LAYER_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
                   "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                   "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}
_HF_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "output.weight"}

def _unpermute_rotate_half(w: Tensor, heads: int) -> Tensor:
  """HF's conversion script reorders each head's q/k rows so its rotate-half RoPE equals Meta's interleaved pairs:
  row (h, 2i+j) of Meta goes to row (h, j·head_dim/2 + i) of HF. This puts them back."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

def _read_hf(path: pathlib.Path, device) -> Reader:
  cfg = json.loads((path / "config.json").read_text())
  if cfg.get("model_type") != "llama": raise CheckpointError(f"{path} holds a '{cfg.get('model_type')}' model, not a llama one")
  if cfg.get("rope_scaling"): raise CheckpointError(f"{path} uses RoPE scaling {cfg['rope_scaling']}, which this model does not implement")
  if cfg.get("attention_bias") or cfg.get("mlp_bias"): raise CheckpointError(f"{path} has biases in its linear layers; LLaMA has none")
  args = ModelArgs(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
                   n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"], hidden_dim=cfg["intermediate_size"],
                   norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=cfg.get("rope_theta", 10000.0),
                   max_seq_len=cfg.get("max_position_embeddings", 2048), tie_embeddings=cfg.get("tie_word_embeddings", False))
  if cfg.get("head_dim", args.head_dim) != args.head_dim: raise CheckpointError(f"{path} has head_dim {cfg['head_dim']} != hidden_size / heads")
  if (index := path / "model.safetensors.index.json").is_file():
    files = [path / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
  elif (path / "model.safetensors").is_file(): files = [path / "model.safetensors"]
  else: raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json (PyTorch .bin files are not read)")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for f in files:
      for hf_name, t in _safetensors(f).items():
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and args.tie_embeddings): continue
        if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name):
          name = f"layers.{m[1]}.{_HF_LAYER_NAMES.get(m[2], m[2])}.weight"
        else: name = _HF_NAMES.get(hf_name, hf_name)
        if name.endswith(("wq.weight", "wk.weight")):
          t = _unpermute_rotate_half(t.to(device), args.n_heads if name.endswith("wq.weight") else args.n_kv_heads)
        yield name, t
  return args, weights(), _beside(path / "tokenizer.model"), files

# ----- GGUF (llama.cpp): metadata key/values, tensor infos, aligned tensor data -----
_GGUF_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output", "attn_norm": "attention_norm",
               "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
               "ffn_norm": "ffn_norm", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}

def _read_gguf(path: pathlib.Path, device) -> Reader:
  # Only the header is parsed here (with tinygrad's GGUF field readers); each tensor's bytes are read from disk and
  # dequantised by tinygrad's ggml_data_to_tensor one at a time. gguf_load would first copy the whole file into memory.
  from tinygrad.llm.gguf import ggml_data_to_tensor, readers, read_str, read_int32, read_uint32, read_uint64, _GGML_NATIVE, _GGML_QUANT
  disk = Tensor(path)
  r = io.BufferedReader(TensorIO(disk), 1 << 20)
  magic, version, n_tensors, n_kv = r.read(4), read_int32(r), read_uint64(r), read_uint64(r)
  if version not in (2, 3): raise CheckpointError(f"{path} is GGUF version {version}; only versions 2 and 3 are read")
  kv = {}
  for _ in range(n_kv): key = read_str(r); kv[key] = readers[read_int32(r)](r)
  infos = [(read_str(r), tuple(read_uint64(r) for _ in range(read_uint32(r))), read_int32(r), read_uint64(r)) for _ in range(n_tensors)]
  data_start = -(-r.tell() // (align := kv.get("general.alignment", 32))) * align
  if (arch := kv.get("general.architecture")) != "llama": raise CheckpointError(f"{path} holds a '{arch}' model, not a llama one")
  if kv.get("split.count", 1) > 1: raise CheckpointError(f"{path} is one part of a split GGUF; merge the parts with llama.cpp's gguf-split first")
  if kv.get("llama.rope.scaling.type", "none") != "none" or any(n == "rope_freqs.weight" for n, *_ in infos):
    raise CheckpointError(f"{path} uses RoPE scaling, which this model does not implement")
  dims = {n: d for n, d, *_ in infos}
  n_heads = kv["llama.attention.head_count"]
  f32 = lambda x: float(str(np.float32(x)))   # GGUF stores float32: 1e-5 reads back as 9.9999997e-06; recover the decimal
  args = ModelArgs(dim=kv["llama.embedding_length"], n_layers=kv["llama.block_count"], n_heads=n_heads,
                   n_kv_heads=kv.get("llama.attention.head_count_kv", n_heads), vocab_size=dims["token_embd.weight"][1],
                   hidden_dim=kv["llama.feed_forward_length"], norm_eps=f32(kv.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                   rope_theta=f32(kv.get("llama.rope.freq_base", 10000.0)), max_seq_len=kv.get("llama.context_length", 2048),
                   tie_embeddings="output.weight" not in dims)
  if kv.get("llama.rope.dimension_count", args.head_dim) != args.head_dim: raise CheckpointError(f"{path} applies RoPE to only part of each head")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for gguf_name, shape, ggml_type, offset in infos:
      n = math.prod(shape)
      if ggml_type in _GGML_NATIVE: nbytes = n * _GGML_NATIVE[ggml_type].itemsize
      elif ggml_type in _GGML_QUANT: nbytes = n // _GGML_QUANT[ggml_type][0] * _GGML_QUANT[ggml_type][1]
      else: raise CheckpointError(f"{path}: tensor {gguf_name} has ggml type {ggml_type}, which tinygrad cannot dequantise")
      if (start := data_start + offset) + nbytes > disk.shape[0]: raise CheckpointError(f"{path} is truncated inside tensor {gguf_name}")
      # llama.cpp's llama converter already reordered q/k rows for adjacent-pair ("NORM") RoPE: Meta's order, nothing to undo
      parts = gguf_name.split(".")
      name = ".".join(["layers", parts[1], _GGUF_NAMES.get(parts[2], parts[2]), *parts[3:]] if parts[0] == "blk" else
                      [_GGUF_NAMES.get(parts[0], parts[0]), *parts[1:]])
      yield name, _bits(ggml_data_to_tensor(disk[start:start + nbytes].to(device), n, ggml_type)).reshape(*reversed(shape))
  def tokenizer():
    import data
    return data.tokenizer_from_gguf(kv)
  return args, weights(), tokenizer if "tokenizer.ggml.model" in kv else None, [path]

# ----- the entry point -----

_READERS: dict[str, Callable[[pathlib.Path, object], Reader]] = {"our own": _read_ours, "llama2.c": _read_llama2c, "Meta": _read_meta,
                                                                  "Hugging Face": _read_hf, "GGUF": _read_gguf}

def _sniff(path: pathlib.Path) -> str:
  if not path.exists(): raise CheckpointError(f"{path} does not exist")
  if path.is_dir():
    if (path / "config.json").is_file():
      return "our own" if "n_layers" in json.loads((path / "config.json").read_text()) else "Hugging Face"
    if (path / "params.json").is_file(): return "Meta"
    raise CheckpointError(f"{path} is a directory without config.json or params.json, so it is no checkpoint load() knows")
  with open(path, "rb") as f: magic = f.read(4)
  if magic == b"GGUF": return "GGUF"
  if _llama2c_header(path) is not None: return "llama2.c"
  raise CheckpointError(f"{path} is not a checkpoint load() knows (GGUF, llama2.c .bin, or a Meta, Hugging Face or own-format directory)")

def load(path, tokenizer=None, dtype=None, device=None) -> tuple[Transformer, object]:
  """Open a checkpoint in any of the five formats: (model, tokenizer or None). `tokenizer` is a tokenizer file that
  overrides or adds one; `dtype` (a tinygrad dtype or its name) casts every weight. By default what is stored is kept:
  float16 and bfloat16 stay half precision (CPU kernels in bfloat16 need a clang newer than Debian 12's 14: pass
  dtype="float32" there), quantised GGUF tensors dequantise to float32. `device` defaults to tinygrad's default; a
  tuple of devices loads the model tensor-parallel (§2.4), each tensor split as it is read, so no device ever holds
  the whole model."""
  path = pathlib.Path(path)
  devices = tuple(device) if isinstance(device, (tuple, list)) else (device or Device.DEFAULT,)
  if isinstance(dtype, str): dtype = getattr(dtypes, dtype)
  fmt = None
  try:
    fmt = _sniff(path)
    args, weights, make_tokenizer, files = _READERS[fmt](path, devices[0])
    model = _build(args, weights, files, dtype, devices, path)
  except (CheckpointError, ParallelError): raise
  except Exception as e:   # whatever a damaged file trips deep inside a parser becomes one sentence naming the file
    raise CheckpointError(f"{path} could not be read as a checkpoint{f' in {fmt} format' if fmt else ''} ({type(e).__name__}: {e})") from e
  if tokenizer is not None: make_tokenizer = _beside(pathlib.Path(tokenizer))
  if tokenizer is not None and make_tokenizer is None: raise CheckpointError(f"tokenizer file {tokenizer} does not exist")
  try: return model, make_tokenizer() if make_tokenizer else None
  except (ValueError, OSError) as e: raise CheckpointError(f"the tokenizer for {path} could not be loaded: {e}") from e

# ***** multi-device: data and tensor parallel (§2.4) *****
# §2.4: the 65B model was trained on 2048 GPUs with model and sequence parallelism and activation checkpointing. Here
# several devices are used only through tinygrad's own multi-device tensors: Tensor.shard(devices, axis) puts a tensor
# on a tuple of devices, as a full copy on each (axis=None) or split along one axis. Ops on such tensors run on every
# device at once, and a reduction over the split axis becomes an all-reduce. So each scheme is only a choice of where
# each tensor lives; the model code is the same on one device or many.
#  dp (data parallel): every weight is copied to every device (so is the optimiser state, which AdamW makes with
#     zeros_like), the batch is split along axis 0; a weight's gradient sums over the split batch: one all-reduce each.
#  tp (tensor parallel, Megatron-LM style, as fairscale did for Meta): wq wk wv w1 w3 are split by output rows, so each
#     device computes its own attention heads and its own SwiGLU hidden units from the full (copied) input; wo and w2
#     are split by input columns, so each device multiplies its own heads / units and one all-reduce sums the parts.
#     Norm gains and the RoPE table are copied; the KV cache is split by kv-heads (init_cache follows wk).
from tinygrad import Device, function

PARALLEL_MODES = ("dp", "tp", "dp+tp")

class ParallelError(ValueError):
  """A model that cannot run in the asked parallel mode on the asked devices; the message is one sentence."""

# tensor parallel: the axis each state-dict entry is split along; weights are (out, in) as nn.Linear stores them.
# Entries not listed (norm gains, the RoPE table) are copied to every device.
# The embedding and the output layer are split by vocab rows (fairscale split the embedding by columns instead):
#  - tinygrad's lookup is one-hot(tokens)·W summed over the vocab axis (nn._embedding_fwd), so with W split by rows each
#    device adds up the rows it holds and one all-reduce of (batch, seq, dim) gives every device the full, copied
#    hidden state that the copied norms and the column-parallel wq/wk/wv expect. Split by columns, the residual stream
#    would itself be split by dim and every norm and matmul would have to gather it back.
#  - the output layer split by rows gives logits split by vocab: the loss (logsumexp over the vocab) all-reduces only a
#    max and a sum per token, never the (batch, seq, vocab) logits.
#  - a tied output layer (llama2.c, SmolLM) is the same matrix, so one split serves both uses.
TP_SPLIT_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1, "tok_embeddings": 0, "output": 0,
                 "cache_kv": 2}   # the cache is (2, batch, kv_heads, context, head_dim)

def parse_devices(spec: str | None) -> tuple[str, ...]:
  """`--devices` text to a device tuple: 'CUDA:0,CUDA:1' -> ('CUDA:0', 'CUDA:1'); empty or None -> tinygrad's default
  device. Every device is opened here, so a missing backend is reported at once, as a ValueError."""
  if not spec: return (Device.DEFAULT,)
  devices = tuple(d.strip() for d in spec.split(","))
  if not all(devices): raise ValueError(f"--devices {spec!r} has an empty entry")
  if len({Device.canonicalize(d) for d in devices}) != len(devices): raise ValueError(f"--devices {spec!r} names a device twice")
  for d in devices:
    try: Device[d]
    except Exception as e: raise ValueError(f"device {d} is not available here ({type(e).__name__}: {e})") from e
  return devices

def check_parallel(args: ModelArgs, n_devices: int, mode: str) -> None:
  """Raise a one-sentence ParallelError unless a model of `args` can run in `mode` ('dp', 'tp', 'dp+tp') on `n_devices`.

  Tensor parallel splits heads, kv-heads, FFN hidden units and the vocabulary evenly, so all four must divide
  `n_devices` (uneven shards are not supported by Tensor.shard: "multi axis uneven").

  dp+tp (tensor parallel inside groups of devices, data parallel across the groups: a 2-D device layout) cannot be
  expressed with tinygrad 0.14's multi-device tensors, for two reasons found in its source:
   1. Tensor.shard(devices, axis) knows one flat tuple of devices and one split axis: a tensor is copied to every
      device or split across all of them. "Split across the devices of my TP group, copied across the groups" has no
      spelling, and sharding a tensor that is already on several devices raises "can't shard a multi-device tensor".
   2. A reduction over a split axis becomes ALLREDUCE(op, devices) over every device of the tensor
      (schedule/multi.py reduce_multi, schedule/allreduce.py handle_allreduce). dp+tp needs all-reduces over two
      different subgroups: the row-parallel wo/w2 partial sums within a TP group, and the gradients across the groups
      between the devices that hold the same TP shard.
  What would be needed: a device mesh in Tensor.shard (devices arranged as (dp, tp), a split axis or None per mesh
  dimension) and an all-reduce along one mesh dimension. (Internally tinygrad's UNSHARD already carries several
  (axis, device range) pairs, so the representation is part-way there.) One TP-sharded replica per group, with
  gradients summed across the groups by hand-written copies, would work, but that is a collective of our own outside
  tinygrad's multi-device tensors, which issue 6 rules out."""
  if mode not in PARALLEL_MODES: raise ParallelError(f"parallel mode must be one of {', '.join(PARALLEL_MODES)}, not {mode!r}")
  if n_devices < 1: raise ParallelError("at least one device is needed")
  if mode == "dp+tp":
    raise ParallelError("--parallel dp+tp is not supported: tinygrad 0.14 shards a tensor over one flat tuple of devices and all-reduces "
                     "over all of them, with no 2-D device mesh or subgroup all-reduce (see llama.check_parallel); use dp or tp")
  if mode == "tp":
    for what, count in (("n_heads", args.n_heads), ("n_kv_heads", args.n_kv_heads), ("the FFN hidden size", args.ffn_hidden),
                        ("vocab_size", args.vocab_size)):
      if count % n_devices:
        raise ParallelError(f"tensor parallel over {n_devices} devices needs {what} ({count}) to be divisible by {n_devices}")

def shard_axis(name: str, mode: str) -> int | None:
  """The axis along which the state-dict entry `name` ('layers.3.attention.wq.weight', 'freqs', ...) is split in
  `mode`; None means a full copy on every device."""
  if mode != "tp": return None
  parts = name.split(".")
  return TP_SPLIT_AXIS.get(parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1])

def place(name: str, t: Tensor, devices: tuple[str, ...], mode: str = "tp") -> Tensor:
  """One tensor onto `devices` (lazy: realise it yourself): moved when there is one device, else sharded by
  shard_axis. A loader calls this tensor by tensor on lazy disk tensors: each device then receives only its own part,
  and no device ever holds the whole model."""
  return t.to(devices[0]) if len(devices) == 1 else t.shard(devices, shard_axis(name, mode))

def model_devices(model: Transformer) -> tuple[str, ...]:
  """The devices `model`'s weights live on, as a tuple (one entry on a single device)."""
  return d if isinstance(d := model.tok_embeddings.weight.device, tuple) else (d,)

def shard_model(model: Transformer, devices: tuple[str, ...], mode: str = "tp") -> Transformer:
  """Move every tensor of `model` (weights, RoPE table, KV cache if any) onto `devices` for `mode` ('dp' or 'tp'), in
  place and one tensor at a time: each is realised on its new devices before the next moves, so its old buffer can
  be freed at once. Make the optimiser after this (its moments are created like the weights), and feed batches
  through shard_batch."""
  devices = tuple(devices)
  check_parallel(model.args, len(devices), mode)
  for name, t in get_state_dict(model).items():
    if isinstance(t.device, tuple): raise ValueError(f"{name} is already on several devices {t.device}: shard a model once")
    t.replace(place(name, t, devices, mode).realize())
  return model

def shard_batch(x: Tensor, devices: tuple[str, ...], mode: str = "dp", batch_axis: int = 0) -> Tensor:
  """Tokens or targets for a model sharded in `mode`: split along the batch axis for dp (axis 1 for micro-batches
  stacked as (accum, batch, seq)), copied to every device for tp."""
  if len(devices) == 1: return x.to(devices[0])
  if mode == "dp":
    if (b := x.shape[batch_axis]) % len(devices): raise ValueError(f"data parallel over {len(devices)} devices needs the batch size ({b}) to be divisible by {len(devices)}")
    return x.shard(devices, batch_axis)
  return x.shard(devices)

# §2.4 activation checkpointing. The paper saves the outputs of the linear layers and recomputes the rest, with a
# hand-written backward for the transformer layer; we take the simplest correct form instead: keep only each block's
# input and recompute the whole block inside the backward pass (Chen et al. 2016, "Training deep nets with sublinear
# memory cost"), which costs one more forward pass of the blocks.
# Recomputing is not simply calling the block again: tinygrad's lazy graph merges identical nodes, so a second copy of
# the forward in the backward pass would be the first copy, kept alive. tinygrad 0.14's `function` turns the block into
# a call, and precompile=True compiles it as its own program whose intermediates the outer graph never sees; its
# backward (precompile_backward=True) is a second program that receives only the block's inputs and recomputes the
# forward inside. Both flags are needed: with plain `function` the kernels are the same as without it, with
# precompile alone the recomputation is scheduled early and the peak memory does not drop.
@function(precompile=True, precompile_backward=True)
def checkpointed_block(layer: TransformerBlock, x: Tensor, freqs: Tensor) -> Tensor:
  """`layer(x, 0, freqs)` for training (no KV cache), with the block's activations recomputed in the backward pass.
  The layer's weights reach the call as inputs because the layer is an argument.
  After backward(), set `p.grad = p.grad.contiguous()` for every weight before realising the gradients: tinygrad
  0.14 does not bind a realised output of a precompiled backward to its buffer, so each later use of such a
  gradient (clipping, accumulation, the optimiser, .numpy()) would run the block's backward again, with whatever
  the weights are by then. contiguous() gives each gradient a buffer of its own (and costs nothing otherwise)."""
  return layer(x, 0, freqs)

def memory_per_device(args: ModelArgs, n_devices: int = 1, mode: str = "dp", batch: int = 1, seq_len: int | None = None,
                      dtype=dtypes.float32, checkpoint_activations: bool = False) -> dict[str, int]:
  """Bytes one device needs to train a model of `args` with AdamW, from the config alone (nothing is allocated).
  `batch` sequences of `seq_len` tokens per step in all (dp gives each device batch/n of them); `dtype` is the weights'.
    weights      the parameters on this device, plus the fp32 RoPE table
    grads        one gradient per parameter, in the weights' dtype
    adam         tinygrad's AdamW moments m and v, fp32, plus an fp32 master copy when the weights are 16-bit
    activations_per_token   what the backward pass keeps per token (below), and `activations` for this device's tokens
  Activations kept per token and layer: the inputs of the two norms and of the three matmul groups (4·dim), q k v
  (dim + 2·kv_dim), the attention output (dim), the SwiGLU gate, up and product (3·hidden), and one row of scores
  (fp32) and probabilities per head (n_heads·seq_len). Under tp everything after a column-parallel matmul is split,
  the four norm-side tensors are not. After the last layer: the final norm's input and output, and fp32 logits and
  log-probabilities (split by vocab under tp). With checkpoint_activations only each block's input is kept, plus one
  block's activations while it is recomputed. An estimate: what tinygrad keeps alive depends on its kernel fusion."""
  check_parallel(args, n_devices, mode)
  if isinstance(dtype, str): dtype = getattr(dtypes, dtype)
  e, seq_len = dtype.itemsize, seq_len or args.max_seq_len
  tp = n_devices if mode == "tp" else 1
  d, kv, hidden, V, L = args.dim, args.n_kv_heads * args.head_dim, args.ffn_hidden, args.vocab_size, args.n_layers
  copied = L * 2 * d + d                                       # norm gains
  params = copied + (args.num_params() - copied) // tp
  rope = args.max_seq_len * 2 * args.head_dim * 4              # precompute_freqs: (2·max_seq_len, head_dim/2, 2) fp32
  layer = 4 * d * e + (2 * d + 2 * kv + 3 * hidden) * e // tp + args.n_heads * seq_len * (4 + e) // tp
  head = 2 * d * e + 2 * V * 4 // tp
  per_token = (L * d * e + layer if checkpoint_activations else L * layer) + head
  tokens = -(-batch // (n_devices if mode == "dp" else 1)) * seq_len   # sequences per device, rounded up
  # under tp tinygrad leaves an untied embedding's gradient whole on every device: its backward (one-hot · upstream
  # gradient, summed over batch and sequence) never touches the split weight, so nothing splits the result (measured)
  whole_embedding_grad = 0 if mode != "tp" or args.tie_embeddings else V * d - V * d // tp
  ret = {"weights": params * e + rope, "grads": (params + whole_embedding_grad) * e, "adam": params * 4 * (2 + (e < 4)),
         "activations_per_token": per_token, "activations": per_token * tokens}
  ret["total"] = ret["weights"] + ret["grads"] + ret["adam"] + ret["activations"]
  return ret

def memory_table(presets=("7B", "13B", "33B", "65B"), n_devices: int = 8, batch: int | None = None, seq_len: int = 2048,
                 dtype=dtypes.bfloat16, checkpoint_activations: bool = False) -> str:
  """A Markdown table of memory_per_device for the paper's four models under dp and tp (GiB; activations per token in
  MiB). `batch` sequences in all, by default one per device under dp and one under tp."""
  gib, mib = 1 << 30, 1 << 20
  rows = [f"| model | mode | devices | weights | grads | Adam state | activations / token (MiB) | activations | total |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for name in presets:
    for mode in ("dp", "tp"):
      b = batch or (n_devices if mode == "dp" else 1)
      try: m = memory_per_device(PRESETS[name], n_devices, mode, b, seq_len, dtype, checkpoint_activations)
      except ValueError as e:
        rows.append(f"| {name} | {mode} | {n_devices} | {e} |||||")
        continue
      rows.append(f"| {name} | {mode} | {n_devices} | {m['weights']/gib:.1f} | {m['grads']/gib:.1f} | {m['adam']/gib:.1f} | "
                  f"{m['activations_per_token']/mib:.2f} | {m['activations']/gib:.1f} | {m['total']/gib:.1f} |")
  dt = dtype if isinstance(dtype, str) else repr(dtype).removeprefix("dtypes.")
  return "\n".join([f"Memory per device (GiB), {dt} weights, AdamW, {seq_len}-token sequences"
                    + (", activation checkpointing" if checkpoint_activations else "") + ":", *rows])
