"""Sample text from a LLaMA checkpoint (Touvron et al., 2023), as llama2.c's `run` does, in tinygrad.

  python generate.py stories260K.bin --tokenizer tok512.model -p "Once upon a time" -n 200
  python generate.py smollm2-135m-instruct-q4_1.gguf --chat
  python generate.py            # the checkpoint `python train.py` wrote to out/

The prompt is prefilled through the KV cache in fixed-size chunks, then one TinyJit-compiled step per token runs the
model at a symbolic position and samples the next id on the device, so only that id crosses to the host.
Sampling is Meta's: temperature, then nucleus (top-p) sampling as in `sample_top_p`, optionally top-k first.
"""
from __future__ import annotations
import argparse, math, pathlib, re, resource, secrets, statistics, sys, time
from dataclasses import dataclass
from tinygrad import Context, Tensor, TinyJit, UOp, dtypes
import checkpoint, kernels, llama, parallel

DEFAULT_OUT = pathlib.Path("out")   # where train.py writes its checkpoint

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

  def knobs(self) -> Tensor:
    """The values as one device buffer, an input of the compiled step: one compilation serves every value."""
    return Tensor([1 / self.temperature if self.temperature else 0.0, self.top_p, float(self.top_k)], dtype=dtypes.float32).realize()

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
  fixes every draw of a run, and the state is one small buffer that the compiled step advances itself."""
  def __init__(self, seed: int | None, device: str | None = None):
    self.seed = secrets.randbits(32) if seed is None else seed % 2**32
    self.state = Tensor([self.seed, 0], dtype=dtypes.uint32, device=device).realize()   # key, counter

  def uniform(self, *shape: int) -> Tensor:
    """Uniform floats in (0, 1), a new set at every realisation (also on every replay of a TinyJit)."""
    state = self.state.assign(self.state + Tensor([0, 1], dtype=dtypes.uint32))
    n = math.prod(shape)
    x = ((state[1:2] - 1).cast(dtypes.uint64) << 32) | Tensor.arange(n, dtype=dtypes.uint32).cast(dtypes.uint64)
    bits = x.threefry(state[0:1].cast(dtypes.uint64))
    return (((bits >> 40).cast(dtypes.float32) + 0.5) * 2.0 ** -24).reshape(shape)   # 24 random bits, never 0 or 1

# ***** the decoding loop *****

class Generator:
  """The KV cache of one model and two compiled steps over it: a prefill of `chunk` tokens and a one-token decode.
  Both run the same function; `start_pos` is a bound symbolic variable, so the position can advance without
  recompiling. `pos` counts the tokens already in the cache.
  A model on several devices (checkpoint.load(device=(d0, d1, ...)): tensor parallel, §2.4) gets each step's tokens
  copied to all of them, and its logits (split by vocabulary) gathered onto the first, where sampling runs.
  Call kernels.use_decode_kernels(model) first for the fast one-token kernels."""
  def __init__(self, model: llama.Transformer, max_context: int, sampling: Sampling, seed: int | None = None, chunk: int = 32):
    self.model, self.max_context, self.sampling, self.chunk = model, max_context, sampling.check(), min(chunk, max_context)
    self.devices = parallel.model_devices(model)
    # the last prefill chunk is padded to full size: the cache has room for its tail (padding is written past
    # the real tokens, never attended to, and overwritten by later tokens)
    model.init_cache(1, max_context + self.chunk - 1)
    self.rng = Rng(seed, self.devices[0])
    self.knobs = sampling.knobs().to(self.devices[0]).realize()
    self.one = Tensor([1.0], device=self.devices[0]).realize()
    self.prefill_step, self.decode_step = TinyJit(self._step), TinyJit(self._step)
    self.v_pos = UOp.variable("start_pos", 0, max_context - 1)
    self.pos, self.pending = 0, None   # pending: the last sampled token, on the device, not yet in the cache
    self.steps = 0                     # decode steps so far: the first two compile
    self.compiled: dict = {}           # the steps (and their counts) of other kinds of sampling, see resample

  def _step(self, tokens: Tensor, start_pos: UOp, select: Tensor, knobs: Tensor) -> Tensor:
    # select is one-hot over the chunk: it picks the logits of the last real token out of a padded chunk
    # (a symbolic index into the output is not replayed correctly by TinyJit in tinygrad 0.14)
    logits = self.model(parallel.shard_batch(tokens, self.devices, "tp"), start_pos).to(self.devices[0])
    logits = (logits * select.reshape(1, -1, 1)).sum(1)
    return sample(logits, knobs, self.sampling, None if self.sampling.temperature == 0 else self.rng.uniform(*logits.shape)).realize()

  def reset(self): self.rewind(0)

  def rewind(self, pos: int):
    """Keep the first pos cached tokens and forget the rest (the next feed overwrites them): a prompt that starts
    with those tokens needs only its remainder prefilled."""
    if not 0 <= pos <= self.pos: raise ValueError(f"cannot rewind to {pos}: the cache holds {self.pos} tokens")
    self.pos, self.pending = pos, None

  def resample(self, sampling: Sampling, seed: int | None = None):
    """Sample with other values and a new seed from the next step on, keeping the KV cache. The values are inputs of
    the compiled steps; each kind of sampling (greedy or not, which filters are on) compiles its own pair once."""
    kind = lambda s: (s.temperature == 0, s.top_k > 0, s.top_p < 1)   # what changes sample()'s graph
    self.compiled[kind(self.sampling)] = self.prefill_step, self.decode_step, self.steps
    self.sampling = sampling.check()
    if kind(sampling) not in self.compiled: self.compiled[kind(sampling)] = TinyJit(self._step), TinyJit(self._step), 0
    self.prefill_step, self.decode_step, self.steps = self.compiled[kind(sampling)]
    self.knobs = sampling.knobs().to(self.devices[0]).realize()
    self.rng.state.assign(Rng(seed, self.devices[0]).state).realize()   # the compiled steps hold this buffer

  def feed(self, ids: list[int]) -> int:
    """Prefill ids at the current position; return the id sampled after the last of them."""
    if not ids: raise ValueError("nothing to feed")
    if self.pos + len(ids) > self.max_context:
      raise ValueError(f"{self.pos + len(ids)} tokens do not fit the context of {self.max_context} (--max-context)")
    for s in range(0, len(ids), self.chunk):
      part = ids[s:s + self.chunk]
      select = [0.0] * self.chunk
      select[len(part) - 1] = 1.0
      self.pending = self.prefill_step(Tensor([part + [0] * (self.chunk - len(part))], dtype=dtypes.int32, device=self.devices[0]),
                                       self.v_pos.bind(self.pos), Tensor(select, device=self.devices[0]), self.knobs)
      self.pos += len(part)
    return self.pending.item()

  def next(self) -> int:
    """Put the pending token into the cache and sample the one after it. The pending token never leaves the
    device: the step reads the previous step's output buffer directly."""
    if self.pos >= self.max_context: raise ValueError(f"the context of {self.max_context} tokens is full")
    self.pending = self.decode_step(self.pending, self.v_pos.bind(self.pos), self.one, self.knobs)
    self.pos, self.steps = self.pos + 1, self.steps + 1
    return self.pending.item()

