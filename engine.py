# The engine's internals, one named function per trick: everything this project needs from tinygrad (and Python) that
# is not public API lives here, each with why and the version it was checked on (tinygrad 0.14.0, Python 3.11), so an
# upgrade starts by re-checking this file alone (tests/test_engine.py exercises each trick).
from __future__ import annotations
import copyreg, ctypes, dataclasses, mmap, os, pickle, subprocess, tempfile, time
from tinygrad import Device, Tensor, TinyJit, dtypes, function, helpers
from tinygrad.device import Buffer
from tinygrad.engine import worker as compile_workers
from tinygrad.engine.jit import GraphRunner
from tinygrad.engine.realize import runtime_cache
from tinygrad.schedule import schedule_cache
from tinygrad.nn.optim import AdamW, OptimizerGroup
from tinygrad.nn.state import get_state_dict
from tinygrad.runtime.ops_cpu import CPUProgram
from tinygrad.codegen.opt import KernelOptError, Opt, OptOps, heuristic
from tinygrad.tensor import all_tensors
from tinygrad.uop.ops import AxisType, Ops, UOp
from files import atomic_file

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

def product_for_training(dw_from_copies: bool):
  """x @ wᵀ for training, as a function whose kernels read along their outputs (outer_tiles): x times a transposed copy
  of w, the input's gradient g·w (a kernel of its own, not summed into the next), the weight's gᵀ·x; g and x first
  into buffers, else what made them (a norm, a softmax's backward) is recomputed in every tile. dw_from_copies: gᵀ·x
  from copies along the tokens (dot_tiles), for a vocabulary-wide g, whose columns leave the cache. grad_fxn: 0.14.0."""
  def grads(grad: UOp, call: UOp) -> tuple[UOp, UOp]:
    x, w, g = Tensor(call.src[1]), Tensor(call.src[2]), Tensor(grad).contiguous()
    rows, cols = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])   # (tokens, out), (tokens, in)
    dw = rows.T.contiguous() @ cols.T.contiguous().T if dw_from_copies else rows.T @ cols.contiguous()
    return (g @ w).contiguous().uop, dw.uop
  @function(grad_fxn=grads)
  def product(x: Tensor, w: Tensor) -> Tensor: return x @ w.T.contiguous()
  return product

# the classifier's g has a vocabulary's columns (`small`'s 2048: gᵀ·x 24 ms read directly, 16 ms from the copies)
trained_product, classifier_product = product_for_training(False), product_for_training(True)

def scheduled_once(fn):
  """`fn` as a program of its own, scheduled once for every call with the same shapes: a lazy graph holds each layer's
  own copy of the block, which tinygrad schedules anew per layer; as a program, later layers reuse the first one's
  schedule (a 30-layer decode step compiles in a third of the time). For calls that are not differentiated: the
  backward of such a program recomputes its forward. `function`'s precompile flag: 0.14.0."""
  return function(precompile=True, allow_implicit=True)(fn)

def made_from_nothing(t: Tensor) -> bool:
  """Whether `t` reads no realised buffer of a device: only constants, host data (numpy arrays, lists) or buffers not
  allocated yet (Tensor.zeros(...).contiguous()). A view of a realised buffer or an expression over one (fused rows,
  a dequantising weight) is not. UOp.toposort, Ops.BUFFER, the NPY and PYTHON host devices: 0.14.0."""
  return not any(u.op is Ops.BUFFER and u.is_realized and str(u.device).split(":")[0] not in ("NPY", "PYTHON")
                 for u in t.uop.toposort())

def capture_at_once(fn, *reads) -> TinyJit:
  """A TinyJit that captures on its first call (by default it first runs eagerly, scheduling and compiling each kernel
  twice: a quarter of SmolLM2's Generator start-up). What it reads must exist: state made from nothing (AdamW's zero
  moments, a numpy table) would be made anew at every replay, so such tensors of `reads` (model, optimiser) are
  realised first; expressions over realised buffers (a dequantising weight) stay lazy. TinyJit.cnt: 0.14.0."""
  if state := [t for r in reads for t in get_state_dict(r).values() if made_from_nothing(t)]: Tensor.realize(*state)
  jit = TinyJit(fn)
  jit.cnt = 1
  return jit

