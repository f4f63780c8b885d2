# The engine's internals, one named function per trick: everything this project needs from tinygrad (and Python) that
# is not public API lives here, each with why and the version it was checked on (tinygrad 0.14.0, Python 3.11), so an
# upgrade starts by re-checking this file alone (tests/test_engine.py exercises each trick).
from __future__ import annotations
import mmap, pickle
from tinygrad import Device, Tensor, TinyJit, function
from tinygrad.engine.realize import runtime_cache
from tinygrad.nn.optim import AdamW, OptimizerGroup

def write_then_read(buf: Tensor, region: Tensor, value: Tensor) -> Tensor:
  """`region` (a slice of `buf`) := value, and `buf` as it is after the write, as one graph: no realize in between,
  so a TinyJit replays the write too (tinygrad's own llm writes its KV cache this way). UOp.after/store: 0.14.0."""
  return Tensor(buf.uop.after(region.uop.store(value.cast(buf.dtype).uop)))

def split_axis(t: Tensor) -> int | None:
  """The axis a multi-device tensor is split along (None: copied to every device). The UOp's axis: 0.14.0."""
  return t.uop.axis

def recomputed(fn):
  """`fn` as a program of its own whose backward recomputes it (activation checkpointing): tinygrad merges identical
  lazy nodes, so calling a block twice would reuse the first forward. `function`'s precompile flags: 0.14.0."""
  return function(precompile=True, precompile_backward=True)(fn)

def capture_at_once(fn) -> TinyJit:
  """A TinyJit that captures on its first call. By default TinyJit runs a function eagerly once first, a warm-up that
  schedules and compiles the same kernels a second time; steps that read only buffers already realised (weights,
  cache, inputs) have nothing left for a warm-up to do. TinyJit.cnt: 0.14.0."""
  jit = TinyJit(fn)
  jit.cnt = 1
  return jit

def compiled_kernels() -> int:
  """How many kernels this process has compiled so far (tinygrad.engine.realize.runtime_cache: 0.14.0): a test that a
  replay compiles nothing new reads it before and after."""
  return len(runtime_cache)

def optimizers(opt: OptimizerGroup) -> list[AdamW]:
  """The AdamW optimisers of a group (OptimizerGroup.optimizers: 0.14.0)."""
  return list(opt.optimizers)

def adam_state(opt: OptimizerGroup) -> dict[str, Tensor]:
  """AdamW's moments and bias-correction powers, by optimiser and position: what a resumed run must restore to continue
  exactly. AdamW's b1_t, b2_t, m, v attributes: 0.14.0."""
  out: dict[str, Tensor] = {}
  for i, o in enumerate(optimizers(opt)):
    out |= {f"{i}.b1_t": o.b1_t, f"{i}.b2_t": o.b2_t}
    out |= {f"{i}.m.{j}": t for j, t in enumerate(o.m)} | {f"{i}.v.{j}": t for j, t in enumerate(o.v)}
  return out

def drop_file_pages(path: str) -> None:
  """tinygrad reads DISK tensors through an mmap of the file, so every page read stays in this process's resident set
  (clean and reclaimable, but counted) until the file is closed; without this a model loaded from one file peaks at
  twice its size in RSS. MADV_DONTNEED unmaps what was read; the page cache keeps the data. DISK device's mem: 0.14.0."""
  dev = Device[f"DISK:{path}"]
  if getattr(dev, "size", None) is not None and hasattr(dev, "mem"): dev.mem.madvise(mmap.MADV_DONTNEED)

# Python's pure-Python unpickler: its dispatch table can be changed per class, and it keeps its memo in a dict, where
# the C one allocates an array as long as the largest memo index a stream names (a corrupt index asks for GBs).
# pickle._Unpickler: Python 3.11.
PurePythonUnpickler = pickle._Unpickler
