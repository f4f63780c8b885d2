"""Prefill and decode speed of our compiled steps (decode.Generator) against an anchor on the same weights and the same
prompt ids, runs interleaved so that both see the same machine load; prints the medians and ratios as one table.

Two anchors:
- a GGUF file with --llama-cpp: llama.cpp (llama-cpp-python, an optional extra: pip install -r requirements-extras.txt);
- --shape NAME (the default on a GPU when no model is given): a random LLaMA of that shape made by transformers (an
  optional extra) in float16, saved with save_pretrained, read back by checkpoint.load, so both sides hold the same
  weights; the anchor is transformers eager (PyTorch, its default SDPA attention, no compilation), prefill then greedy
  decode through its KV cache (past_key_values).
Levers compared in the same run: --chunks (prefill chunk sizes), --decode-kernels (kernels.use_decode_kernels) and,
for a GGUF file, --compact (quantised weights kept in their blocks, checkpoint.load(compact=True), or float32). Each of
our models also prints the bytes one decode step reads (tinygrad's GlobalCounters), against the file's weight bytes.

  python bench_generate.py ../shared/fixtures/smollm2-135m-instruct-q4_1.gguf --llama-cpp --compact both
  DEV=CUDA python3 bench_generate.py --chunks 32,512 --decode-kernels both     # TinyLlama-1.1B's shape on the GPU
  DEV=CPU python bench_generate.py --shape tiny --prompt-tokens 64 -n 8        # the same code path, CPU-sized
"""
from __future__ import annotations
import argparse, contextlib, itertools, multiprocessing, os, statistics, sys, tempfile, time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, NamedTuple
import numpy as np
from tinygrad import Device, GlobalCounters, Tensor
import checkpoint, gguf, kernels
from cli import GRAPH, add_benchmark_flags, interleaved, one_line_errors
from decode import Generator, Sampling, common_prefix
from engine import use_all_cores, use_cpu_graph, use_kernel_options
try: import torch, transformers
except ImportError: torch = transformers = None
try: from llama_cpp import Llama
except ImportError: Llama = None

PROMPT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
          "friends, and every evening she told her mother what she had seen: birds, dogs, a red ball and a tall tree. ")

# transformers LlamaConfig fields of the random models; "tinyllama" is TinyLlama-1.1B's shape
SHAPES = {
  "tinyllama": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                    num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                    tie_word_embeddings=False),
  "tiny": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=1024, max_position_embeddings=256, rms_norm_eps=1e-5,
               tie_word_embeddings=False),
}

# engine.use_all_cores settings compared: the suffix of a run's name -> on
CORES = {"all": {"": True}, "one": {"": False}, "both": {", one core": False, ", all cores": True}}

Run = tuple[float, float, list[int]]   # prefill seconds (until the first new id is on the host), decode seconds, ids

class Anchor(NamedTuple):
  name: str
  run: Callable[[list[int], int], Run]   # (prompt ids, new tokens) -> Run

def ours(gen: Generator, ids: list[int], n: int) -> Run:
  """ids prefilled, then n tokens decoded greedily; each id is read on the host (.item()): the clock sees the work."""
  gen.reset()
  t0 = time.perf_counter()
  out = [gen.feed(ids)]
  t1 = time.perf_counter()
  out += [gen.next() for _ in range(n)]
  return t1 - t0, time.perf_counter() - t1, out

def llama_cpp(path: str, context: int, threads: int) -> Anchor:
  # n_batch <= n_ctx
  llm = Llama(model_path=path, n_ctx=max(512, context), n_threads=threads, n_batch=512, verbose=False)
  def run(ids: list[int], n: int) -> Run:
    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    out = [llm.sample(top_k=1, temp=0.0)]
    t1 = time.perf_counter()
    for _ in range(n):
      llm.eval(out[-1:])
      out.append(llm.sample(top_k=1, temp=0.0))
    return t1 - t0, time.perf_counter() - t1, out
  return Anchor(f"llama.cpp ({threads} threads)", run)