def compiled_kernels() -> int:
  """How many kernels this process has compiled (realize.runtime_cache: 0.14.0); a test reads it around a replay."""
  return len(runtime_cache)

def kernels_scheduled() -> int:
  """How many kernels the schedules this process has made hold, a schedule reused counted once (tinygrad.schedule's
  schedule_cache: 0.14.0): a test that a block is scheduled once reads it before and after a forward."""
  return sum(len(linear.src) for linear in schedule_cache.values())

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

def use_compile_cache(path: str) -> None:
  """tinygrad's compile cache (one sqlite file) at `path`, for this process and the programs it starts; call it before
  the first compile. helpers.CACHEDB, read at the first connection: 0.14.0."""
  helpers.CACHEDB = os.environ["CACHEDB"] = path

def drop_file_pages(path: str) -> None:
  """tinygrad reads DISK tensors through an mmap of the file, so every page read stays in this process's resident set
  (clean and reclaimable, but counted) until the file is closed; without this a model loaded from one file peaks at
  twice its size in RSS. MADV_DONTNEED unmaps what was read; the page cache keeps the data. DISK's mem: 0.14.0."""
  dev = Device[f"DISK:{path}"]
  if getattr(dev, "size", None) is not None and hasattr(dev, "mem"): dev.mem.madvise(mmap.MADV_DONTNEED)

def scratch_buffers(jit: TinyJit) -> set[int]:
  """The ids of the Buffers a captured TinyJit uses as scratch: the memory planner's arenas (memory_plan_rewrite makes
  one int8 buffer per device and lane for the step's intermediates), which no live Tensor holds. What they hold does
  not outlive a call. Call it while the step's state (weights, caches) is held by live Tensors. CapturedJit._linear,
  Buffer.base, all_tensors: 0.14.0."""
  live = {id(u.buffer.base) for ref in list(all_tensors) if (t := ref()) is not None for u in t.uop.toposort()
          if u.op is Ops.BUFFER and u.is_realized and isinstance(u.buffer, Buffer)}
  used = {id(b): b for u in jit.captured._linear.toposort()
          if u.op is Ops.BUFFER and u.is_realized and isinstance(b := u.buffer.base, Buffer)}
  return {i for i, b in used.items() if i not in live and b.dtype == dtypes.int8}

def save_captured(path, obj, *jits: TinyJit) -> None:
  """Pickle `obj`, which holds captured TinyJits, to `path` (written beside it and renamed into place), so that
  another process can replay them with neither the model's code nor a compile (load_captured). A captured TinyJit
  pickles as its linear program: each kernel and every buffer it reads or writes, those with their contents
  (Buffer.__reduce_ex__ with protocol 5), so weights and a KV cache go to disk, and buffers that two steps share in
  `obj` stay shared (one pickle, one memo). The scratch of `jits` (scratch_buffers) is written as an unallocated buffer
  of its size: for SmolLM2-135M the prefill's arena alone is 552 MB, more than the weights and KV cache together.
  An uncaptured TinyJit refuses to pickle. _TinyJit.__reduce__, CapturedJit.__reduce__, Buffer.__reduce_ex__ and
  Buffer's constructor arguments: 0.14.0."""
  scratch = set().union(*map(scratch_buffers, jits))
  def reduce_buffer(b: Buffer):
    if id(b) not in scratch: return b.__reduce_ex__(5)
    return Buffer, (b.device, b.size, b.dtype, None, b.options, None, b.uop_refcount)
  with atomic_file(path) as f:
    pickler = pickle.Pickler(f, protocol=5)
    pickler.dispatch_table = copyreg.dispatch_table | {Buffer: reduce_buffer}
    pickler.dump(obj)

class FreshBufferUnpickler(pickle.Unpickler):
  """Unpickles UOps with every BUFFER renumbered from this process's counter. tinygrad interns UOps by their content,
  and a BUFFER's identity is its slot number (UOp.unique_num in the process that made it): unpickled as they are, a
  saved buffer whose slot, size and dtype match a live one of this process would silently become that one (its
  pickled contents dropped), and a buffer made later could become a restored one. UOp.__reduce__, the UOpMetaClass
  cache, ParamArg.slot: 0.14.0."""
  def __init__(self, f):
    super().__init__(f)
    self.slots: dict = {}

  def find_class(self, module: str, name: str):
    found = super().find_class(module, name)
    return self.fresh_uop if found is UOp else found

  def fresh_uop(self, op, dtype=None, src=(), arg=None, tag=None, metadata=None, buffer=None) -> UOp:
    if op is Ops.BUFFER:
      arg = dataclasses.replace(arg, slot=self.slots.setdefault(arg.slot, next(UOp.unique_num)))
    return UOp(op, dtype, src, arg, tag, metadata, buffer)

