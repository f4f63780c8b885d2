"""Sample text from a LLaMA checkpoint (Touvron et al., 2023), as llama2.c's `run` does, in tinygrad.

  python generate.py stories260K.bin --tokenizer tok512.model -p "Once upon a time" -n 200
  python generate.py smollm2-135m-instruct-q4_1.gguf --chat
  python generate.py            # the checkpoint `python train.py` wrote to out/

The prompt is prefilled through the KV cache in fixed-size chunks, then one TinyJit-compiled step per token runs the
model at a symbolic position and samples the next id on the device, so only that id crosses to the host.
Sampling is Meta's: temperature, then nucleus (top-p) sampling as in `sample_top_p`, optionally top-k first.
The two compiled steps, with the weights and the KV cache they hold, are kept in --cache-dir after a launch, so that
the next launch with the same checkpoint and settings neither loads the checkpoint nor compiles.
"""
from __future__ import annotations
import argparse, hashlib, importlib.metadata, pathlib, statistics, sys, time
import chat, checkpoint, kernels, parallel, serve
from cli import one_line_errors
from runs import DEFAULT_OUT
from engine import use_all_cores, use_cpu_graph, use_kernel_options
from decode import Generator, Sampling, Stats, generate, weight_bytes
from progress import phase

# ***** command line *****

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
  fmt, stats, first = chat.chat_format(tok), Stats(), True
  interactive = sys.stdin.isatty()
  while True:
    if interactive: print("> ", end="", file=sys.stderr, flush=True)
    line = sys.stdin.readline()
    if not line: break
    if not line.strip(): continue
    if not interactive: print(f"> {line.strip()}", flush=True)   # piped: the transcript shows whose turn it is
    ids = chat.encode_pieces(tok, fmt.turn(line.rstrip("\n"), args.system if first else None, first))
    # the previous answer's last sampled token (EOS, or where -n cut it) is not in the cache yet: close the turn
    if gen.pending is not None:
      last = gen.pending.item()
      ids = ([last] if last != tok.eos_id else []) + [tok.eos_id] + chat.encode_pieces(tok, fmt.after_eos()) + ids
    if gen.pos + len(ids) >= gen.max_context:
      raise ValueError(f"the conversation no longer fits the context of {gen.max_context} tokens")
    show = Printer(tok)
    generate(gen, ids, args.max_new_tokens, tok.eos_id, stats, show)
    show.close()
    print(f"[{stats.stop}]", file=sys.stderr)
    first = False
  return stats

def run_benchmark(gen: Generator, model, tok, args, prompt_ids: list[int], runs: int = 5):
  """The same prompt `runs` times on warm compiled steps, after a warm-up run (the steps compile on their first
  call), which is reported apart."""
  ttft, prefill, decode = [], [], []
  for r in range(runs + 1):
    gen.reset()
    stats = Stats()
    generate(gen, prompt_ids, args.max_new_tokens, None, stats)   # no EOS stop: every run decodes the same count
    print(f"  run {r + 1}/{runs + 1}{' (warm-up: compiles)' if r == 0 else ''}: {stats.line()}", file=sys.stderr)
    if r == 0:
      cold = stats
      continue
    ttft.append(stats.ttft)
    prefill.append(stats.prompt_tokens / stats.prefill_time)
    decode.append(stats.decode_steps / stats.decode_time)
  nbytes, tps = weight_bytes(model), statistics.median(decode)
  print(f"benchmark: {len(prompt_ids)} prompt tokens, {args.max_new_tokens} new, median of {runs} warm runs",
        file=sys.stderr)
  print(f"  cold run: time to first token {cold.ttft:.2f} s (incl. compiling the prefill), "
        f"{cold.compile_time:.1f} s compiling the decode step", file=sys.stderr)
  print(
    f"  warm: time to first token {statistics.median(ttft):.3f} s | prefill {statistics.median(prefill):.1f} tok/s | "
    f"decode {tps:.1f} tok/s | weights {nbytes / 1e6:.1f} MB/token -> {nbytes * tps / 1e9:.2f} GB/s", file=sys.stderr)

# ***** the cache of compiled steps *****

