# Checked readers of the two raw tensor containers checkpoints come in: safetensors files and PyTorch zip files (read
# without torch, through a restricted unpickler). Every header, record, offset and size is checked against the file
# before a lazy view of any tensor exists; a file that fails gets one CheckpointError sentence naming it.
from __future__ import annotations
import collections, io, json, math, pathlib, pickle, struct, zipfile
from tinygrad import Tensor, dtypes
from engine import PurePythonUnpickler

class CheckpointError(ValueError):
  """A checkpoint that is missing, truncated, corrupt or of a format load() does not know; the message is one
  sentence."""

def one_line(e: Exception) -> str:
  """A library's error message as one line of at most 200 characters (some quote what they read from the file)."""
  return " ".join(str(e).split())[:200]

# the safetensors dtypes a weight can have
_SAFE_DTYPES = {"F32": dtypes.float32, "F16": dtypes.float16, "BF16": dtypes.bfloat16, "F64": dtypes.float64}

def _shape(v, n: int | None = None) -> bool:
  """Is `v` a list of non-negative integers (n of them, or at most 8 as in any weight's shape)?"""
  return isinstance(v, (list, tuple)) and (len(v) <= 8 if n is None else len(v) == n) and \
         all(type(d) is int and d >= 0 for d in v)

def read_safetensors(path) -> dict[str, Tensor]:
  """Lazy views into a .safetensors file on disk, after checking its header as the safetensors library does: a JSON
  object of {name: {dtype, shape, data_offsets}} whose byte ranges match their shapes and tile the data exactly, with
  no gap, overlap or byte past the end. CheckpointError naming the file otherwise."""
  path = pathlib.Path(path)
  if not path.is_file(): raise CheckpointError(f"{path} is missing")
  size = path.stat().st_size
  with open(path, "rb") as f:
    if size < 8: raise CheckpointError(f"{path} is truncated: {size} bytes, too short for a safetensors header")
    n = int.from_bytes(f.read(8), "little")
    if n > size - 8:
      raise CheckpointError(f"{path} is truncated or corrupt: its header claims {n:,} bytes, the file has {size:,}")
    try: header = json.loads(f.read(n))
    except (ValueError, RecursionError) as e:
      raise CheckpointError(f"{path} has a corrupt safetensors header ({e})") from None
  if not isinstance(header, dict): raise CheckpointError(f"{path} has a safetensors header that is not a JSON object")
  entries, data = [], size - 8 - n
  for name, v in header.items():
    if name == "__metadata__": continue
    if not (isinstance(v, dict) and _shape(v.get("shape")) and _shape(v.get("data_offsets"), 2)):
      raise CheckpointError(f"{path} has a malformed safetensors entry for {name!r:.80}")
    if (dt := _SAFE_DTYPES.get(v["dtype"] if isinstance(v.get("dtype"), str) else None)) is None:
      raise CheckpointError(f"{path} stores {name!r:.80} as {v.get('dtype')!r:.20}, "
                            f"not one of the float types {', '.join(_SAFE_DTYPES)}")
    (begin, end), numel = v["data_offsets"], math.prod(v["shape"])
    if end > data:
      raise CheckpointError(f"{path} is truncated: {name!r:.80} ends at data offset {end:,}, "
                            f"the file holds {data:,} bytes of data")
    if end - begin != numel * dt.itemsize:
      raise CheckpointError(f"{path}: the offsets of {name!r:.80} span {end - begin:,} bytes, "
                            f"its shape {tuple(v['shape'])} needs {numel * dt.itemsize:,}")
    entries.append((begin, end, name, dt, v["shape"]))
  pos = 0
  for begin, end, name, *_ in sorted(entries):
    if begin != pos:
      raise CheckpointError(f"{path}: {name!r:.80} starts at data offset {begin:,}, not at {pos:,} "
                            "where the previous tensor ends (overlapping or corrupt offsets)")
    pos = end
  if pos != data:
    raise CheckpointError(f"{path} has {data - pos:,} bytes after its last tensor "
                          "(corrupt header or a file of something else)")
  disk = Tensor(path)
  return {name: disk[8 + n + begin:8 + n + end].bitcast(dt).reshape(shape) for begin, end, name, dt, shape in entries}

# ----- PyTorch zip checkpoints (torch.save since 1.6): <base>/data.pkl pickles the state dict, <base>/data/<key>
# are the raw little-endian storages, every entry stored uncompressed -----
_TORCH_STORAGES = {"FloatStorage": dtypes.float32, "HalfStorage": dtypes.float16, "BFloat16Storage": dtypes.bfloat16}

class _TensorCall:
  """The arguments of one torch._utils._rebuild_tensor(_v2) call in a data.pkl, checked after unpickling."""
  def __init__(self, args: tuple): self.args = args