# ***** the transformers side, in a process of its own *****
# tinygrad's CUDA backend makes its own context current on the thread; PyTorch's runtime calls would then run in it
# instead of PyTorch's, so the two never share a process here. A pool of one worker: if it dies, calls raise
# BrokenProcessPool instead of waiting forever.

HF_MODEL = {}   # in the worker process: the model hf_setup made

def hf_setup(shape: str, device: str, path: str):
  """Make a random float16 model of SHAPES[shape] on `device` and save it to `path`."""
  torch.manual_seed(0)
  with torch.device(device):
    config = transformers.LlamaConfig(**SHAPES[shape])
    HF_MODEL["model"] = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float16).eval()
  HF_MODEL["model"].save_pretrained(path, safe_serialization=True)

def hf_where() -> str:
  d = HF_MODEL["model"].device
  where = torch.cuda.get_device_name(d) if d.type == "cuda" else f"the CPU ({torch.get_num_threads()} threads)"
  return f"torch {torch.__version__} on {where}"

def hf_logits(ids: list[int]) -> np.ndarray:
  """float32 logits of every position of a one-shot forward."""
  model = HF_MODEL["model"]
  with torch.inference_mode(): logits = model(input_ids=torch.tensor([ids], device=model.device)).logits
  return logits[0].float().cpu().numpy()

def hf_run(ids: list[int], n: int) -> Run:
  """What generate() does, without its bookkeeping: prefill (logits of the last position only), then n greedy steps
  through the KV cache, each id read on the host as ours is."""
  model = HF_MODEL["model"]
  sync = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
  with torch.inference_mode():
    x = torch.tensor([ids], device=model.device)
    sync()
    t0 = time.perf_counter()
    res = model(input_ids=x, use_cache=True, logits_to_keep=1)
    tok = res.logits[:, -1:].argmax(-1)
    out = [tok.item()]
    t1 = time.perf_counter()
    for _ in range(n):
      res = model(input_ids=tok, past_key_values=res.past_key_values, use_cache=True)
      tok = res.logits[:, -1:].argmax(-1)
      out.append(tok.item())
    sync()
    return t1 - t0, time.perf_counter() - t1, out

# ***** the benchmark *****

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="Prefill and decode tok/s of decode.Generator against an anchor.")
  p.add_argument("model", nargs="?", help="a GGUF file (llama.cpp reads only GGUF); none: a random model of --shape")
  p.add_argument("--shape", choices=SHAPES, help="random model by transformers, the anchor (GPU default: tinyllama)")
  p.add_argument("--llama-cpp", action="store_true", help="with a GGUF file: also time llama-cpp-python (an extra)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (default: every core)")
  p.add_argument("--prompt-tokens", type=int, default=None, help="default: 316 with a GGUF file, 512 with --shape")
  p.add_argument("-n", "--new-tokens", type=int, default=64)
  p.add_argument("--runs", type=int, default=5, help="timed runs of each, after two warm-up runs (the first compiles)")
  p.add_argument("--chunks", default="32", help="comma-separated prefill chunk sizes to compare (generate.py's: 32)")
  p.add_argument("--decode-kernels", choices=("on", "off", "both"), default="on",
                 help="kernels.use_decode_kernels (generate.py: on)")
  p.add_argument("--compact", choices=("on", "off", "both"), default="on",
                 help="GGUF: quantised weights kept compact, checkpoint.load(compact=True) (generate.py), or float32")
  p.add_argument("--beam", type=int, default=0,
                 help="tinygrad BEAM search width for the compiled steps' kernels (0: heuristics); not the loader's")
  add_benchmark_flags(p, "round")
  a = p.parse_args(argv)
  try: a.chunks = [int(c) for c in a.chunks.split(",")]
  except ValueError: p.error(f"--chunks takes comma-separated integers, got {a.chunks!r}")
  if a.model is None and a.shape is None:
    if Device.DEFAULT == "CPU": p.error("give a GGUF file, or --shape for a random model (tiny on a CPU)")
    a.shape = "tinyllama"
  if a.model is not None and a.shape is not None: p.error("a GGUF file or --shape, not both")
  if a.llama_cpp and (a.shape or Llama is None):
    p.error("--llama-cpp needs a GGUF file and llama-cpp-python (pip install -r requirements-extras.txt)")
  if a.shape and transformers is None:
    p.error("--shape needs torch and transformers: pip install -r requirements-extras.txt")
  if a.prompt_tokens is None: a.prompt_tokens = 512 if a.shape else 316
  if min(a.chunks + [a.prompt_tokens, a.new_tokens, a.runs]) < 1:
    p.error("--chunks, --prompt-tokens, -n and --runs must be at least 1")
  return a