# the code that builds, loads and runs the model and the steps, and what a kept launch restores (this file)
CODE = [pathlib.Path(__file__).resolve().parent / f"{m}.py" for m in (
  "checkpoint", "decode", "engine", "generate", "gguf", "kernels", "llama", "parallel", "quant", "tensorfiles",
  "tokenizer")]

def fingerprint(path) -> list[str]:
  """A checkpoint's (or tokenizer's) resolved path, size and modification time, with those of the files in it (a
  directory) and of the tokenizer files checkpoint.load would find beside it."""
  p = pathlib.Path(path).expanduser().resolve()
  out = []
  for f in [p, *(sorted(p.iterdir()) if p.is_dir() else ()), p.parent / "tokenizer.model", p.parent / "tokenizer.bin"]:
    try: st = f.stat()
    except OSError: continue
    out.append(f"{f} {st.st_size} {st.st_mtime_ns}")
  return out

def cache_file(args, sampling: Sampling, devices: tuple[str, ...]) -> pathlib.Path | None:
  """The file that keeps this launch's compiled steps (Generator.save): SLOT-VERSION.jit, SLOT a digest of the
  checkpoint's and tokenizer's paths, the context, the kind of sampling (decode.Sampling.kind), --beam and the device,
  VERSION a digest of those files' sizes and modification times, tinygrad's and Python's versions and the contents of
  CODE. None: --cache-dir "", or --serve, --benchmark or several devices, which it does not serve."""
  if not args.cache_dir or args.serve or args.benchmark or len(devices) > 1: return None
  files = [pathlib.Path(p).expanduser().resolve() for p in (args.model, args.tokenizer) if p]
  slot = [files, args.max_context, sampling.kind(), args.beam, devices]
  version = [*map(fingerprint, files), importlib.metadata.version("tinygrad"), sys.version_info[:2],
             *(f.read_bytes() for f in CODE)]
  digest = lambda x: hashlib.sha256(repr(x).encode()).hexdigest()[:16]
  return pathlib.Path(args.cache_dir).expanduser() / f"{digest(slot)}-{digest(version)}.jit"

def restore(path: pathlib.Path | None, sampling: Sampling, seed: int | None):
  """(Generator, tokenizer, ModelArgs, weight bytes) from the cache file `path`; None when there is none, or when it
  cannot be read back, which one line on stderr says (it is then rebuilt)."""
  if path is None or not path.is_file(): return None
  try:
    with phase(f"loading the compiled steps from {path}"):
      gen, extra = Generator.restore(path, sampling, seed)
    return gen, extra["tokenizer"], extra["args"], extra["weight_bytes"]
  except (ValueError, KeyError) as e:
    print(f"generate.py: ignoring the unreadable cache file (it is rebuilt): {e}", file=sys.stderr)
    return None