class _StateDictUnpickler(PurePythonUnpickler):
  """Unpickles a state dict knowing only the globals torch.save writes for tensors: nothing is imported or called and
  anything else is refused; storages stay their persistent ids. The pure-Python unpickler (engine.PurePythonUnpickler
  says why)."""
  def find_class(self, module: str, name: str):
    if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"): return lambda *a: _TensorCall(a)
    if module == "torch" and name in _TORCH_STORAGES: return name
    if (module, name) == ("collections", "OrderedDict"): return collections.OrderedDict
    raise pickle.UnpicklingError(f"it names {module}.{name}, which a state dict of float tensors does not use")
  def persistent_load(self, pid): return pid

  def _refuse(self):
    raise pickle.UnpicklingError("it uses protocol 5's BYTEARRAY8, which allocates the length it reads before reading")
  dispatch = {**PurePythonUnpickler.dispatch, pickle.BYTEARRAY8[0]: _refuse}

# what a damaged pickle stream makes the pure-Python unpickler raise
_UNPICKLING_ERRORS = (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
                      struct.error, RecursionError)

def read_torch_zip(path) -> dict[str, Tensor]:
  """Lazy views of the tensors of a PyTorch zip checkpoint, after checking the zip's structure, data.pkl (its CRC, and
  that it describes only contiguous float tensors) and that every tensor lies inside its storage and the file.
  CheckpointError naming the file otherwise."""
  path, bad = pathlib.Path(path), lambda why: CheckpointError(f"{path} is not a usable PyTorch zip checkpoint: {why}")
  size = path.stat().st_size
  try:
    with zipfile.ZipFile(path) as z:
      infos = {i.filename: i for i in z.infolist()}
      if len(pkls := [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]) != 1:
        raise bad("it has no single <name>/data.pkl")
      if odd := next((n for n, i in infos.items() if i.compress_type != zipfile.ZIP_STORED or i.flag_bits & 1), None):
        raise bad(f"its entry {odd!r:.80} is compressed or encrypted, which torch.save never writes")
      base, pkl = pkls[0][:-len("/data.pkl")], z.read(pkls[0])   # read() checks the CRC
      if f"{base}/byteorder" in infos and z.read(f"{base}/byteorder") != b"little":
        raise bad("its storages are big-endian")
  except (zipfile.BadZipFile, EOFError, ValueError) as e: raise bad(f"{one_line(e)} (truncated or damaged)") from None
  try: state = _StateDictUnpickler(io.BytesIO(pkl)).load()
  except _UNPICKLING_ERRORS as e:
    raise bad(f"its data.pkl cannot be unpickled ({type(e).__name__}: {one_line(e)})") from None
  if not isinstance(state, dict): raise bad("its data.pkl holds no dict of tensors")
  disk, starts, out = Tensor(path), {}, {}
  with open(path, "rb") as f:
    for name, call in state.items():
      if not (isinstance(name, str) and isinstance(call, _TensorCall) and len(call.args) >= 4):
        raise bad(f"its data.pkl holds {name!r:.80}, which is not a tensor")
      pid, offset, shape, stride = call.args[:4]
      if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and pid[1] in _TORCH_STORAGES
              and isinstance(pid[2], str) and type(pid[4]) is int and type(offset) is int and offset >= 0
              and isinstance(shape, tuple) and isinstance(stride, tuple)
              and _shape(shape) and _shape(stride, len(shape))):
        raise bad(f"{name!r:.80} has a malformed tensor record")
      if any(st != math.prod(shape[d + 1:]) for d, st in enumerate(stride) if shape[d] > 1):
        raise bad(f"{name!r:.80} is not stored contiguously")
      dt, key = _TORCH_STORAGES[pid[1]], f"{base}/data/{pid[2]}"
      if (entry := infos.get(key)) is None:
        raise bad(f"{name!r:.80} refers to the storage {key!r:.80}, which the zip lacks")
      if pid[4] * dt.itemsize != entry.file_size:
        raise bad(f"the storage {key!r:.80} holds {entry.file_size:,} bytes, "
                  f"not the {pid[4] * dt.itemsize:,} its record says")
      if (offset + math.prod(shape)) * dt.itemsize > entry.file_size:
        raise bad(f"{name!r:.80} reaches past the end of its storage {key!r:.80}")
      if key not in starts:   # the data begins after the entry's local header: 30 bytes, the name, an extra field
        f.seek(entry.header_offset)
        local = f.read(30 + len(key.encode()))
        # the local header repeats the directory's CRC and sizes (unless a data descriptor follows, flag bit 3; zip64
        # sizes are 0xFFFFFFFF there)
        crc_sizes = (entry.CRC, min(entry.compress_size, 0xFFFFFFFF), min(entry.file_size, 0xFFFFFFFF))
        if len(local) < 30 + len(key.encode()) or local[:4] != b"PK\x03\x04" or \
           local[30:] != key.encode() or not local[6] & 8 and struct.unpack("<3I", local[14:26]) != crc_sizes:
          raise bad(f"the local header of {key!r:.80} does not match the zip's directory (damaged)")
        starts[key] = entry.header_offset + 30 + sum(struct.unpack("<HH", local[26:30]))
        if starts[key] + entry.file_size > size:
          raise bad(f"its storage {key!r:.80} reaches past the end of the file (truncated)")
      begin = starts[key] + offset * dt.itemsize
      out[name] = disk[begin:begin + math.prod(shape) * dt.itemsize].bitcast(dt).reshape(shape)
  return out
