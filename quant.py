# GGUF's quantised weights kept compact on the device (Q8_0, Q4_0, Q4_1, Q4_K, Q6_K, block layouts as in ggml's
# ggml-common.h): each tensor split at load into its packed quants and its scales, and QuantLinear / QuantEmbedding,
# whose weight is a lazy dequantising expression of them, so tinygrad fuses the unpacking into the product that reads
# it and a decode step reads the checkpoint's bytes, not a float32 copy four to eight times their size.
from __future__ import annotations
import math
from dataclasses import dataclass
from tinygrad import Device, Tensor, dtypes
from tinygrad.llm.gguf import ggml_data_to_tensor
from gguf import GGML_TYPES

# ggml type: (name, elements per block, bytes per block) of the formats kept compact
FORMATS = {t: GGML_TYPES[t] for t in (8, 2, 3, 12, 14)}   # Q8_0, Q4_0, Q4_1, Q4_K, Q6_K

def compute_dtype(device: str):
  """What the weights dequantise to: float16 on accelerators; float32 on the CPU, where float16 arithmetic compiles to
  scalar conversions (tinygrad notes: 4.5x slower decode)."""
  return dtypes.float32 if Device.canonicalize(device).split(":")[0] == "CPU" else dtypes.float16

def _f16(b: Tensor, dtype) -> Tensor:
  """The float16 stored in the last axis's two bytes (little-endian), as `dtype`."""
  return b.contiguous().bitcast(dtypes.float16).squeeze(-1).cast(dtype)

def _nibbles(qs: Tensor) -> Tensor:
  """Bytes (..., g) → their 4-bit halves (..., 2g): the low nibbles first, then the high ones (ggml's order)."""
  return (qs & 15).cat(qs >> 4, dim=-1)

def split(blocks: Tensor, ggml_type: int, dtype) -> dict[str, Tensor]:
  """A tensor's block bytes (rows, blocks per row, bytes per block), uint8, as its parts: packed quants as stored
  and scales decoded once to `dtype` (Q4_K's 6-bit sub-scales and mins unpacked to one byte each). Lazy."""
  if ggml_type == 8: return {"d": _f16(blocks[..., 0:2], dtype), "qs": blocks[..., 2:].bitcast(dtypes.int8)}
  if ggml_type == 2: return {"d": _f16(blocks[..., 0:2], dtype), "qs": blocks[..., 2:]}
  if ggml_type == 3:
    return {"d": _f16(blocks[..., 0:2], dtype), "m": _f16(blocks[..., 2:4], dtype), "qs": blocks[..., 4:]}
  if ggml_type == 12:
    s = blocks[..., 4:16]   # get_scale_min_k4: sub-blocks 0-3 in the low 6 bits of bytes 0-3 (scales) and 4-7
    lo, mid, hi = s[..., 0:4], s[..., 4:8], s[..., 8:12]   # (mins); 4-7 in the nibbles of 8-11 and the top bits
    return {"d": _f16(blocks[..., 0:2], dtype), "dmin": _f16(blocks[..., 2:4], dtype),
            "sc": (lo & 63).cat((hi & 15) | ((lo >> 6) << 4), dim=-1),
            "mn": (mid & 63).cat((hi >> 4) | ((mid >> 6) << 4), dim=-1), "qs": blocks[..., 16:144]}
  if ggml_type == 14:
    return {"ql": blocks[..., 0:128], "qh": blocks[..., 128:192], "sc": blocks[..., 192:208].bitcast(dtypes.int8),
            "d": _f16(blocks[..., 208:210], dtype)}
  raise ValueError(f"ggml type {ggml_type} is not kept compact")