def load_captured(path):
  """What save_captured wrote to `path` (through FreshBufferUnpickler); its TinyJits replay from their first call
  (cnt 2, no function). Unpickling runs whatever code the file names: read only files this program wrote. A file
  that cannot be read back (truncated, damaged, from another tinygrad) raises ValueError with the reason in one line.
  Turns use_cpu_graph on."""
  use_cpu_graph()   # its steps may hold CPU graphs, which replay only with it on
  try:
    with open(path, "rb") as f:
      obj = FreshBufferUnpickler(f).load()
      if f.read(1): raise ValueError("bytes after the end of the pickle")
    return obj
  except Exception as e:   # a damaged pickle can fail in any way (EOFError, UnpicklingError, AttributeError, ...)
    raise ValueError(f"{path} could not be read back ({type(e).__name__}: {e})") from None

# Python's pure-Python unpickler: its dispatch table can be changed per class, and it keeps its memo in a dict, where
# the C one allocates an array as long as the largest memo index a stream names (a corrupt index asks for GBs).
# pickle._Unpickler: Python 3.11.
PurePythonUnpickler = pickle._Unpickler

# ***** both cores, and a captured step's CPU kernels in one C loop (cpu_graph.c) *****
# tinygrad 0.14's CPUProgram.__call__ runs the per-core slices of a THREAD kernel (its `core_id` argument) one after
# another on the calling thread (0.12 and 0.13 ran them on a thread pool), and its CPU device has no graph, so every
# kernel of a replayed step goes through the generic executor (a pattern rewrite, parameter resolution, statistics).
# cpu_graph.c does both jobs in C: a table of kernels called in order, each kernel's slices shared with a pool of
# worker threads. CPUProgram's addr, lvp, runtimevars and call convention: 0.14.0.
SERIAL_CALL = CPUProgram.__call__
SLICES, CORE, ARGS, MAX_ARGS = 1, 2, 3, 32   # cpu_graph.c's table row: function, slices, core_id's position, arguments
ROW = ARGS + MAX_ARGS
RUNTIME = {"lib": None, "spread": False}

def cpu_runtime() -> ctypes.CDLL:
  """cpu_graph.c built with clang (tinygrad's CPU backend calls it too) and loaded, once per process."""
  if RUNTIME["lib"] is None:
    with tempfile.TemporaryDirectory() as tmp:
      out = os.path.join(tmp, "cpu_graph.so")
      subprocess.run(["clang", "-O2", "-shared", "-fPIC", "-pthread", "-o", out,
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_graph.c")], check=True,
                     capture_output=True)
      lib = ctypes.CDLL(out)
    lib.cpu_graph_run.argtypes, lib.cpu_graph_run.restype = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int], None
    lib.cpu_graph_worker_slices.restype = ctypes.c_uint64
    lib.cpu_graph_workers(max((os.cpu_count() or 1) - 1, 0))
    RUNTIME["lib"] = lib
  return RUNTIME["lib"]

def kernel_row(prg: CPUProgram, args: list[int], slices: int) -> list[int]:
  """A kernel's row of cpu_graph.c's table: its function, slice count, core_id's argument position, arguments."""
  if prg.lvp or len(args) > MAX_ARGS: raise ValueError(f"{prg.name}: not a plain C kernel of at most {MAX_ARGS} args")
  return [prg.addr, slices, prg.runtimevars.get("core_id", MAX_ARGS)] + args + [0] * (MAX_ARGS - len(args))

def run_rows(table, n: int) -> None: cpu_runtime().cpu_graph_run(table, n, RUNTIME["spread"])