@dataclass
class Stats:
  prompt_tokens: int = 0
  new_tokens: int = 0
  ttft: float = 0.0                 # seconds from the start of the first prefill to the first new id on the host
  prefill_time: float = 0.0         # seconds in prefills (every turn of a chat)
  decode_steps: int = 0             # one-token steps replayed by the JIT
  decode_time: float = 0.0          # seconds in them
  compile_time: float = 0.0         # seconds in the first two steps (TinyJit runs, then captures: compilation)
  stop: str = ""

  def line(self) -> str:
    if not self.prompt_tokens: return "nothing was generated"
    decode = f"{self.decode_steps / self.decode_time:.1f} tok/s" if self.decode_steps else "n/a"
    if self.compile_time: decode += f" (+{self.compile_time:.1f} s compiling the step)"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1 << 10)
    return (f"prompt {self.prompt_tokens} tokens, {self.new_tokens} new | time to first token {self.ttft:.2f} s | "
            f"prefill {self.prompt_tokens / self.prefill_time:.1f} tok/s | decode {decode} | peak memory {peak:.0f} MiB")

def generate(gen: Generator, ids: list[int], max_new: int, eos_id: int | None, stats: Stats, on_token=None) -> list[int]:
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
    warm, t1 = gen.steps >= 2, time.perf_counter()
    tok = gen.next()
    if warm: stats.decode_steps, stats.decode_time = stats.decode_steps + 1, stats.decode_time + time.perf_counter() - t1
    else: stats.compile_time += time.perf_counter() - t1
  stats.new_tokens += len(out)
  return out

