"""Prefill and decode speed of generate.py's compiled steps against llama.cpp (llama-cpp-python, an optional extra:
pip install -r requirements-extras.txt) on the same GGUF file and the same prompt ids, runs interleaved so that both
see the same machine load; prints the medians and the ratios.

  python bench_generate.py ../shared/fixtures/smollm2-135m-instruct-q4_1.gguf --llama-cpp
  python bench_generate.py MODEL --prompt-tokens 316 -n 64 --runs 5 --beam 2
"""
from __future__ import annotations
import argparse, os, statistics, sys, time
from tinygrad import Context
import checkpoint, generate, kernels

PROMPT = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends, "
          "and every evening she told her mother what she had seen: birds, dogs, a red ball and a tall tree. ")

def ours(gen: generate.Generator, ids: list[int], n: int):
  """(prefill s, decode s) of one run: ids prefilled, then n tokens decoded greedily."""
  gen.reset()
  t0 = time.perf_counter()
  gen.feed(ids)
  t1 = time.perf_counter()
  for _ in range(n): gen.next()
  return t1 - t0, time.perf_counter() - t1

def llama_cpp(llm, ids: list[int], n: int):
  llm.reset()
  t0 = time.perf_counter()
  llm.eval(ids)
  t1 = time.perf_counter()
  for _ in range(n): llm.eval([llm.sample(top_k=1, temp=0.0)])
  return t1 - t0, time.perf_counter() - t1

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Prefill and decode tok/s: generate.py against llama.cpp, interleaved.")
  p.add_argument("model", help="a GGUF file (llama.cpp reads only GGUF)")
  p.add_argument("--prompt-tokens", type=int, default=316)
  p.add_argument("-n", "--new-tokens", type=int, default=64)
  p.add_argument("--runs", type=int, default=5, help="timed runs of each, after one warm-up run")
  p.add_argument("--llama-cpp", action="store_true", help="also time llama-cpp-python (optional extra)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="llama.cpp threads (default: every core)")
  p.add_argument("--beam", type=int, default=0, help="tinygrad BEAM search width for our kernels (0: heuristics)")
  a = p.parse_args(argv)
  try: model, tok = checkpoint.load(a.model)
  except ValueError as e:
    print(f"bench_generate.py: error: {e}", file=sys.stderr)
    return 1
  text = PROMPT * (a.prompt_tokens // 20 + 1)
  ids = ([tok.bos_id] if tok.add_bos else []) + tok.encode(text)
  ids = ids[:a.prompt_tokens]
  ctx = len(ids) + a.new_tokens + 1
  gen = generate.Generator(kernels.use_decode_kernels(model), ctx, generate.Sampling(0.0), chunk=32)
  runs = {"tinygrad": lambda: ours(gen, ids, a.new_tokens)}
  if a.llama_cpp:
    try: from llama_cpp import Llama
    except ImportError:
      print("bench_generate.py: error: --llama-cpp needs llama-cpp-python: pip install -r requirements-extras.txt", file=sys.stderr)
      return 1
    llm = Llama(model_path=a.model, n_ctx=max(512, ctx), n_threads=a.threads, n_batch=512, verbose=False)   # n_batch <= n_ctx
    runs[f"llama.cpp ({a.threads} threads)"] = lambda: llama_cpp(llm, ids, a.new_tokens)
  print(f"{a.model}: {len(ids)} prompt tokens, {a.new_tokens} new, {a.runs} interleaved runs (after a warm-up)")
  times: dict[str, list[tuple[float, float]]] = {k: [] for k in runs}
  with Context(BEAM=a.beam):
    for r in range(a.runs + 1):
      for name, f in runs.items():
        t = f()
        if r: times[name].append(t)
  res = {}
  for name, ts in times.items():
    pre, dec = statistics.median(len(ids) / t[0] for t in ts), statistics.median(a.new_tokens / t[1] for t in ts)
    res[name] = (pre, dec)
    print(f"{name:>24}: prefill {pre:8.1f} tok/s | decode {dec:7.1f} tok/s")
  if len(res) == 2:
    (_, (p0, d0)), (_, (p1, d1)) = res.items()
    print(f"tinygrad / llama.cpp: prefill {p0 / p1:.2f}x | decode {d0 / d1:.2f}x")
  return 0

if __name__ == "__main__": sys.exit(main())