def spread_call(prg: CPUProgram, *bufs, global_size=(1, 1, 1), local_size=(1, 1, 1), vals=(), wait=False,
                timeout=None):
  """CPUProgram.__call__ with the slices shared by every core (cpu_graph.c's pool)."""
  if prg.runtimevars.get("core_id") is None or prg.lvp or global_size[0] < 2:
    return SERIAL_CALL(prg, *bufs, global_size=global_size, local_size=local_size, vals=vals, wait=wait)
  st = time.perf_counter()
  run_rows((ctypes.c_uint64 * ROW)(*kernel_row(prg, [b.va_addr for b in bufs] + [v or 0 for v in vals],
                                                global_size[0])), 1)
  return time.perf_counter() - st if wait else None

def use_all_cores(on: bool = True) -> None:
  """Run the slices of tinygrad's multi-core CPU kernels on every core (on=False: one after another, tinygrad 0.14's
  way), also inside CPUGraph. A slice is claimed by whichever thread is free first, so on a machine whose other cores
  are busy the calling thread runs them all itself. Other devices are not touched. A machine whose CPU backend
  cannot start (no clang) has no kernels to spread: the command's own device check reports that."""
  try: Device["CPU"]
  except Exception: return   # opening the device can fail in any way (a missing compiler, a bad driver)
  cpu_runtime()
  RUNTIME["spread"] = on
  CPUProgram.__call__ = spread_call if on else SERIAL_CALL

def worker_slices() -> int:
  """How many kernel slices the worker threads (not the calling thread) have run so far (a test's evidence)."""
  return cpu_runtime().cpu_graph_worker_slices()

# ***** written-down kernel options *****
# tinygrad 0.14's heuristic (codegen/opt/heuristic.py) upcasts a matvec's output rows by 3 or 4 when there are >= 1024
# of them; on the CPU that made kernels.lane_sum's matvecs 2-2.8x slower than one row at a time (README, "Kernel
# options"). apply_opts imports hand_coded_optimizations from its module at each call, so replacing it there takes
# effect for every kernel compiled afterwards, here and, through their initializer, in tinygrad's compile worker
# processes (engine/worker.py's _init_worker, looked up when the pool starts). Checked on tinygrad 0.14.0.
HEURISTIC, WORKER_INIT = heuristic.hand_coded_optimizations, compile_workers._init_worker

def first_that_applies(k, opts):
  """`k` with the first of `opts` that applies to it; as it is when none does."""
  for opt in opts:
    try:
      out = k.copy()
      out.apply_opt(opt)
      return out
    except KernelOptError: pass
  return k

def over_cores(k, n_max: int):
  """`k` (options applied) with THREAD on its first output axis that the most cores, up to n_max, divide; as it is
  when none does or it is threaded already."""
  if not (k.ren.has_threads and k.ren.global_max is not None) or AxisType.THREAD in k.axis_types: return k
  return first_that_applies(k, (Opt(OptOps.THREAD, axis, n) for n in range(min(n_max, k.ren.global_max[0]), 1, -1)
                                for axis, size in enumerate(k.full_shape)
                                if isinstance(size, int) and size % n == 0
                                and k.axis_types[axis] in (AxisType.GLOBAL, AxisType.WEAK)))

def reused_rows(k, amount: int = 4):
  """`k` with its longest static output axis that `amount` divides upcast by it (several queries or heads per key
  read); as it is when none is."""
  axes = [a for a, (size, t) in enumerate(zip(k.full_shape, k.axis_types))
          if isinstance(size, int) and size % amount == 0 and t in (AxisType.GLOBAL, AxisType.WEAK)]
  return first_that_applies(k, (Opt(OptOps.UPCAST, a, amount) for a in sorted(axes, key=lambda a: -k.full_shape[a])))

def product_reads(k) -> list[UOp] | None:
  """The indices of the reads that run along the reduction of `k` when it is one product (one reduction, a sum); None
  for other kernels. Scheduler.rngs, bufs, INDEX.get_idx: 0.14.0."""
  reduces = k.ranges_of(AxisType.REDUCE)
  if len(reduces) != 1 or k.reduceop is None or k.reduceop.arg[0] is not Ops.ADD: return None
  return [i for b in k.bufs if reduces[0] in (i := b.src[1].get_idx()).backward_slice]