# ***** chat formats *****

@dataclass
class ChatFormat:
  """How a turn is written for the model. turn(text, system) gives the pieces that open one user turn and the
  assistant's answer; `after_eos` what follows the answer's end-of-turn token. A piece is text, or a special
  token's name looked up in tokenizer.special_tokens, so user text can never inject a control token."""
  name: str
  default_system: str | None = None

  def turn(self, text: str, system: str | None, first: bool) -> list:
    system = system if system is not None else (self.default_system if first else None)
    if self.name == "chatml":
      sys_part = [("<|im_start|>",), f"system\n{system}", ("<|im_end|>",), "\n"] if system is not None else []
      return sys_part + [("<|im_start|>",), f"user\n{text}", ("<|im_end|>",), "\n", ("<|im_start|>",), "assistant\n"]
    # Llama 2 chat (Meta's chat_completion): [BOS] "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
    if system is not None: text = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{text.strip()}"
    return [("BOS",), f"[INST] {text.strip()} [/INST]"]

  def after_eos(self) -> list: return ["\n"] if self.name == "chatml" else []

def chat_format(tokenizer) -> ChatFormat:
  """Recognise the checkpoint's chat template from its text: ChatML (<|im_start|>) or Llama 2 ([INST]).
  Without a template, ChatML when the vocabulary has <|im_start|>, else Llama 2. A system prompt written into
  the template as a literal (SmolLM2 does this) becomes the default system prompt."""
  tmpl = getattr(tokenizer, "chat_template", None) or ""
  if "<|im_start|>" in tmpl or (not tmpl and "<|im_start|>" in tokenizer.special_tokens):
    m = re.search(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]*)<\|im_end\|>", tmpl)
    return ChatFormat("chatml", m.group(1) if m else None)
  if "[INST]" in tmpl or not tmpl: return ChatFormat("llama2")
  raise ValueError("this checkpoint's chat template is neither ChatML nor Llama 2 [INST]; --chat supports those two")

def encode_pieces(tokenizer, pieces: list) -> list[int]:
  ids: list[int] = []
  for p in pieces:
    if isinstance(p, str): ids += tokenizer.encode(p)
    elif p[0] == "BOS": ids.append(tokenizer.bos_id)
    elif p[0] in tokenizer.special_tokens: ids.append(tokenizer.special_tokens[p[0]])
    else: raise ValueError(f"the chat format needs the special token {p[0]}, which this tokenizer lacks")
  return ids

# ***** command line *****

def _fail(msg: str):
  print(f"generate.py: {msg}", file=sys.stderr)
  sys.exit(1)

def weight_bytes(model: llama.Transformer) -> int:
  """Bytes of weights one decode step reads: every learned tensor once (a tied classifier reads the embedding)."""
  return sum(t.nbytes() for t in llama.learned(model).values())

class Printer:
  """Streams new ids to stdout as text, flushed at once (multi-byte characters and leading spaces right)."""
  def __init__(self, tok): self.dec = tok.decoder()
  def __call__(self, tid: int): self.write(self.dec.add(tid))
  def write(self, text: str):
    sys.stdout.write(text)
    sys.stdout.flush()
  def close(self): self.write(self.dec.flush() + "\n")

