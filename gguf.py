# The GGUF container (llama.cpp's model file): a bounds-checked reader of its header (metadata key/values and tensor
# infos) and the writer the tests and tokenizer files use. Tensor bytes are dequantised by tinygrad (checkpoint.py).
from __future__ import annotations
import mmap, pathlib, struct
from dataclasses import dataclass

class GGUFError(ValueError):
  """A file that is not a well-formed GGUF header; the message is one sentence (without the file name)."""

# ggml tensor types read here: {type: (name, elements per block, bytes per block)}, from ggml's type traits
GGML_TYPES = {0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
              6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 12: ("Q4_K", 256, 144),
              13: ("Q5_K", 256, 176), 14: ("Q6_K", 256, 210)}
MAX_DIMS = 4                                   # GGML_MAX_DIMS

# metadata value types: {code: struct format} for scalars; 8 is a string, 9 an array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9

@dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]     # ggml order: the fastest-varying dimension first
  ggml_type: int
  start: int                 # absolute byte offset in the file
  nbytes: int

@dataclass(frozen=True)
class Header:
  version: int
  metadata: dict
  tensors: list[TensorInfo]
  file_size: int

class _Cursor:
  def __init__(self, buf, size: int): self.buf, self.size, self.pos = buf, size, 0

  def take(self, n: int, what: str) -> bytes:
    if n < 0 or self.pos + n > self.size:
      raise GGUFError(f"is truncated: {what} at byte {self.pos} needs {n} bytes, the file has {self.size}")
    self.pos += n
    return self.buf[self.pos - n:self.pos]

  def scalar(self, fmt: str, what: str): return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

  def string(self, what: str) -> str:
    n = self.scalar("<Q", what)
    if n > self.size - self.pos:
      raise GGUFError(f"claims a {n:,}-byte string for {what}, "
                      f"more than the {self.size - self.pos:,} bytes left (truncated or corrupt)")
    try: return self.take(n, what).decode()
    except UnicodeDecodeError: raise GGUFError(f"has a {what} that is not UTF-8") from None

  def value(self, typ: int, what: str, depth: int = 0):
    if typ in _SCALARS: return self.scalar(_SCALARS[typ], what)
    if typ == STRING: return self.string(what)
    if typ == ARRAY and depth == 0:
      elem, n = self.scalar("<I", what), self.scalar("<Q", what)
      if n > self.size - self.pos:
        raise GGUFError(f"claims {n:,} array elements for {what}, "
                        f"more than the {self.size - self.pos:,} bytes left (truncated or corrupt)")
      if elem in _SCALARS:   # one unpack for a whole numeric array (token types, scores)
        fmt = _SCALARS[elem][1]
        return list(struct.unpack(f"<{n}{fmt}", self.take(n * struct.calcsize(fmt), what)))
      return [self.value(elem, what, depth + 1) for _ in range(n)]
    raise GGUFError(f"has an unknown metadata value type {typ} for {what}")