def own_axes(k, reads: list[UOp], i: int, step: int) -> list[int]:
  """Output axes of `k`, sizes a multiple of `step`, along which reads[i] varies and no other read does."""
  others = [r.backward_slice for r in reads if r is not reads[i]]
  return [a for a in k.upcastable_dims if isinstance(size := k.full_shape[a], int) and size % step == 0
          and (r := k.rngs[a]) in reads[i].backward_slice and all(r not in o for o in others)]

def tiled(k, upcasts: list[tuple[int, int]]):
  """`k` with (axis, amount) upcasts, its reduction unrolled by 4, over the cores; None if these do not apply."""
  try:
    mine = k.copy()
    for a, n in sorted(upcasts): mine.apply_opt(Opt(OptOps.UPCAST, a, n))
    mine.apply_opt(Opt(OptOps.UNROLL, 0, 4))
    return over_cores(mine, 2 ** 31)
  except KernelOptError: return None

def dot_tiles(k):
  """`k` as 4 × 4 tiles when it is one product whose reads along the reduction are of consecutive elements (x @ Wᵀ over
  tokens, q·kᵀ), None otherwise; tiled along an axis of each operand's own (not a batch both share), so each value
  loaded serves 4 outputs. The heuristic's 4 × 3: 28 against 51 GFLOP/s for SmolLM2's w1 over 32 tokens."""
  if (reads := product_reads(k)) is None: return None
  reduce = k.ranges_of(AxisType.REDUCE)[0]
  if any(reduce in i.backward_slice and not any(c is reduce for c in i.split_uop(Ops.ADD)) for i in reads): return None
  own = [own_axes(k, reads, i, 4) for i in range(len(reads))]
  outs = [a for a in k.upcastable_dims if isinstance(k.full_shape[a], int) and k.full_shape[a] % 4 == 0]
  axes = [own[0][0], own[1][0]] if len(own) == 2 and all(own) else outs[:2]
  return tiled(k, [(a, 4) for a in axes]) if len(axes) == 2 else None

def outer_tiles(k):
  """`k` as 4 × 16 tiles when it is one product of two reads, one consecutive along an output axis (x @ W, W (in, out);
  gᵀ·x), None otherwise: per step 16 values of that read times 4 of the other, which clang keeps in vector registers.
  gᵀ·x for 352 × 128 over 1,024 tokens: 46 against the heuristic's 23 GFLOP/s."""
  if (reads := product_reads(k)) is None or len(reads) != 2: return None
  for i in (0, 1):
    rows = [a for a in own_axes(k, reads, i, 16) if any(c is k.rngs[a] for c in reads[i].split_uop(Ops.ADD))]
    if rows and (cols := own_axes(k, reads, 1 - i, 4)): return tiled(k, [(rows[-1], 16), (cols[0], 4)])
  return None

def kernel_options(k):
  """Options for three kinds of kernels on the CPU. A kernel that sums a (rows, K/lanes, lanes) product over its last
  two axes into `rows` outputs (a one-token lane_sum matvec): the lanes unrolled, rows split over cores, no row
  upcast. A kernel over a symbolic length (attention over the cache, in decode and prefill): the heuristic's options
  (which upcast nothing when a length is symbolic), a static axis upcast (reused_rows) and split over cores (the
  heuristic splits only the first axis, which for attention is 3 heads). A product read along its reduction
  (dot_tiles) or along an output (outer_tiles). Others: the heuristic's."""
  shape, types = k.full_shape, k.axis_types
  if k.ren.target.device != "CPU": return HEURISTIC(k)
  if any(not isinstance(s, int) for s in shape): return over_cores(reused_rows(HEURISTIC(k)), 2 ** 31)
  if not (len(shape) == 3 and types[1:] == [AxisType.REDUCE, AxisType.REDUCE] and types[0] is not AxisType.REDUCE
          and shape[2] <= 32):
    return dot_tiles(k) or outer_tiles(k) or HEURISTIC(k)
  try:
    mine = k.copy()
    mine.apply_opt(Opt(OptOps.UNROLL, 1, 0))
    # the heuristic's thread count: the most that divides the rows with >= 128K multiply-adds each
    return over_cores(mine, shape[0] * shape[1] * shape[2] >> 17)
  except KernelOptError: return HEURISTIC(k)

def options_worker_init():
  """A compile worker's start-up: tinygrad's, then kernel_options in place of the heuristic."""
  WORKER_INIT()
  heuristic.hand_coded_optimizations = kernel_options