def median_rate(runs: list[Run], tokens: int, part: int) -> float:
  return statistics.median(tokens / r[part] for r in runs)

def bench(a: argparse.Namespace, models: dict, anchor: Anchor | None, ids: list[int], what: str, t_start: float):
  """Compile and warm our runs (one Generator per model and chunk size) and the anchor's, time them interleaved;
  returns the table's rows. models: {(compact?, decode kernels on?): model}."""
  ctx, runs = len(ids) + a.new_tokens + 1, {}
  for (c, k), model in models.items():
    if k: kernels.use_decode_kernels(model)
    for chunk, (suffix, graph) in itertools.product(a.chunks, GRAPH[a.graph].items()):
      # each Generator is warmed before the next one on this model is made: its steps, once captured, keep the KV
      # cache buffers they were captured with, and a new Generator gives the model new ones
      weights = ("compact" if c else "float32") if a.model else "fp16"
      name, t0 = f"{weights}, chunk {chunk}, decode kernels {'on' if k else 'off'}{suffix}", time.perf_counter()
      use_cpu_graph(graph)   # the steps capture with it (their first call, in the warm-up below)
      gen = Generator(model, ctx, Sampling(0.0), chunk=chunk, beam=a.beam)
      for cores, on in CORES[a.cores].items():
        runs[name + cores] = lambda gen=gen, on=on: (use_all_cores(on), ours(gen, ids, a.new_tokens))[1]
      for _ in range(2): warm = ours(gen, ids, a.new_tokens)
      GlobalCounters.reset()
      gen.next()   # one more decode step (the context has room for it), counted
      print(f"ours, {name}: two warm-up runs (the first compiles) in {time.perf_counter() - t0:.1f} s; the second: "
            f"prefill {len(ids) / warm[0]:.1f} tok/s, decode {a.new_tokens / warm[1]:.1f} tok/s; "
            f"{GlobalCounters.global_mem / 1e6:.1f} MB read per decoded token", flush=True)
  if anchor is not None:
    runs[anchor.name] = lambda: anchor.run(ids, a.new_tokens)
    t0 = time.perf_counter()
    for _ in range(2): anchor.run(ids, a.new_tokens)
    print(f"{anchor.name}: two warm-up runs in {time.perf_counter() - t0:.1f} s", flush=True)
  times: dict[str, list[Run]] = interleaved(runs, a.runs, a.time_limit, t_start, "rounds")
  done = len(next(iter(times.values())))
  print(f"{what}: {len(ids)} prompt tokens, {a.new_tokens} new, medians of {done} interleaved runs")
  rows = []
  for name, ts in times.items():
    line = (f"{name:>46}: prefill {median_rate(ts, len(ids), 0):9.1f} tok/s | "
            f"decode {median_rate(ts, a.new_tokens, 1):7.1f} tok/s")
    if anchor and name == anchor.name:
      print(line)
      continue
    if anchor:
      same = common_prefix(ts[0][2], times[anchor.name][0][2])
      line += f" | greedy ids equal to the anchor's for {same} of {a.new_tokens + 1}"
    print(line)
    prefill, decode = (0, len(ids), f"prefill {len(ids)} tok"), (1, a.new_tokens, f"decode {a.new_tokens} tok")
    for part, tokens, label in (prefill, decode):
      mine, row = median_rate(ts, tokens, part), f"| {label}, {what}, {name} |"
      if anchor is None: rows.append(f"{row} {mine:,.1f} tok/s | - | - |")
      else:
        ref = median_rate(times[anchor.name], tokens, part)
        rows.append(f"{row} {mine:,.1f} tok/s | {anchor.name} {ref:,.1f} tok/s | {mine / ref:.2f}x |")
  return rows