def run_plain(gen: Generator, tok, args, prompt_ids: list[int]) -> tuple[Stats, list[int]]:
  stats, show = Stats(), Printer(tok)
  show.write("".join(show.dec.add(i) for i in prompt_ids))
  new = generate(gen, prompt_ids, args.max_new_tokens, tok.eos_id, stats, show)
  show.close()
  return stats, new

def run_chat(gen: Generator, tok, args) -> Stats:
  fmt, stats, first = chat_format(tok), Stats(), True
  interactive = sys.stdin.isatty()
  while True:
    if interactive: print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line: break
    if not line.strip(): continue
    ids = encode_pieces(tok, fmt.turn(line.rstrip("\n"), args.system if first else None, first))
    # the previous answer's last sampled token (EOS, or where -n cut it) is not in the cache yet: close the turn
    if gen.pending is not None:
      last = gen.pending.item()
      ids = ([last] if last != tok.eos_id else []) + [tok.eos_id] + encode_pieces(tok, fmt.after_eos()) + ids
    if gen.pos + len(ids) >= gen.max_context: raise ValueError(f"the conversation no longer fits the context of {gen.max_context} tokens")
    show = Printer(tok)
    generate(gen, ids, args.max_new_tokens, tok.eos_id, stats, show)
    show.close()
    print(f"[{stats.stop}]", file=sys.stderr)
    first = False
  return stats

def run_benchmark(gen: Generator, model, tok, args, prompt_ids: list[int], runs: int = 5):
  """The same prompt `runs` times on warm compiled steps (the first, cold run is reported apart)."""
  ttft, prefill, decode = [], [], []
  for r in range(runs + 1):
    gen.reset()
    stats = Stats()
    generate(gen, prompt_ids, args.max_new_tokens, None, stats)   # no EOS stop: every run decodes the same count
    if r == 0: cold = stats; continue
    ttft.append(stats.ttft); prefill.append(stats.prompt_tokens / stats.prefill_time); decode.append(stats.decode_steps / stats.decode_time)
  nbytes, tps = weight_bytes(model), statistics.median(decode)
  print(f"benchmark: {len(prompt_ids)} prompt tokens, {args.max_new_tokens} new, median of {runs} warm runs", file=sys.stderr)
  print(f"  cold run: time to first token {cold.ttft:.2f} s (incl. compiling the prefill), {cold.compile_time:.1f} s compiling the decode step",
        file=sys.stderr)
  print(f"  warm: time to first token {statistics.median(ttft):.3f} s | prefill {statistics.median(prefill):.1f} tok/s | "
        f"decode {tps:.1f} tok/s | weights {nbytes / 1e6:.1f} MB/token -> {nbytes * tps / 1e9:.2f} GB/s", file=sys.stderr)

BENCH_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="Sample from a LLaMA checkpoint (GGUF, llama2.c .bin, Meta, Hugging Face or our own directory).")
  p.add_argument("model", nargs="?", help=f"checkpoint path; default: the newest one train.py wrote to {DEFAULT_OUT}/")
  p.add_argument("-p", "--prompt", default="", help="text to continue (plain mode)")
  p.add_argument("-n", "--max-new-tokens", type=int, default=256)
  p.add_argument("-t", "--temperature", type=float, default=Sampling.temperature, help="0: greedy")
  p.add_argument("--top-p", type=float, default=Sampling.top_p, help="nucleus sampling mass, in (0, 1]; 1: off")
  p.add_argument("--top-k", type=int, default=0, help="keep only the k most probable tokens first; 0: off")
  p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
  p.add_argument("--chat", action="store_true", help="multi-turn chat, user turns read from stdin until EOF")
  p.add_argument("--system", default=None, help="system prompt for --chat")
  p.add_argument("--tokenizer", default=None, help="tokenizer file (.model or llama2.c tokenizer.bin) to use or add")
  p.add_argument("--max-context", type=int, default=None, help="tokens of context (default: the model's, at most 2048)")
  p.add_argument("--benchmark", action="store_true", help="time a fixed prompt: median prefill and decode tok/s, bandwidth")
  p.add_argument("--devices", default=None, help="e.g. CUDA:0,CUDA:1: split the model across them, tensor parallel (§2.4); "
                 "default: tinygrad's default device")
  p.add_argument("--serve", action="store_true", help="serve an OpenAI-compatible HTTP API (/v1) and a chat page (/); "
                 "-t, --top-p, --top-k, --seed and -n become the requests' defaults")
  p.add_argument("--host", default="127.0.0.1", help="--serve: the address to listen on")
  p.add_argument("--port", type=int, default=8000, help="--serve: the port (0: any free one)")
  p.add_argument("--api-key", default=None, help="--serve: every /v1 request must send 'Authorization: Bearer KEY'")
  p.add_argument("--beam", type=int, default=0, help="BEAM search width for tinygrad kernel options (0: its heuristics); the first run searches, later runs read the cache")
  return p.parse_args(argv)