def use_kernel_options(on: bool = True) -> None:
  """Compile CPU kernels with kernel_options from now on (on=False: the heuristic's): the one-token matvecs, attention
  over the cache, products read along their reduction. Kernels compiled before keep their options; BEAM, when asked
  for, still searches."""
  heuristic.hand_coded_optimizations = kernel_options if on else HEURISTIC
  if compile_workers._init_worker is not (init := options_worker_init if on else WORKER_INIT):
    compile_workers._init_worker = init
    compile_workers.terminate_worker_pool()   # running workers started with the other setting

def stop_compile_workers() -> None:
  """End tinygrad's pool of compile processes now rather than in the interpreter's exit, where its handler threads may
  still be replacing workers (a server's Ctrl-C)."""
  compile_workers.terminate_worker_pool()

def eta_from_here(bar, seconds_per_step: float) -> None:
  """Make tinygrad's tqdm estimate the time left from the steps after the compiled ones: it divides the time since
  its start by the share done, so the first steps' compilation would inflate the ETA for the whole run. Its start
  time `st`: 0.14.0."""
  bar.st = time.perf_counter() - bar.n * seconds_per_step

# ***** a captured step's CPU kernels in one plain loop *****

GRAPHED = {"kernels": 0}   # kernels put into a CPUGraph so far (a test's evidence)

class CPUGraph(GraphRunner):
  """A TinyJit's run of CPU kernels replayed by cpu_graph.c: every kernel's row (function, buffers, slices) is
  written once, and a call only puts in the step's input buffers, the values of its symbolic variables and any
  symbolic slice count, then makes one C call. GraphRunner's calls, runtimes, uop_replace, var_vals_replace,
  launch_dims_replace, ProgramInfo.globals, HCQBuffer.va_addr: 0.14.0."""
  def __init__(self, linear, input_uops=()):
    super().__init__(linear, input_uops)
    rows, self.swaps, self.var_slots = [], [], []
    calls = zip(self.calls, self.runtimes, self.uop_replace)
    for j, ((_, prg, bufs, device_vars), runtime, replace) in enumerate(calls):
      info, base = prg.arg, j * ROW + ARGS
      now = {v: 0 for v in self.vars} | device_vars   # the variables' values are put in at each call
      vals = [0 if v is None else v for v in info.vals(now)]
      rows += kernel_row(runtime, [bufs[i]._buf.va_addr for i in info.globals] + vals, info.launch_dims(now)[0][0])
      self.swaps += [(base + info.globals.index(pos), slot) for pos, slot in replace if pos in info.globals]
      self.var_slots += [(base + len(info.globals) + i, v) for i, v in self.var_vals_replace.get(j, [])]
    self.slice_slots = {j * ROW + SLICES: j for j in self.launch_dims_replace}
    self.table = (ctypes.c_uint64 * len(rows))(*rows)
    GRAPHED["kernels"] += len(self.calls)

  def __call__(self, input_uops, var_vals: dict[str, int], wait=False):
    st, table = time.perf_counter(), self.table
    for k, slot in self.swaps: table[k] = input_uops[slot].buffer.ensure_allocated()._buf.va_addr
    vals = [var_vals[v] for v in self.vars]
    for k, v in self.var_slots: table[k] = vals[v]
    if self.slice_slots:
      dims = {j: g[0] for j, g, _ in self.updated_launch_dims(var_vals)}
      for k, j in self.slice_slots.items(): table[k] = dims[j]
    run_rows(table, len(self.calls))
    return time.perf_counter() - st if wait else None

def use_cpu_graph(on: bool = True) -> bool:
  """Steps captured from now on replay their CPU kernels through CPUGraph (on=False: tinygrad's executor, one kernel
  at a time). A step captured with it needs it on to replay, also after load_captured. A machine whose CPU backend
  cannot start (no clang) has nothing to graph: the command's own device check reports that. Only the CPU device, not
  the virtual CPU:1.. of a multi-device test. Returns whether it was on before. Compiled.graph: 0.14.0."""
  try: cpu = Device["CPU"]
  except Exception: return False   # opening the device can fail in any way (a missing compiler, a bad driver)
  was, cpu.graph = cpu.graph is CPUGraph, CPUGraph if on else None
  return was
