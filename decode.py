"""The decoding library: sampling on the device (Meta's temperature and nucleus top-p, optionally top-k first),
counter-based randomness, and the Generator, which holds one model's KV cache and two TinyJit-compiled steps over it
(a prefill of a fixed-size chunk and a one-token decode, both at a symbolic position), so that only the sampled id
crosses to the host. generate.py, serve.py, eval.py and train.py decode through it.
"""
from __future__ import annotations
import math, resource, secrets, sys, time
from dataclasses import dataclass
from tinygrad import Context, Tensor, UOp, dtypes
import llama, parallel
from engine import capture_at_once, load_captured, save_captured
from progress import phase

# ***** sampling on the device *****

def keep_top(probs: Tensor, weight: Tensor, target: Tensor, fan: int = 16) -> Tensor:
  """Zero every probability below τ, the largest threshold whose kept set {i: probs_i ≥ τ} still has
  Σ weight ≥ target. With weight = probs that kept set is the smallest set of tokens whose mass reaches target
  (top-p); with weight = 1 it is the target most probable tokens (top-k); tokens tied with τ all stay.
  No sort (a bitonic sort of a 49152-token vocabulary is far too slow in tinygrad): non-negative float32
  values order like their bit patterns read as integers, so a search over those integers finds τ exactly.
  Each round tests fan-1 thresholds in one reduction and narrows the interval [lo, hi) fan-fold: 9 rounds
  cover the 2^30 patterns up to 1.0 (a plain bisection needs 30 rounds, and on the CPU each kernel launch
  costs more than the arithmetic for a small vocabulary)."""
  lo = Tensor.zeros(probs.shape[0], 1, dtype=dtypes.int32)                # 0.0 keeps everything: always valid
  hi = Tensor.full((probs.shape[0], 1), 0x3F800001, dtype=dtypes.int32)   # just above 1.0 keeps nothing
  j = Tensor.arange(1, fan, dtype=dtypes.int32).reshape(1, fan - 1, 1)
  for _ in range(-(-30 // (fan.bit_length() - 1)) + 1):
    step = (hi - lo + fan - 1) // fan                                      # ≥ 1; lo + j·step < 2^31
    tau = (lo.unsqueeze(1) + j * step.unsqueeze(1)).minimum(hi.unsqueeze(1))  # (B, fan-1, 1)
    mass = (probs.unsqueeze(1) >= tau.bitcast(dtypes.float32)).where(weight.unsqueeze(1), 0).sum(-1)
    c = (mass >= target).cast(dtypes.int32).sum(-1, keepdim=True)         # thresholds still valid (monotone)
    lo, hi = (lo + c * step).contiguous(), (lo + (c + 1) * step).minimum(hi).contiguous()
  return (probs >= lo.bitcast(dtypes.float32)).where(probs, 0)

@dataclass(frozen=True)
class Sampling:
  temperature: float = 0.6    # Meta's example defaults (example_text_completion.py): t = 0.6, top-p = 0.9
  top_p: float = 0.9
  top_k: int = 0              # 0: off

  def check(self) -> Sampling:
    if not self.temperature >= 0: raise ValueError(f"temperature must be >= 0, got {self.temperature}")
    if not 0 < self.top_p <= 1: raise ValueError(f"top-p must be in (0, 1], got {self.top_p}")
    if self.top_k < 0: raise ValueError(f"top-k must be >= 0 (0 turns it off), got {self.top_k}")
    return self

  def kind(self) -> tuple[bool, bool, bool]:
    """What changes sample()'s graph, and so the compiled steps: greedy or not, top-k on, top-p on."""
    return self.temperature == 0, self.top_k > 0, self.top_p < 1

  def knobs(self) -> Tensor:
    """The values as one device buffer, an input of the compiled step: one compilation serves every value."""
    return Tensor([1 / self.temperature if self.temperature else 0.0, self.top_p,
                   float(self.top_k)], dtype=dtypes.float32).realize()

def sample(logits: Tensor, knobs: Tensor, s: Sampling, uniform: Tensor | None = None) -> Tensor:
  """logits (B, V) → one token id per row, (B, 1) int32, drawn on the device. `s` picks the graph
  (greedy or not, which filters); `knobs` (from s.knobs()) carries the numbers; `uniform` (B, V) in (0, 1)
  is the randomness (see Rng), unused when greedy."""
  if s.temperature == 0: return logits.argmax(-1, keepdim=True).cast(dtypes.int32)
  probs = (logits * knobs[0]).softmax(-1)
  fan = 16 if logits.shape[-1] <= 8192 else 4
  if s.top_k and s.top_k < logits.shape[-1]:
    probs = keep_top(probs, probs.ones_like(), knobs[2], fan)
    probs = probs / probs.sum(-1, keepdim=True)           # top-p then applies to the renormalised top-k set
  if s.top_p < 1: probs = keep_top(probs, probs, knobs[1], fan)
  # exponential race: argmax_i p_i / E_i with E_i = -log U_i ~ Exp(1) picks i with probability p_i / Σp, so
  # the kept probabilities need neither renormalising nor a cumulative sum (nor a sort)
  return (probs / -uniform.log()).argmax(-1, keepdim=True).cast(dtypes.int32)

class Rng:
  """Counter-based randomness on the device: draw k is threefry(k << 32 | i) under the key `seed`, so a seed
  fixes every draw of a run, and the state is one small buffer that the compiled step advances itself.
  `state`: such a buffer to keep using (the one a restored compiled step holds), reseeded in place."""
  def __init__(self, seed: int | None, device: str | None = None, state: Tensor | None = None):
    self.state = Tensor([0, 0], dtype=dtypes.uint32, device=device).realize() if state is None else state
    self.reseed(seed)

  def reseed(self, seed: int | None):
    """Start over from draw 0 under the key `seed` (None: a random one), in the same buffer."""
    self.seed = secrets.randbits(32) if seed is None else seed % 2**32
    self.state.assign(Tensor([self.seed, 0], dtype=dtypes.uint32, device=self.state.device)).realize()   # key, counter

  def uniform(self, *shape: int) -> Tensor:
    """Uniform floats in (0, 1), a new set at every realisation (also on every replay of a TinyJit)."""
    state = self.state.assign(self.state + Tensor([0, 1], dtype=dtypes.uint32))
    n = math.prod(shape)
    x = ((state[1:2] - 1).cast(dtypes.uint64) << 32) | Tensor.arange(n, dtype=dtypes.uint32).cast(dtypes.uint64)
    bits = x.threefry(state[0:1].cast(dtypes.uint64))
    return (((bits >> 40).cast(dtypes.float32) + 0.5) * 2.0 ** -24).reshape(shape)   # 24 random bits, never 0 or 1

# ***** the decoding loop *****

def common_prefix(a, b) -> int:
  """How many leading items two sequences share (the index of the first difference): what a KV cache can keep."""
  return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

def prefill_chunk(model: llama.Transformer) -> int:
  """Tokens per prefill step: 32 on a CPU, where a longer chunk gains little and pads a short prompt with work; 256
  on an accelerator, where one chunk of 256 ran 3× faster than eight of 32 (README, GPU benchmarks)."""
  return 32 if parallel.model_backend(model) == "CPU" else 256

class Generator:
  """The KV cache of one model and two compiled steps over it: a prefill of `chunk` tokens and a one-token decode.
  Both run the same function; `start_pos` is a bound symbolic variable, so the position can advance without
  recompiling. `pos` counts the tokens already in the cache.
  A model on several devices (checkpoint.load(device=(d0, d1, ...)): tensor parallel, §2.4) gets each step's tokens
  copied to all of them, and its logits (split by vocabulary) gathered onto the first, where sampling runs.
  Call kernels.use_decode_kernels(model) first for the fast one-token kernels. `beam` > 0 searches kernel options for
  the two steps' kernels alone (the first run searches, later ones read tinygrad's cache)."""
  def __init__(self, model: llama.Transformer, max_context: int, sampling: Sampling, seed: int | None = None,
               chunk: int | None = None, beam: int = 0):
    self.model, self.max_context, self.sampling, self.beam = model, max_context, sampling.check(), beam
    self.chunk = min(chunk or prefill_chunk(model), max_context)
    self.devices = parallel.model_devices(model)
    # the last prefill chunk is padded to full size: the cache has room for its tail (padding is written past
    # the real tokens, never attended to, and overwritten by later tokens)
    model.init_cache(1, max_context + self.chunk - 1)
    self.rng = Rng(seed, self.devices[0])
    self.knobs = sampling.knobs().to(self.devices[0]).realize()
    self.one = Tensor([1.0], device=self.devices[0]).realize()
    self.prefill_step, self.decode_step = capture_at_once(self._step, model), capture_at_once(self._step, model)
    self.v_pos = UOp.variable("start_pos", 0, max_context - 1)
    self.pos, self.pending = 0, None   # pending: the last sampled token, on the device, not yet in the cache
    self.steps, self.prefills = 0, 0   # decode and prefill steps so far: the first of each compiles
    self.compiled: dict = {}           # the steps (and their counts) of other kinds of sampling, see resample

  def _step(self, tokens: Tensor, start_pos: UOp, select: Tensor, knobs: Tensor) -> Tensor:
    # select is one-hot over the chunk: only the last real token of a padded chunk reaches the classifier
    # (a symbolic index into the output is not replayed correctly by TinyJit in tinygrad 0.14)
    tokens, select = (parallel.shard_batch(t, self.devices, "tp") for t in (tokens, select))
    logits = self.model(tokens, start_pos, select=select)
    logits = logits.to(self.devices[0])[:, 0]
    return sample(logits, knobs, self.sampling,
                  None if self.sampling.temperature == 0 else self.rng.uniform(*logits.shape)).realize()

  def reset(self): self.rewind(0)

  def rewind(self, pos: int):
    """Keep the first pos cached tokens and forget the rest (the next feed overwrites them): a prompt that starts
    with those tokens needs only its remainder prefilled."""
    if not 0 <= pos <= self.pos: raise ValueError(f"cannot rewind to {pos}: the cache holds {self.pos} tokens")
    self.pos, self.pending = pos, None

  def resample(self, sampling: Sampling, seed: int | None = None):
    """Sample with other values and a new seed from the next step on, keeping the KV cache. The values are inputs of
    the compiled steps; each kind of sampling (greedy or not, which filters are on) compiles its own pair once."""
    self.compiled[self.sampling.kind()] = self.prefill_step, self.decode_step, self.steps, self.prefills
    if (kind := sampling.check().kind()) not in self.compiled:
      if self.model is None:
        raise ValueError("this Generator was restored from a file without its model: it samples as it was saved "
                         f"(greedy, top-k, top-p on: {self.sampling.kind()}), not {kind}")
      self.compiled[kind] = capture_at_once(self._step, self.model), capture_at_once(self._step, self.model), 0, 0
    self.sampling = sampling
    self.prefill_step, self.decode_step, self.steps, self.prefills = self.compiled[kind]
    self.knobs = sampling.knobs().to(self.devices[0]).realize()
    self.rng.reseed(seed)   # in the buffer the compiled steps hold

  def feed(self, ids: list[int]) -> int:
    """Prefill ids at the current position; return the id sampled after the last of them."""
    if not ids: raise ValueError("nothing to feed")
    if self.pos + len(ids) > self.max_context:
      raise ValueError(f"{self.pos + len(ids)} tokens do not fit the context of {self.max_context} (--max-context)")
    for s in range(0, len(ids), self.chunk):
      part = ids[s:s + self.chunk]
      select = [0.0] * self.chunk
      select[len(part) - 1] = 1.0
      with Context(BEAM=self.beam), phase("compiling the prefill step", quiet=self.prefills > 0):
        self.pending = self.prefill_step(
          Tensor([part + [0] * (self.chunk - len(part))], dtype=dtypes.int32, device=self.devices[0]),
          self.v_pos.bind(self.pos), Tensor(select, device=self.devices[0]), self.knobs)
      self.pos, self.prefills = self.pos + len(part), self.prefills + 1
    return self.pending.item()

  def next(self) -> int:
    """Put the pending token into the cache and sample the one after it. The pending token never leaves the
    device: the step reads the previous step's output buffer directly."""
    if self.pos >= self.max_context: raise ValueError(f"the context of {self.max_context} tokens is full")
    with Context(BEAM=self.beam), phase("compiling the decode step", quiet=self.steps > 0):
      self.pending = self.decode_step(self.pending, self.v_pos.bind(self.pos), self.one, self.knobs)
    self.pos, self.steps = self.pos + 1, self.steps + 1
    return self.pending.item()

  # ***** kept for the next process *****

  def save(self, path, **extra) -> None:
    """Write both compiled steps to `path` with what replaying them needs (engine.save_captured), and `extra`
    (picklable values restore hands back), so that a later process neither loads the checkpoint nor compiles. The
    steps hold the weights and the KV cache: the file is about their size. A step not captured yet (it captures on
    its first call) is run first on a dummy token, which leaves the cache empty (pos 0)."""
    if self.model is None: raise ValueError("a Generator restored without its model cannot be saved again")
    with phase("saving the compiled steps for the next launch"):
      if not self.prefills or not self.steps:
        self.rewind(0)
        self.feed([0])
        if not self.steps: self.next()
        self.rewind(0)
      save_captured(path, {"steps": (self.prefill_step, self.decode_step), "rng": self.rng.state, "one": self.one,
                           "v_pos": self.v_pos, "kind": self.sampling.kind(), "max_context": self.max_context,
                           "chunk": self.chunk, "devices": self.devices, "extra": extra},
                    self.prefill_step, self.decode_step)

  @classmethod
  def restore(cls, path, sampling: Sampling, seed: int | None = None) -> tuple[Generator, dict]:
    """The Generator `save` wrote to `path` (its cache empty), sampling with these values and this seed, and the
    `extra` saved with it. It has no model: it replays the saved steps, so `sampling` must be of the kind it was
    saved with (and resample keeps to that kind). ValueError for a file that is not such a Generator."""
    saved = load_captured(path)
    if not isinstance(saved, dict) or not {"steps", "rng", "kind", "extra"} <= saved.keys():
      raise ValueError(f"{path} holds no saved Generator")
    if saved["kind"] != sampling.check().kind():
      raise ValueError(f"{path} samples with (greedy, top-k, top-p on) = {saved['kind']}, not {sampling.kind()}")
    gen = cls.__new__(cls)
    gen.model, gen.sampling, gen.beam, gen.compiled = None, sampling, 0, {}
    gen.max_context, gen.chunk, gen.devices = saved["max_context"], saved["chunk"], saved["devices"]
    gen.prefill_step, gen.decode_step = saved["steps"]
    gen.v_pos, gen.one, gen.rng = saved["v_pos"], saved["one"], Rng(seed, state=saved["rng"])
    gen.knobs = sampling.knobs().to(gen.devices[0]).realize()
    gen.pos, gen.pending, gen.steps, gen.prefills = 0, None, 1, 1   # both steps captured: they replay from call 1
    return gen, saved["extra"]

@dataclass
class Stats:
  prompt_tokens: int = 0
  new_tokens: int = 0
  ttft: float = 0.0                 # seconds from the start of the first prefill to the first new id on the host
  prefill_time: float = 0.0         # seconds in prefills (every turn of a chat)
  decode_steps: int = 0             # one-token steps replayed by the JIT
  decode_time: float = 0.0          # seconds in them
  compile_time: float = 0.0         # seconds in the first decode step (it captures: compilation)
  stop: str = ""

  def line(self) -> str:
    if not self.prompt_tokens: return "nothing was generated"
    decode = f"{self.decode_steps / self.decode_time:.1f} tok/s" if self.decode_steps else "n/a"
    if self.compile_time: decode += f" (+{self.compile_time:.1f} s compiling the step)"
    # a one-token prompt's "rate" would be the time of one step, compilation included: not a rate
    prefill = f"{self.prompt_tokens / self.prefill_time:.1f} tok/s" if self.prompt_tokens > 1 else "1 token"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)
    return (
      f"prompt {self.prompt_tokens} tokens, {self.new_tokens} new | time to first token {self.ttft:.2f} s | "
      f"prefill {prefill} | decode {decode} | peak memory {peak:.0f} MiB")


def generate(gen: Generator, ids: list[int], max_new: int, eos_id: int | None, stats: Stats,
             on_token=None) -> list[int]:
  """Feed ids, then decode until EOS, max_new tokens or a full context; returns the new ids (EOS excluded)
  and says in stats.stop why it ended. on_token(id) is called with each new id as soon as it exists."""
  out: list[int] = []
  t0 = time.perf_counter()
  tok = gen.feed(ids)
  dt = time.perf_counter() - t0
  if not stats.prompt_tokens: stats.ttft = dt
  stats.prompt_tokens, stats.prefill_time = stats.prompt_tokens + len(ids), stats.prefill_time + dt
  while True:
    if tok == eos_id: stats.stop = "end of sequence (EOS)"; break
    out.append(tok)
    if on_token: on_token(tok)
    if len(out) == max_new: stats.stop = f"{max_new} new tokens (-n)"; break
    if gen.pos >= gen.max_context: stats.stop = f"context limit of {gen.max_context} tokens"; break
    warm, t1 = gen.steps > 0, time.perf_counter()
    tok = gen.next()
    if warm:
      stats.decode_steps, stats.decode_time = stats.decode_steps + 1, stats.decode_time + time.perf_counter() - t1
    else: stats.compile_time += time.perf_counter() - t1
  stats.new_tokens += len(out)
  return out

def weight_bytes(model: llama.Transformer) -> int:
  """Bytes of weights one decode step reads: every learned tensor once (a tied classifier reads the embedding)."""
  return sum(t.nbytes() for t in llama.learned(model).values())
