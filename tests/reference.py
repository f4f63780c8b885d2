"""An independent numpy LLaMA, written from the paper (Touvron et al. 2023, §2.2) and Meta's published math, not from
llama.py. Everything is computed in float64 so it can judge the float32 tinygrad model. Weights use Meta's names
(`tok_embeddings.weight`, `layers.N.attention.wq.weight`, ...; nn.Linear layout: (out_features, in_features)).

Used by tests/test_model.py for the property tests and by the golden tests of real checkpoints (stories260K, SmolLM2):
`forward(weights, args, tokens)` needs only numpy arrays and a config with n_heads / n_kv_heads / norm_eps / rope_theta.
"""
from __future__ import annotations
import numpy as np

def _get(args, name, default=None):
  """Read a config field from a ModelArgs-like object or a plain dict (params.json style)."""
  v = args.get(name, default) if isinstance(args, dict) else getattr(args, name, default)
  return default if v is None else v

# ***** §2.2 pre-normalization [GPT3] with RMSNorm (Zhang & Sennrich 2019) *****

def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
  """y = x / sqrt(mean(x²) + eps) · g, over the last axis."""
  x = np.asarray(x, np.float64)
  return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * np.asarray(weight, np.float64)

# ***** §2.2 rotary embeddings [GPTNeo] (Su et al. 2021), Meta's complex formulation *****

def rope(x: np.ndarray, positions, theta: float = 10000.0) -> np.ndarray:
  """x: (..., seq, heads, head_dim); positions: (seq,) absolute positions m.
  The pair (x[2i], x[2i+1]) is the complex number x[2i] + j·x[2i+1]; it is multiplied by e^{j·m·θ_i}
  with θ_i = theta^(-2i/head_dim), i = 0 .. head_dim/2 - 1."""
  x = np.asarray(x, np.float64)
  hd = x.shape[-1]
  theta_i = theta ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)                    # (hd/2,)
  rot = np.exp(1j * np.outer(np.asarray(positions, np.float64), theta_i))               # (seq, hd/2)
  z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot[:, None, :]                              # broadcast over heads
  out = np.empty_like(x)
  out[..., 0::2], out[..., 1::2] = z.real, z.imag
  return out

# ***** §2.2 SwiGLU [PaLM] (Shazeer 2020) *****

def silu(x: np.ndarray) -> np.ndarray:
  """x·σ(x), with σ(x) = (1 + tanh(x/2))/2 so no exp overflows for large |x|."""
  return x * 0.5 * (1.0 + np.tanh(0.5 * x))

def swiglu(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, w3: np.ndarray) -> np.ndarray:
  """FFN(x) = W2 (SiLU(W1 x) ⊙ W3 x)."""
  x = np.asarray(x, np.float64)
  return (silu(x @ np.asarray(w1, np.float64).T) * (x @ np.asarray(w3, np.float64).T)) @ np.asarray(w2, np.float64).T

