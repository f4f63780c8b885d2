# The LLaMA model (Touvron et al., 2023, arXiv:2302.13971): §2.2 top to bottom, in the shape of Meta's v1 model.py
# (a ModelArgs dataclass, one small class per block, Meta's weight names so real checkpoints map by name), plus the
# paper's Table 2 configurations. Checkpoint formats are in checkpoint.py, devices in parallel.py, the one-token
# decode kernels in kernels.py.
from __future__ import annotations
import math
from dataclasses import dataclass, fields
import numpy as np
from tinygrad import Tensor, UOp, dtypes, nn
from tinygrad.helpers import TRAINING
from tinygrad.nn.state import get_parameters, get_state_dict
from engine import classifier_product, recomputed, trained_product, scheduled_once, split_axis, write_then_read

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
    if self.n_heads % self.n_kv_heads:
      raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
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
_SMALL = dict(multiple_of=32, max_seq_len=256, norm_eps=1e-5)   # what the small configs below share
PRESETS: dict[str, ModelArgs] = {
  "7B":  ModelArgs(dim=4096, n_layers=32, n_heads=32),
  "13B": ModelArgs(dim=5120, n_layers=40, n_heads=40),
  "33B": ModelArgs(dim=6656, n_layers=60, n_heads=52),
  "65B": ModelArgs(dim=8192, n_layers=80, n_heads=64),
  # small configs that train on a laptop CPU; vocab set by the tokenizer at train time
  "tiny":  ModelArgs(dim=64,  n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, **_SMALL),
  "small": ModelArgs(dim=128, n_layers=4, n_heads=4, n_kv_heads=2, vocab_size=2048, **_SMALL),
  # the size of Karpathy's stories15M (llama2.c)
  "15M":   ModelArgs(dim=288, n_layers=6, n_heads=6, vocab_size=32000, **_SMALL),
}

def preset_args(name: str, seq_len: int, vocab_size: int | None = None, **overrides) -> ModelArgs:
  """A preset with fields replaced where an override is not None (a new head count alone means plain multi-head
  attention), a context of at least seq_len tokens, and `vocab_size` (None: the preset's)."""
  if name not in PRESETS: raise ValueError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
  args = PRESETS[name].to_dict()
  if overrides.get("n_heads") is not None and overrides.get("n_kv_heads") is None: args["n_kv_heads"] = None
  args.update({k: v for k, v in overrides.items() if v is not None})
  args.update(max_seq_len=max(args["max_seq_len"], seq_len), vocab_size=vocab_size or args["vocab_size"])
  return ModelArgs.from_dict(args)

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

# ***** causal multi-head attention, grouped-query heads, KV cache *****

def materialized(x: Tensor) -> Tensor:
  """x computed once into a buffer of its own: else tinygrad fuses the elementwise work that made it (softmax's exp,
  SwiGLU's silu) into the next matmul and recomputes it for every output column."""
  return x.contiguous()

def own_grad(x: Tensor) -> Tensor:
  """x, with its gradient in a buffer of its own: else tinygrad fuses the backward of what follows (silu's
  derivative, RoPE's rotation) into the weight's gradient and recomputes it for every output column."""
  return x.contiguous_backward()

def attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
  """softmax(q·kᵀ/√d + mask)·v; q (B, H, T, d), keys/values (B, KV, S, d); mask (T, S), True where a query may see
  a key. No mask: causal within the chunk. GQA (Llama 2, not in the paper): each K/V head serves n_heads/n_kv_heads
  consecutive query heads (Meta's repeat_kv), here grouped onto it by a reshape, and the dot products written out: a
  repeated copy, or tinygrad's matmul, of a cache view of symbolic length compiles to divisions per element read."""
  (b, h, t, d), kv = q.shape, keys.shape[1]
  q, keys = q.reshape(b, kv, h // kv, t, 1, d), keys.reshape(b, kv, 1, 1, -1, d)
  scores = (q * keys).sum(-1, dtype=dtypes.float32) / math.sqrt(d)   # 16-bit q: float32 sums
  if mask is None and t > 1: mask = scores.const_like(True, dtypes.bool).tril()
  if mask is not None: scores = mask.where(scores, float("-inf"))
  return (materialized(scores.cast(q.dtype).softmax(-1)) @ values.unsqueeze(2)).reshape(b, h, t, d)

def causal_mask(seqlen: int, start_pos: int | UOp, device) -> Tensor | None:
  """Query i of a chunk sits at position start_pos+i and may see the keys at positions ≤ start_pos+i."""
  if seqlen == 1: return None
  return Tensor.ones(seqlen, seqlen, dtype=dtypes.bool, device=device).tril().pad(((0, 0), (start_pos, 0)), value=True)

class Linear(nn.Linear):
  """tinygrad's nn.Linear; while training (tinygrad's TRAINING context, which its nn.BatchNorm reads too) its product
  is engine.trained_product, whose kernels read along their outputs."""
  def __call__(self, x: Tensor) -> Tensor: return trained_product(x, self.weight) if TRAINING else super().__call__(x)

def linear(fan_in: int, fan_out: int) -> Linear:
  """A bias-free Linear, its weight an unset placeholder of the right shape: every weight is set afterwards
  (init_weights, or a loader), and nn.Linear's own uniform init builds a random-number graph per layer (about 1.5 s of
  loading SmolLM2's 211 matrices)."""
  lin = Linear.__new__(Linear)
  lin.weight, lin.bias = Tensor.empty(fan_out, fan_in), None
  return lin

class Attention:
  def __init__(self, args: ModelArgs):
    self.n_heads, self.n_kv_heads, self.head_dim = args.n_heads, args.n_kv_heads, args.head_dim
    self.wq = linear(args.dim, args.n_heads * self.head_dim)
    self.wk = linear(args.dim, self.n_kv_heads * self.head_dim)
    self.wv = linear(args.dim, self.n_kv_heads * self.head_dim)
    self.wo = linear(args.n_heads * self.head_dim, args.dim)
    self.cache_kv: Tensor | None = None   # (2, batch, kv_heads, max_context, head_dim), made by Transformer.init_cache
    self.attend = attention               # kernels.use_decode_kernels swaps in a faster one-token kernel

  def __call__(self, x: Tensor, start_pos: int | UOp, freqs: Tensor) -> Tensor:
    bsz, seqlen, _ = x.shape
    xq = own_grad(self.wq(x)).reshape(bsz, seqlen, self.n_heads, self.head_dim)
    xk = own_grad(self.wk(x)).reshape(bsz, seqlen, self.n_kv_heads, self.head_dim)
    xv = own_grad(self.wv(x)).reshape(bsz, seqlen, self.n_kv_heads, self.head_dim)
    xq, xk = apply_rotary_emb(xq, freqs), apply_rotary_emb(xk, freqs)
    # a chunk's q, k and v computed once: each is read by every key or query of the chunk (and k, v by the cache write)
    if seqlen > 1: xq, xk, xv = materialized(xq), materialized(xk), materialized(xv)
    xq, xk, xv = xq.transpose(1, 2), xk.transpose(1, 2), xv.transpose(1, 2)   # (batch, heads, seq, head_dim)
    if self.cache_kv is None: keys, values, mask = xk, xv, None   # training, or a one-shot forward: this sequence only
    else:                                                          # decoding: append to the cache, attend to all of it
      end = start_pos+seqlen
      cache = write_then_read(self.cache_kv, self.cache_kv[:, :bsz, :, start_pos:end], Tensor.stack(xk, xv))
      keys, values = cache[0, :bsz, :, :end].cast(xq.dtype), cache[1, :bsz, :, :end].cast(xq.dtype)
      mask = causal_mask(seqlen, start_pos, xq.device)
    return self.wo(self.attend(xq, keys, values, mask).transpose(1, 2).reshape(bsz, seqlen, -1))

# ***** §2.2 SwiGLU activation function [PaLM] *****

class FeedForward:
  def __init__(self, dim: int, hidden_dim: int):
    self.w1 = linear(dim, hidden_dim)   # gate
    self.w2 = linear(hidden_dim, dim)   # down projection
    self.w3 = linear(dim, hidden_dim)   # up projection

  def __call__(self, x: Tensor) -> Tensor:
    gate, up = own_grad(self.w1(x)), own_grad(self.w3(x))
    # over several tokens each product a kernel of its own: one kernel with both reductions is tiled worse
    if x.shape[-2] > 1: gate, up = materialized(gate), materialized(up)
    return self.w2(materialized(gate.silu() * up))

# ***** the block, its recomputing twin, and the model *****

class TransformerBlock:
  def __init__(self, args: ModelArgs):
    self.attention = Attention(args)
    self.feed_forward = FeedForward(args.dim, args.ffn_hidden)
    self.attention_norm = RMSNorm(args.dim, eps=args.norm_eps)
    self.ffn_norm = RMSNorm(args.dim, eps=args.norm_eps)

  def __call__(self, x: Tensor, start_pos: int | UOp, freqs: Tensor) -> Tensor:
    # §2.2 pre-normalization: normalise the input of each sub-layer, not its output
    h = x + self.attention(self.attention_norm(x), start_pos, freqs)
    return (h + self.feed_forward(self.ffn_norm(h))).contiguous()   # a block boundary, else decode fuses badly

# §2.4 activation checkpointing, in its simplest correct form: keep only each block's input and recompute the block in
# the backward pass (Chen et al. 2016, "Training deep nets with sublinear memory cost"; the paper keeps the outputs of
# the linear layers instead, with a hand-written backward). tinygrad merges identical lazy nodes, so calling the block
# again would reuse the first forward; engine.recomputed makes the block, and its backward that recomputes it,
# programs of their own whose intermediates the outer graph never sees.
@recomputed
def checkpointed_block(layer: TransformerBlock, x: Tensor, freqs: Tensor) -> Tensor:
  """`layer(x, 0, freqs)` for training, its activations recomputed in the backward pass. After backward(), make every
  weight's gradient contiguous before using it: tinygrad 0.14 reruns a precompiled backward on every read of its
  unbound outputs."""
  return layer(x, 0, freqs)

# decoding, scoring and evaluation: each block a program of its own, scheduled once for all the layers
@scheduled_once
def scheduled_block(layer: TransformerBlock, x: Tensor, start_pos: int | UOp, freqs: Tensor) -> Tensor:
  return layer(x, start_pos, freqs)

class Transformer:
  def __init__(self, args: ModelArgs, init: bool = True):
    """init=False leaves the weights as lazy placeholders that are never realised, for loaders that overwrite them
    (the random init of a 7B model would cost a whole model's worth of memory for nothing)."""
    self.args = args
    self.tok_embeddings = nn.Embedding(args.vocab_size, args.dim)
    self.layers = [TransformerBlock(args) for _ in range(args.n_layers)]
    self.norm = RMSNorm(args.dim, eps=args.norm_eps)
    self.output = None if args.tie_embeddings else linear(args.dim, args.vocab_size)
    # table for twice the context, as Meta does, so decoding a little past max_seq_len still has angles
    self.freqs = precompute_freqs(args.head_dim, args.max_seq_len * 2, args.rope_theta)
    if init: self.init_weights()

  def init_weights(self):
    """Training from scratch as nanoGPT / llama2.c: N(0, 0.02) for every matrix, residual projections (wo, w2)
    scaled by 1/sqrt(2·n_layers) so the residual stream does not grow with depth; norms start at 1."""
    std = 0.02
    self.tok_embeddings.weight = Tensor.normal(self.args.vocab_size, self.args.dim, std=std)
    if self.output is not None: self.output.weight = Tensor.normal(*self.output.weight.shape, std=std)
    for layer in self.layers:
      att, ff = layer.attention, layer.feed_forward
      for lin in (att.wq, att.wk, att.wv, ff.w1, ff.w3):
        lin.weight = Tensor.normal(*lin.weight.shape, std=std)
      for lin in (att.wo, ff.w2):
        lin.weight = Tensor.normal(*lin.weight.shape, std=std / math.sqrt(2 * self.args.n_layers))
    Tensor.realize(*get_parameters(self))   # random init is lazy: realised in a fixed order, a seed gives one model

  def init_cache(self, max_batch: int = 1, max_context: int | None = None, dtype=None):
    """Allocate the KV cache for incremental decoding (not in the paper; standard since the Transformer).
    After this, calls at start_pos write into the cache; before it, every call is a one-shot forward."""
    ctx = max_context or self.args.max_seq_len
    dtype = dtype or self.tok_embeddings.weight.dtype
    for layer in self.layers:
      a, w = layer.attention, layer.attention.wk.weight
      cache = Tensor.zeros(2, max_batch, a.n_kv_heads, ctx, a.head_dim, dtype=dtype,
                           device=w.device if isinstance(w.device, str) else None)
      # on several devices the cache lives where wk does: split by kv-heads when wk is split by rows (tp), else copied
      if isinstance(w.device, tuple): cache = cache.shard(w.device, 2 if split_axis(w) == 0 else None)
      a.cache_kv = cache.contiguous().realize()

  def drop_cache(self):
    for layer in self.layers: layer.attention.cache_kv = None

  def __call__(self, tokens: Tensor, start_pos: int | UOp = 0, checkpoint_activations: bool = False,
               select: Tensor | None = None, training: bool = False) -> Tensor:
    """tokens (batch, seq) → logits (batch, seq, vocab). start_pos is where tokens begin in the KV cache (an int, or
    a bound symbolic variable so one compiled decode step serves every position). training: the blocks are part of
    the caller's graph, so the backward pass reuses the forward's intermediates (else each is scheduled once, see
    scheduled_block); checkpoint_activations (training, no KV cache) recomputes each block in the backward pass
    instead. select (seq,), one-hot: the logits of that position only (batch, 1, vocab), as Meta's model.py computes
    only the last one's when generating."""
    _, seqlen = tokens.shape
    h = self.tok_embeddings(tokens)
    freqs = self.freqs[start_pos:start_pos+seqlen]
    for layer in self.layers:
      if checkpoint_activations: h = checkpointed_block(layer, h, freqs)
      elif training: h = layer(h, start_pos, freqs)
      else: h = scheduled_block(layer, h, start_pos, freqs)
    if select is not None: h = (h * select.reshape(1, -1, 1)).sum(1, keepdim=True)
    h = self.norm(h)
    if training:   # the same product, its weight gradient computed a faster way (engine.classifier_product)
      return classifier_product(h, self.tok_embeddings.weight if self.output is None else self.output.weight).float()
    return (h @ self.tok_embeddings.weight.T if self.output is None else self.output(h)).float()

def learned(model: Transformer) -> dict[str, Tensor]:
  """The learned tensors by Meta name: the state dict without the RoPE table and KV caches (and without 'output.weight'
  when the classifier is tied to the embedding)."""
  return {k: v for k, v in get_state_dict(model).items() if k != "freqs" and not k.endswith("cache_kv")
          and not (k == "output.weight" and model.args.tie_embeddings)}

def layer_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
  """The name (within a block) and shape of each learned tensor of one TransformerBlock."""
  d, kv, h = args.dim, args.n_kv_heads * args.head_dim, args.ffn_hidden
  return {"attention.wq": (d, d), "attention.wk": (kv, d), "attention.wv": (kv, d), "attention.wo": (d, d),
          "feed_forward.w1": (h, d), "feed_forward.w2": (d, h), "feed_forward.w3": (h, d),
          "attention_norm": (d,), "ffn_norm": (d,)}

def weight_shapes(args: ModelArgs) -> dict[str, tuple[int, ...]]:
  """Meta's name and shape of every learned tensor of a model of `args` (what learned(Transformer(args)) holds),
  without building one: a checkpoint is checked against it before anything is allocated."""
  top = {"tok_embeddings.weight": (args.vocab_size, args.dim), "norm.weight": (args.dim,)}
  if not args.tie_embeddings: top["output.weight"] = (args.vocab_size, args.dim)
  return top | {f"layers.{i}.{k}.weight": s for i in range(args.n_layers) for k, s in layer_shapes(args).items()}