def run(a: argparse.Namespace) -> int:
  t_start = time.perf_counter()
  on = {"on": [True], "off": [False], "both": [False, True]}[a.decode_kernels]
  use_all_cores(a.cores != "one")
  use_kernel_options()
  compact = [False] if a.shape else {"on": [True], "off": [False], "both": [False, True]}[a.compact]
  with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
    anchor = None
    if a.shape:
      setup = (a.shape, "cpu" if Device.DEFAULT == "CPU" else "cuda", tmp)
      pool = stack.enter_context(ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), hf_setup, setup))
      anchor = Anchor(f"transformers {transformers.__version__}", lambda ids, n: pool.submit(hf_run, ids, n).result())
      print(f"tinygrad on {Device.DEFAULT} against {anchor.name}, {pool.submit(hf_where).result()}; random model "
            f"saved in {time.perf_counter() - t_start:.1f} s", flush=True)
    # a model per setting (use_decode_kernels changes the model in place); all hold the same weights
    loaded = {(c, k): checkpoint.load(a.model or tmp, dtype="float16" if a.shape else None, compact=c)
              for c in compact for k in on}
    models, tok = {ck: m for ck, (m, _) in loaded.items()}, next(iter(loaded.values()))[1]
    print(f"loaded {len(models)} model(s) in {time.perf_counter() - t_start:.1f} s since the start", flush=True)
    if a.shape:
      what = f"{a.shape} shape fp16"
      ids = np.random.default_rng(0).integers(3, SHAPES[a.shape]["vocab_size"], a.prompt_tokens).tolist()  # not 0-2
      check = ids[:64]   # the same function on both sides: logits of a one-shot forward (no KV cache yet)
      mine, ref = next(iter(models.values()))(Tensor([check])).numpy()[0], pool.submit(hf_logits, check).result()
      print(f"logits of {len(check)} tokens against transformers: relative error "
            f"{np.linalg.norm(mine - ref) / np.linalg.norm(ref):.1e}, same argmax at "
            f"{(mine.argmax(-1) == ref.argmax(-1)).mean():.0%} of positions", flush=True)
    else:
      what = os.path.basename(a.model)
      print(f"{what}: {sum(t.nbytes for t in gguf.read_header(a.model).tensors) / 1e6:.1f} MB of weights in the file")
      text = PROMPT * (a.prompt_tokens // 20 + 1)
      ids = (([tok.bos_id] if tok.add_bos else []) + tok.encode(text))[:a.prompt_tokens]
      if a.llama_cpp: anchor = llama_cpp(a.model, len(ids) + a.new_tokens + 1, a.threads)
    rows = bench(a, models, anchor, ids, what, t_start)
  print("\n| workload | ours | anchor | ratio |\n|---|---|---|---|\n" + "\n".join(rows))
  return 0

def main(argv=None) -> int:   # checkpoint.CheckpointError: a file that does not load; a dead transformers process
  return one_line_errors("bench_generate.py", lambda: run(parse_args(argv)), (ValueError, OSError, BrokenProcessPool))

if __name__ == "__main__": sys.exit(main())