def ffn_hidden(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
  """§2.2: 'a dimension of 2/3·4d instead of 4d'; Meta's code then applies the optional multiplier (Llama 2)
  and rounds up to a multiple of multiple_of."""
  hidden = int(2 * (4 * dim) / 3)
  if ffn_dim_multiplier is not None: hidden = int(ffn_dim_multiplier * hidden)
  return -(-hidden // multiple_of) * multiple_of

# ***** causal multi-head attention (Vaswani et al. 2017), grouped-query K/V heads (Ainslie et al. 2023) *****

def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
  e = np.exp(x - np.max(x, axis=axis, keepdims=True))
  return e / np.sum(e, axis=axis, keepdims=True)

def attention(x: np.ndarray, wq, wk, wv, wo, n_heads: int, n_kv_heads: int | None = None,
              theta: float = 10000.0, start_pos: int = 0) -> np.ndarray:
  """x: (batch, seq, dim) at positions start_pos .. start_pos+seq-1 (no earlier context). Each K/V head is
  repeated n_heads/n_kv_heads times so query head h reads K/V head h // (n_heads/n_kv_heads)."""
  x = np.asarray(x, np.float64)
  n_kv_heads = n_kv_heads or n_heads
  B, T, _ = x.shape
  hd = np.shape(wq)[0] // n_heads
  q = (x @ np.asarray(wq, np.float64).T).reshape(B, T, n_heads, hd)
  k = (x @ np.asarray(wk, np.float64).T).reshape(B, T, n_kv_heads, hd)
  v = (x @ np.asarray(wv, np.float64).T).reshape(B, T, n_kv_heads, hd)
  pos = np.arange(start_pos, start_pos + T)
  q, k = rope(q, pos, theta), rope(k, pos, theta)
  rep = n_heads // n_kv_heads
  k, v = np.repeat(k, rep, axis=2), np.repeat(v, rep, axis=2)
  q, k, v = (t.transpose(0, 2, 1, 3) for t in (q, k, v))                              # (B, heads, T, hd)
  scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd)
  scores = np.where(np.tril(np.ones((T, T), bool)), scores, -np.inf)                  # query i sees keys j ≤ i
  out = softmax(scores) @ v                                                           # (B, heads, T, hd)
  return out.transpose(0, 2, 1, 3).reshape(B, T, n_heads * hd) @ np.asarray(wo, np.float64).T

# ***** the whole network *****

def weight_shapes(args) -> dict[str, tuple[int, ...]]:
  """Meta's parameter names and shapes for a config (dim, n_layers, n_heads, n_kv_heads, vocab_size, FFN size by
  the rule above unless hidden_dim is given, tie_embeddings: no output.weight)."""
  dim, L, H = _get(args, "dim"), _get(args, "n_layers"), _get(args, "n_heads")
  kv = _get(args, "n_kv_heads", H) * (dim // H)
  hidden = _get(args, "hidden_dim") or ffn_hidden(dim, _get(args, "multiple_of", 256), _get(args, "ffn_dim_multiplier"))
  V = _get(args, "vocab_size")
  shapes = {"tok_embeddings.weight": (V, dim)}
  for i in range(L):
    p = f"layers.{i}."
    shapes.update({
      p + "attention.wq.weight": (dim, dim), p + "attention.wk.weight": (kv, dim), p + "attention.wv.weight": (kv, dim),
      p + "attention.wo.weight": (dim, dim), p + "feed_forward.w1.weight": (hidden, dim),
      p + "feed_forward.w2.weight": (dim, hidden), p + "feed_forward.w3.weight": (hidden, dim),
      p + "attention_norm.weight": (dim,), p + "ffn_norm.weight": (dim,)
    })
  shapes["norm.weight"] = (dim,)
  if not _get(args, "tie_embeddings", False): shapes["output.weight"] = (V, dim)
  return shapes

def forward(weights: dict[str, np.ndarray], args, tokens) -> np.ndarray:
  """Logits for tokens (batch, seq) [or (seq,)] starting at position 0, float64.
  args: ModelArgs or dict with n_heads, n_kv_heads (None: = n_heads), norm_eps, rope_theta.
  The layer count comes from the weights; without 'output.weight' the output is tied to the embedding."""
  tokens = np.asarray(tokens)
  squeeze = tokens.ndim == 1
  tokens = np.atleast_2d(tokens)
  H, eps, theta = _get(args, "n_heads"), _get(args, "norm_eps", 1e-6), _get(args, "rope_theta", 10000.0)
  kvh = _get(args, "n_kv_heads", H)
  w = lambda name: np.asarray(weights[name], np.float64)
  n_layers = 1 + max(int(k.split(".")[1]) for k in weights if k.startswith("layers."))
  h = w("tok_embeddings.weight")[tokens]                                               # (B, T, dim)
  for i in range(n_layers):
    p = f"layers.{i}."
    h = h + attention(rmsnorm(h, w(p + "attention_norm.weight"), eps), w(p + "attention.wq.weight"),
                      w(p + "attention.wk.weight"), w(p + "attention.wv.weight"), w(p + "attention.wo.weight"), H, kvh,
                      theta)
    h = h + swiglu(rmsnorm(h, w(p + "ffn_norm.weight"), eps), w(p + "feed_forward.w1.weight"),
                   w(p + "feed_forward.w2.weight"), w(p + "feed_forward.w3.weight"))
  h = rmsnorm(h, w("norm.weight"), eps)
  logits = h @ w("output.weight" if "output.weight" in weights else "tok_embeddings.weight").T
  return logits[0] if squeeze else logits

def random_weights(args, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
  """float32 weights of every shape in weight_shapes(args): matrices normal(0, scale/sqrt(fan_in)) so activations
  stay O(1) at any width, norm gains around 1 (non-trivial, so a test notices a gain applied wrongly)."""
  rng = np.random.default_rng(seed)
  return {
    k: (1 + 0.3 * rng.standard_normal(s) if len(s) == 1 else scale / np.sqrt(s[1]) * rng.standard_normal(s)).astype(
      np.float32)
    for k, s in weight_shapes(args).items()
  }
