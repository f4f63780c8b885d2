# Faster one-token (decode) forms of the model's two hot operations, the same math as llama.py written for tinygrad's
# CPU code generation, and use_decode_kernels(), the one explicit call that puts them into a model.
from __future__ import annotations
import math
from tinygrad import Tensor
import llama, parallel, quant

def lane_sum(x: Tensor, lanes: int = 8) -> Tensor:
  """x summed over its last axis in `lanes` independent partial sums, then those added: tinygrad's CPU code for a
  plain reduction is one dependent chain per output, which a one-token product cannot hide behind other work."""
  if x.shape[-1] % lanes: return x.sum(-1)
  return x.reshape(*x.shape[:-1], x.shape[-1] // lanes, lanes).sum(-2).sum(-1)

def matvec_linear(weight: Tensor, x: Tensor) -> Tensor:
  """x @ weight.T for a bias-free linear layer. One token: lane sums, input and output realised so that SwiGLU's gate
  and up products do not fuse into one two-reduction kernel; longer inputs (prefill): the ordinary matmul, of a float
  copy where the weight is a lazy expression (a compact embedding, quant.py, as the tied classifier)."""
  if x.shape[-2] != 1: return x @ weight.contiguous().T
  return lane_sum(x.contiguous().unsqueeze(-2) * weight).contiguous()

class MatVecLinear:
  def __init__(self, weight: Tensor): self.weight = weight      # the same state-dict name as nn.Linear's
  def __call__(self, x: Tensor) -> Tensor: return matvec_linear(self.weight, x)

class FusedPart:
  """One of several linear layers that read the same input (wq wk wv; w1 w3), computed as its rows of one product
  with their concatenated weights: the parts build the same product, which tinygrad's graph holds once, so the input
  is read once and one kernel is launched instead of three. `weight` is a view of the part's rows: the state dict
  keeps its names and shapes (the concatenation is hidden in a closure)."""
  def __init__(self, fused: Tensor, start: int, end: int):
    self.weight, self.rows, self.product = fused[start:end], (start, end), lambda x: matvec_linear(fused, x)
  def __call__(self, x: Tensor) -> Tensor:   # prefill keeps one matmul per layer: the fused one picked slower kernels
    return self.product(x)[..., self.rows[0]:self.rows[1]] if x.shape[-2] == 1 else x @ self.weight.T

class FusedQuantPart(quant.QuantLinear):
  """FusedPart for compact layers: rows start:end of one fused compact matrix. Its parts are views of the fused parts'
  rows, so the state dict keeps its names and shapes; one token computes the whole fused product from inside the call
  (so a compiled block reads the packed bytes, not a dequantised copy made ahead of it) and takes its rows."""
  def __init__(self, fused: quant.QuantLinear, start: int, end: int):
    super().__init__({k: v[start:end] for k, v in fused.parts.items()}, fused.ggml_type, (end - start, fused.shape[1]),
                     fused.dtype)
    self.rows, self.fused_product = (start, end), lambda x: matvec_linear(fused.weight, x)
  def __call__(self, x: Tensor) -> Tensor:
    if x.shape[-2] != 1: return super().__call__(x)
    return self.fused_product(x.cast(self.dtype))[..., self.rows[0]:self.rows[1]]

def fuse(lins: list) -> list:
  """The layers `lins` as parts of one concatenated matrix: FusedParts of float weights (on one device; a split model
  keeps its layers), FusedQuantParts of compact ones in one format; layers of mixed formats stay as they are."""
  if any(isinstance(l, (FusedPart, FusedQuantPart)) for l in lins): return lins
  ends = [0]
  for l in lins: ends.append(ends[-1] + (l.shape if isinstance(l, quant.QuantLinear) else l.weight.shape)[0])
  if any(isinstance(l, quant.QuantLinear) for l in lins):
    first = lins[0]
    if any(not isinstance(l, quant.QuantLinear) or (l.ggml_type, l.dtype, l.shape[1]) !=
           (first.ggml_type, first.dtype, first.shape[1]) for l in lins): return lins
    parts = {k: Tensor.cat(*[l.parts[k] for l in lins]).contiguous().realize() for k in first.parts}
    fused = quant.QuantLinear(parts, first.ggml_type, (ends[-1], first.shape[1]), first.dtype)
    return [FusedQuantPart(fused, a, b) for a, b in zip(ends, ends[1:])]
  ws = [l.weight for l in lins]
  if any(isinstance(w.device, tuple) for w in ws): return lins
  fused = Tensor.cat(*ws).contiguous().realize()
  return [FusedPart(fused, a, b) for a, b in zip(ends, ends[1:])]

def decode_attention(q: Tensor, keys: Tensor, values: Tensor, mask: Tensor | None) -> Tensor:
  """llama.attention for one query token, q (B, H, 1, d), keys/values (B, KV, S, d): query heads grouped onto their
  K/V head by a reshape (no repeated copy of the cache), each dot product over d in lane sums (S is symbolic, so the
  compiler cannot unroll across positions instead). Longer chunks go to llama.attention."""
  if q.shape[2] != 1: return llama.attention(q, keys, values, mask)
  (b, h, _, d), kv = q.shape, keys.shape[1]
  g, s, parts = h // kv, keys.shape[2], d // 32 if d % 32 == 0 else 1
  # each dot product in parts of 32 (an output axis of its own, which engine.kernel_options splits over cores: the
  # kernel's other axes are a few heads and the symbolic length), the parts added in the softmax's kernel
  dots = lane_sum(q.reshape(b, kv, g, 1, parts, d // parts) * keys.reshape(b, kv, 1, s, parts, d // parts))
  scores = dots.contiguous().sum(-1) / math.sqrt(d)                                             # (B, KV, group, S)
  out = (scores.float().softmax(-1).cast(q.dtype).unsqueeze(-1) * values.unsqueeze(2)).sum(-2)   # (B, KV, group, d)
  return out.reshape(b, h, 1, d)

def use_decode_kernels(model: llama.Transformer, min_size: int = 1 << 16) -> llama.Transformer:
  """Give `model` the one-token kernels: decode_attention in every block, one fused product for wq‖wk‖wv and one for
  w1‖w3, and matvec_linear for wo, w2 and the classifier (tied or not) where the matrix is big enough (>= min_size
  weights) that kernel time outweighs the cost of the extra kernels. The state dict keeps its names and shapes, so
  saving works as before; calling it twice changes nothing. For decoding only: the fused weights are new buffers.
  Compact layers (quant.QuantLinear) keep their blocks: wq‖wk‖wv and w1‖w3 of one format are fused as one compact
  matrix (FusedQuantPart), the others get the lane-summed matvec as their product.
  CPU only: on accelerators tinygrad's own reductions are faster than these lane sums (measured 19% on an H200), so a
  model elsewhere is returned as it is."""
  if parallel.model_backend(model) != "CPU": return model
  def big(w: Tensor) -> bool: return w.numel() >= min_size and w.shape[1] % 8 == 0
  def swap(lin):
    # a compact layer (quant.py) keeps its blocks, so the state dict still counts them; its `weight` is a lazy
    # dequantising expression, which the matvec reads as one kernel
    if isinstance(lin, quant.QuantLinear): lin.product = matvec_linear; return lin
    return MatVecLinear(lin.weight) if not isinstance(lin, MatVecLinear) and big(lin.weight) else lin
  for layer in model.layers:
    a, f = layer.attention, layer.feed_forward
    a.attend = decode_attention
    (a.wq, a.wk, a.wv), (f.w1, f.w3) = fuse([a.wq, a.wk, a.wv]), fuse([f.w1, f.w3])
    for lin in (a.wq, a.wk, a.wv, f.w1, f.w3):   # compact layers of mixed formats stay unfused, each a matvec
      if type(lin) is quant.QuantLinear: swap(lin)
    a.wo, f.w2 = swap(a.wo), swap(f.w2)
  if model.output is not None: model.output = swap(model.output)
  # a tied classifier reads the embedding matrix; llama.learned() leaves 'output.weight' out, so the model stays tied
  elif big(model.tok_embeddings.weight): model.output = MatVecLinear(model.tok_embeddings.weight)
  return model