def keep(gen: Generator, path: pathlib.Path, tok, margs, nbytes: int):
  """Save the compiled steps to `path` for the next launch and remove the files of the same slot that it replaces
  (an older checkpoint file or code). A failure to write only says so: this launch's text is out already."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    gen.save(path, tokenizer=tok, args=margs, weight_bytes=nbytes)
    for old in path.parent.glob(f"{path.name.split('-')[0]}-*.jit"):
      if old != path: old.unlink(missing_ok=True)
  except OSError as e: print(f"generate.py: the compiled steps were not kept for the next launch: {e}", file=sys.stderr)

BENCH_PROMPT = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description="Sample from a LLaMA checkpoint (GGUF, llama2.c .bin, Meta, Hugging Face or our own directory).")
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
  p.add_argument("--benchmark", action="store_true",
                 help="time a fixed prompt: median prefill and decode tok/s, bandwidth")
  p.add_argument(
    "--devices", default=None, help="e.g. CUDA:0,CUDA:1: split the model across them, tensor parallel (§2.4); "
    "default: tinygrad's default device")
  p.add_argument("--serve", action="store_true", help="serve an OpenAI-compatible HTTP API (/v1) and a chat page (/); "
                 "-t, --top-p, --top-k, --seed and -n become the requests' defaults")
  p.add_argument("--host", default="127.0.0.1", help="--serve: the address to listen on")
  p.add_argument("--port", type=int, default=8000, help="--serve: the port (0: any free one)")
  p.add_argument("--api-key", default=None, help="--serve: every /v1 request must send 'Authorization: Bearer KEY'")
  p.add_argument(
    "--beam", type=int, default=0,
    help="BEAM search width for the kernel options of the compiled steps (0: tinygrad's heuristics); the first run "
    "searches, later runs read the cache")
  p.add_argument(
    "--cache-dir", default="~/.cache/llama-tinygrad",
    help="where the compiled steps are kept for the next launch with the same checkpoint and settings, which then "
    "starts in about a second; a kept model takes its weights' and KV cache's size on disk (SmolLM2-135M Q4_1: "
    "215 MB); \"\" turns it off. Not used by --serve, --benchmark or several --devices")
  return p.parse_args(argv)

def main(argv=None) -> int:   # checkpoint.CheckpointError, TokenizerError are ValueErrors: one line, no traceback
  use_all_cores()
  use_cpu_graph()
  use_kernel_options()
  return one_line_errors("generate.py", lambda: run(parse_args(argv)))

def run(args):
  sampling = Sampling(args.temperature, args.top_p, args.top_k).check()
  if args.max_new_tokens < 1: raise ValueError(f"-n must be at least 1, got {args.max_new_tokens}")
  if args.serve and (args.chat or args.benchmark): raise ValueError("--serve runs alone: drop --chat and --benchmark")
  if not 0 <= args.port < 65536: raise ValueError(f"--port must be in 0..65535, got {args.port}")
  if args.model is None:
    if not DEFAULT_OUT.exists():
      raise ValueError(
        f"no MODEL given and no checkpoint in {DEFAULT_OUT}/: run `python train.py` first or pass a checkpoint path")
    args.model = str(DEFAULT_OUT)
  devices = parallel.parse_devices(args.devices)
  t0, cache = time.perf_counter(), cache_file(args, sampling, devices)
  if hit := restore(cache, sampling, args.seed):
    gen, tok, margs, nbytes = hit
    ctx, source = gen.max_context, f" from the cache {cache}"
  else:
    # several devices: each tensor is split as it is read, so no device ever holds the whole model
    with phase(f"loading {args.model}"):
      # compact: a GGUF's quantised blocks stay as they are (fewer bytes read per decoded token, quant.py)
      model, tok = checkpoint.load(args.model, tokenizer=args.tokenizer, device=devices, compact=True)
    if tok is None: raise ValueError("the checkpoint has no tokenizer beside it: pass --tokenizer PATH")
    margs, nbytes, source, max_seq = model.args, weight_bytes(model), "", model.args.max_seq_len
    ctx = args.max_context if args.max_context is not None else min(max_seq, 2048)
    if not 1 < ctx <= max_seq:
      raise ValueError(f"--max-context must be in 2..{max_seq} (the model's context), got {ctx}")
  ids: list[int] = []
  if not args.chat and not args.serve:
    prompt = BENCH_PROMPT if args.benchmark and not args.prompt else args.prompt
    ids = tok.encode(prompt, bos=getattr(tok, "add_bos", True)) if prompt else [tok.bos_id]
    if len(ids) >= ctx:
      raise ValueError(f"the prompt is {len(ids)} tokens, too long for the context of {ctx} (--max-context)")
  print(f"loaded {args.model}{source} in {time.perf_counter() - t0:.1f} s: {margs.n_layers} layers, dim {margs.dim}, "
        f"vocab {margs.vocab_size}, {nbytes / 1e6:.1f} MB of weights"
        + (f" split over {len(devices)} devices (tensor parallel)" if len(devices) > 1 else ""), file=sys.stderr)
  if not hit: gen = Generator(kernels.use_decode_kernels(model), ctx, sampling, args.seed, beam=args.beam)
  if args.serve: return serve.serve(gen, tok, args)
  if args.benchmark: return run_benchmark(gen, model, tok, args, ids)
  if args.chat: stats = run_chat(gen, tok, args)
  else:
    stats, _ = run_plain(gen, tok, args, ids)
    print(f"[stopped: {stats.stop}]", file=sys.stderr)
  print(stats.line(), file=sys.stderr)
  if cache is not None and not hit and stats.prompt_tokens: keep(gen, cache, tok, margs, nbytes)

if __name__ == "__main__": sys.exit(main())