def main(argv=None):
  args = parse_args(argv)
  with Context(BEAM=args.beam): return run(args)

def run(args):
  sampling = Sampling(args.temperature, args.top_p, args.top_k).check()
  if args.max_new_tokens < 1: raise ValueError(f"-n must be at least 1, got {args.max_new_tokens}")
  if args.serve and (args.chat or args.benchmark): raise ValueError("--serve runs alone: drop --chat and --benchmark")
  if not 0 <= args.port < 65536: raise ValueError(f"--port must be in 0..65535, got {args.port}")
  if args.model is None and not DEFAULT_OUT.exists():
    raise ValueError(f"no MODEL given and no checkpoint in {DEFAULT_OUT}/: run `python train.py` first or pass a checkpoint path")
  devices = parallel.parse_devices(args.devices)
  t0 = time.perf_counter()
  # several devices: each tensor is split as it is read, so no device ever holds the whole model
  model, tok = checkpoint.load(args.model if args.model is not None else DEFAULT_OUT, tokenizer=args.tokenizer, device=devices)
  if tok is None: raise ValueError("the checkpoint has no tokenizer beside it: pass --tokenizer PATH")
  max_seq = model.args.max_seq_len
  ctx = args.max_context if args.max_context is not None else min(max_seq, 2048)
  if not 1 < ctx <= max_seq: raise ValueError(f"--max-context must be in 2..{max_seq} (the model's context), got {ctx}")
  ids: list[int] = []
  if not args.chat and not args.serve:
    prompt = BENCH_PROMPT if args.benchmark and not args.prompt else args.prompt
    ids = tok.encode(prompt, bos=getattr(tok, "add_bos", True)) if prompt else [tok.bos_id]
    if len(ids) >= ctx: raise ValueError(f"the prompt is {len(ids)} tokens, too long for the context of {ctx} (--max-context)")
  print(f"loaded {args.model or DEFAULT_OUT} in {time.perf_counter() - t0:.1f} s: {model.args.n_layers} layers, dim {model.args.dim}, "
        f"vocab {model.args.vocab_size}, {weight_bytes(model) / 1e6:.1f} MB of weights"
        + (f" split over {len(devices)} devices (tensor parallel)" if len(devices) > 1 else ""), file=sys.stderr)
  gen = Generator(kernels.use_decode_kernels(model), ctx, sampling, args.seed)
  if args.serve:
    import serve   # here, not at the top: serve.py imports this module
    return serve.serve(gen, tok, args)
  if args.benchmark: return run_benchmark(gen, model, tok, args, ids)
  if args.chat: stats = run_chat(gen, tok, args)
  else:
    stats, _ = run_plain(gen, tok, args, ids)
    print(f"[stopped: {stats.stop}]", file=sys.stderr)
  print(stats.line(), file=sys.stderr)

if __name__ == "__main__":
  try: main()
  except (ValueError, OSError) as e: _fail(str(e))   # checkpoint.CheckpointError, TokenizerError are ValueErrors
  except KeyboardInterrupt: _fail("interrupted")