def read_header(path) -> Header:
  """The metadata and tensor infos of a GGUF file, every count, length, shape and offset checked against the file's
  size before anything is allocated for it, tensors not overlapping; GGUFError otherwise."""
  path = pathlib.Path(path)
  with open(path, "rb") as f:
    size = f.seek(0, 2)
    if size < 24: raise GGUFError(f"is too short for a GGUF header ({size} bytes)")
    with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
      c = _Cursor(buf, size)
      if c.take(4, "the magic") != b"GGUF": raise GGUFError("does not start with the GGUF magic")
      version = c.scalar("<I", "the version")
      n_tensors, n_kv = c.scalar("<Q", "the tensor count"), c.scalar("<Q", "the metadata count")
      if version not in (2, 3): raise GGUFError(f"is GGUF version {version}; only versions 2 and 3 are read")
      if n_kv > size or n_tensors > size:
        raise GGUFError(f"claims {n_kv:,} metadata entries and {n_tensors:,} tensors, more than the file holds")
      kv = {}
      for i in range(n_kv):
        key = c.string(f"metadata key {i}")
        kv[key] = c.value(c.scalar("<I", f"the type of {key!r}"), repr(key))
      raw = []
      for i in range(n_tensors):
        name = c.string(f"tensor name {i}")
        n_dims = c.scalar("<I", f"the dimensions of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
          raise GGUFError(f"gives tensor {name!r} {n_dims} dimensions (1 to {MAX_DIMS} allowed)")
        shape = tuple(c.scalar("<Q", f"the shape of {name!r}") for _ in range(n_dims))
        raw.append((name, shape, c.scalar("<I", f"the type of {name!r}"), c.scalar("<Q", f"the offset of {name!r}")))
      align = kv.get("general.alignment", 32)
      if not isinstance(align, int) or not 1 <= align <= 1 << 16: raise GGUFError(f"has an alignment of {align!r}")
      data_start = -(-c.pos // align) * align
  tensors = []
  for name, shape, typ, offset in raw:
    if typ not in GGML_TYPES:
      raise GGUFError(f"stores tensor {name!r} as ggml type {typ}, "
                      f"which is not one of {', '.join(t[0] for t in GGML_TYPES.values())}")
    _, block, block_bytes = GGML_TYPES[typ]
    n = 1
    for d in shape:
      if d < 1: raise GGUFError(f"gives tensor {name!r} the shape {shape}")
      n *= d
    if n % block:
      raise GGUFError(f"gives tensor {name!r} {n} elements, not a whole number of {GGML_TYPES[typ][0]} blocks")
    nbytes = n // block * block_bytes
    if offset % align:
      raise GGUFError(f"places tensor {name!r} at offset {offset:,}, not a multiple of the alignment {align}")
    if data_start + offset + nbytes > size:
      raise GGUFError(f"places tensor {name!r} ({nbytes:,} bytes at offset {offset:,}) "
                      f"outside the file's {size:,} bytes (truncated?)")
    tensors.append(TensorInfo(name, shape, typ, data_start + offset, nbytes))
  if len({t.name for t in tensors}) != len(tensors): raise GGUFError("names a tensor twice")
  end = data_start
  # writers lay tensors out one after another: overlap means corrupt offsets
  for t in sorted(tensors, key=lambda t: t.start):
    if t.start < end:
      raise GGUFError(f"places tensor {t.name!r} at offset {t.start - data_start:,}, "
                      "inside the tensor before it (corrupt offsets)")
    end = t.start + t.nbytes
  return Header(version, kv, tensors, size)

# ***** writing (tests, and tokenizer-only files that carry a GGUF vocabulary into our checkpoint format) *****

def _pack_value(v) -> tuple[int, bytes]:
  if isinstance(v, bool): return 7, struct.pack("<?", v)
  if isinstance(v, int): return (4, struct.pack("<I", v)) if 0 <= v < 1 << 32 else (11, struct.pack("<q", v))
  if isinstance(v, float): return 6, struct.pack("<f", v)
  if isinstance(v, str): return STRING, struct.pack("<Q", len(v.encode())) + v.encode()
  if isinstance(v, (list, tuple)):
    items = [_pack_value(x) for x in v]
    elem = items[0][0] if items else 4
    if any(t != elem for t, _ in items): raise ValueError("a GGUF array holds values of one type")
    return ARRAY, struct.pack("<IQ", elem, len(items)) + b"".join(b for _, b in items)
  raise ValueError(f"no GGUF metadata type for {type(v).__name__}")

def pack(metadata: dict, tensors: list[tuple[str, tuple[int, ...], int, bytes]] = (), align: int = 32) -> bytes:
  """A GGUF v3 file: metadata key/values and (name, ggml-order shape, ggml type, raw bytes) tensors."""
  kv = b"".join(struct.pack("<Q", len(k.encode())) + k.encode() + struct.pack("<I", t) + b for k, (t, b) in
                ((k, _pack_value(v)) for k, v in metadata.items()))
  infos, blobs, offset = b"", b"", 0
  for name, shape, typ, data in tensors:
    infos += struct.pack("<Q", len(name.encode())) + name.encode() + \
             struct.pack(f"<I{len(shape)}QIQ", len(shape), *shape, typ, offset)
    pad = -len(data) % align
    blobs += data + b"\0" * pad
    offset += len(data) + pad
  head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(metadata)) + kv + infos
  return head + b"\0" * (-len(head) % align) + blobs