def dequantise(p: dict[str, Tensor], ggml_type: int, dtype) -> Tensor:
  """The float weight (rows, blocks, elements per block) that the parts stand for, as a lazy expression."""
  if ggml_type == 8: return p["qs"].cast(dtype) * p["d"].unsqueeze(-1)
  if ggml_type == 2: return (_nibbles(p["qs"]).cast(dtype) - 8) * p["d"].unsqueeze(-1)
  if ggml_type == 3: return _nibbles(p["qs"]).cast(dtype) * p["d"].unsqueeze(-1) + p["m"].unsqueeze(-1)
  if ggml_type == 12:   # 4 chunks of 32 bytes, each two sub-blocks of 32 (low nibbles, high): w = d·sc·q - dmin·m
    q = _nibbles(p["qs"].reshape(*p["qs"].shape[:-1], 4, 32)).reshape(*p["qs"].shape[:-1], 8, 32).cast(dtype)
    d, dmin = p["d"].reshape(*p["d"].shape, 1, 1), p["dmin"].reshape(*p["d"].shape, 1, 1)
    return (q * (d * p["sc"].cast(dtype).unsqueeze(-1)) - dmin * p["mn"].cast(dtype).unsqueeze(-1)).flatten(-2)
  if ggml_type == 14:   # two halves of 128: ql's 64 bytes give quadrants 0,1 (low nibbles) and 2,3 (high); qh's 32
    lead = p["ql"].shape[:-1]   # bytes the two high bits of quadrant j at bits 2j; q - 32, scale per 16 elements
    ql, qh = p["ql"].reshape(*lead, 2, 2, 32), p["qh"].reshape(*lead, 2, 1, 32)
    low = (ql & 15).cat(ql >> 4, dim=-2)
    high = ((qh >> 0) & 3).cat((qh >> 2) & 3, (qh >> 4) & 3, (qh >> 6) & 3, dim=-2)
    q = (low | (high << 4)).cast(dtype) - 32
    w = q.reshape(*lead, 16, 16) * p["sc"].cast(dtype).unsqueeze(-1)
    return w.flatten(-2) * p["d"].unsqueeze(-1)
  raise ValueError(f"ggml type {ggml_type} is not kept compact")

def matmul(weight: Tensor, x: Tensor) -> Tensor: return x @ weight.T

class QuantLinear:
  """A bias-free linear layer (nn.Linear's call) whose weight stays in a GGUF block format: `weight` is the lazy
  dequantised (out, in) matrix. One token: `product(weight, x)` (x @ weight.T unless kernels.use_decode_kernels swaps
  in its matvec) compiles to one kernel reading the packed bytes. Longer inputs (prefill) are compute-bound: there a
  float copy made first feeds tinygrad's matmul faster than unpacking inside it. The state dict holds the parts."""
  def __init__(self, parts: dict[str, Tensor], ggml_type: int, shape: tuple[int, int], dtype):
    self.parts, self.ggml_type, self.shape, self.dtype, self.product = parts, ggml_type, shape, dtype, matmul

  @property
  def weight(self) -> Tensor: return dequantise(self.parts, self.ggml_type, self.dtype).reshape(self.shape)

  def __call__(self, x: Tensor) -> Tensor:
    x = x.cast(self.dtype)
    return self.product(self.weight, x) if x.shape[-2] == 1 else x @ self.weight.contiguous().T

class QuantEmbedding(QuantLinear):
  """nn.Embedding's lookup on a compact table (vocab, dim); a tied classifier reads the same `weight`."""
  def __call__(self, idx: Tensor) -> Tensor:
    hit = Tensor.arange(self.shape[0]).to(idx.device) == idx.unsqueeze(-1)
    return hit.unsqueeze(-1).where(self.weight, 0).sum(-2, dtype=self.dtype)

@dataclass
class Packed:
  """A GGUF tensor not read yet: its bytes (on disk), ggml type and shape (Meta's order: (out, in) for a matrix)."""
  data: Tensor
  ggml_type: int
  shape: tuple[int, ...]

  @property
  def ndim(self) -> int: return len(self.shape)

  def dequantised(self, device: str) -> Tensor:
    """The weight as tinygrad's GGUF loader reads it (lazy): float32 from a quantised type, else the stored dtype."""
    return ggml_data_to_tensor(self.data.to(device), math.prod(self.shape), self.ggml_type).reshape(self.shape)

  def module(self, device: str, dtype=None, embedding: bool = False) -> QuantLinear:
    """The compact layer on `device`, dequantising to `dtype` (default compute_dtype); its parts are lazy: the caller
    realises them (all parts in one schedule read the file's bytes once)."""
    dtype = dtype or compute_dtype(device)
    _, n, nbytes = FORMATS[self.ggml_type]
    blocks = self.data.to(device).reshape(self.shape[0], self.shape[1] // n, nbytes)
    parts = {k: v.contiguous() for k, v in split(blocks, self.ggml_type, dtype).items()}
    return (QuantEmbedding if embedding else QuantLinear)(parts, self.ggml_type, self.shape, dtype)
