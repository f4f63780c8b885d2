"""Time one training step (forward, backward, clip, AdamW) of steps.make_train_step on random tokens and, with --torch,
the same model as transformers' LlamaForCausalLM in PyTorch eager (optional extras: pip install -r
requirements-extras.txt): float32 weights with autocast for a 16-bit --dtype, fused AdamW, the same §2.3 settings.
Steps interleaved; prints tok/s, model TFLOP/s (on a GPU also the share of --peak-tflops) and the ratio as a table.

  python bench_train.py                                    # the default preset at train.py's default batch
  python bench_train.py --preset 15M --batch-size 8 --seq-len 256 --torch
  DEV=CUDA python3 bench_train.py --torch --dim 768 --n-layers 12 --n-heads 12 --vocab-size 32000 --dtype bfloat16 \\
    --batch-size 8 --seq-len 1024                          # 134M parameters: the GPU comparison
"""
from __future__ import annotations
import argparse, contextlib, multiprocessing, statistics, sys, time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import numpy as np
from tinygrad import Context, Device, Tensor, dtypes
import llama, parallel
from cli import GRAPH, add_benchmark_flags, interleaved
from optim import make_optimizer
from steps import make_train_step
from engine import use_all_cores, use_cpu_graph, use_kernel_options
try: import torch, transformers
except ImportError: torch = transformers = None

Step = tuple[float, float]   # wall seconds, CPU seconds of the process that ran it

def timed(step) -> Step:
  w, c = time.perf_counter(), time.process_time()
  step()
  return time.perf_counter() - w, time.process_time() - c

def flops_per_token(args: llama.ModelArgs, seq_len: int) -> int:
  """Model FLOPs of one trained token (PaLM, Chowdhery et al. 2022, App. B): 6 per weight that multiplies (forward 2,
  backward 4; every parameter but the input embedding, a lookup), plus 12·layers·dim·seq_len for attention's scores
  and weighted sums, the half that the causal mask skips counted too."""
  lookup = 0 if args.tie_embeddings else args.vocab_size * args.dim
  return 6 * (args.num_params() - lookup) + 12 * args.n_layers * args.dim * seq_len

def model_args(a: argparse.Namespace) -> llama.ModelArgs:
  """The preset with the flags' overrides, as train.py reads them."""
  fields = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of")
  return llama.preset_args(a.preset, a.seq_len, a.vocab_size, **{k: getattr(a, k) for k in fields})

def ours(a: argparse.Namespace, args: llama.ModelArgs):
  """A model of `args` in --dtype on the default device, optim's AdamW and steps' compiled step, as train.py makes
  them; returns a function doing one step."""
  Tensor.manual_seed(0)
  model = llama.Transformer(args)
  for w in llama.learned(model).values(): w.replace(w.cast(getattr(dtypes, a.dtype)).contiguous()).realize()
  opt, params = make_optimizer(model, a.lr, a.weight_decay)
  step = make_train_step(model, opt, params, a.grad_clip)
  rng, lr = np.random.default_rng(0), Tensor([a.lr], dtype=dtypes.float32).realize()
  # the embedding's backward as a scatter where tinygrad 0.14 has that kernel (CPU, AMD), as train.py does
  atomics = parallel.use_atomics(parallel.model_devices(model), "dp")
  def run():
    x, y = (Tensor(rng.integers(0, args.vocab_size, (1, a.batch_size, a.seq_len), dtype=np.int32)) for _ in range(2))
    with Context(USE_ATOMICS=atomics, BEAM=a.beam): step(x, y, lr)[0].item()
  return run

# ***** PyTorch, in a process of its own *****
# tinygrad's CUDA backend makes its own context current on the thread, and PyTorch's runtime calls would run in it; a
# pool of one worker, so that a worker that dies raises BrokenProcessPool instead of leaving us waiting.

TORCH = {}   # in the worker process: what torch_setup made
CORES = {"all": {"ours": True}, "one": {"ours": False}, "both": {"ours, one core": False, "ours, all cores": True}}

def torch_setup(args: llama.ModelArgs, a: argparse.Namespace, device: str):
  """The same model as transformers' LlamaForCausalLM and the same optimiser settings; TORCH['step'] does one step."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(hidden_size=args.dim, intermediate_size=args.ffn_hidden,
                                 num_hidden_layers=args.n_layers, num_attention_heads=args.n_heads,
                                 num_key_value_heads=args.n_kv_heads,
                                 vocab_size=args.vocab_size, max_position_embeddings=args.max_seq_len,
                                 rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
                                 tie_word_embeddings=args.tie_embeddings)
  with torch.device(device): model = transformers.LlamaForCausalLM(cfg)   # float32 weights; autocast: 16-bit compute
  # weight decay as optim.param_groups: on the linear layers' matrices, not on norms or the token embedding
  decayed = lambda name, p: p.ndim == 2 and "embed_tokens" not in name
  groups = [{"params": [p for n, p in model.named_parameters() if decayed(n, p) == d],
             "weight_decay": a.weight_decay if d else 0.0} for d in (True, False)]
  opt = torch.optim.AdamW(groups, lr=a.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
  half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(a.dtype)
  g = torch.Generator(device).manual_seed(0)
  def step():
    x, y = (torch.randint(0, args.vocab_size, (a.batch_size, a.seq_len), generator=g, device=device) for _ in range(2))
    with torch.autocast(torch.device(device).type, dtype=half, enabled=half is not None):
      logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
    opt.step()
    loss.item()
  where = torch.cuda.get_device_name() if device == "cuda" else f"the CPU ({torch.get_num_threads()} threads)"
  precision = f", {a.dtype} autocast" if half else ""
  TORCH.update(step=step, name=f"transformers {transformers.__version__} eager{precision}, fused AdamW "
                               f"(torch {torch.__version__} on {where})")

def torch_name() -> str: return TORCH["name"]
def torch_timed() -> Step: return timed(TORCH["step"])

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Tokens/s of one training step: steps.make_train_step against transformers.")
  m = p.add_argument_group("model and batch (train.py's flags)")
  m.add_argument("--preset", choices=llama.PRESETS, default="small", help="default small; the flags below override it")
  for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of", "vocab_size"):
    m.add_argument("--" + f.replace("_", "-"), type=int, help="default: the preset's")
  m.add_argument("--batch-size", type=int, default=8)
  m.add_argument("--seq-len", type=int, default=128)
  m.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
  m.add_argument("--lr", type=float, default=3e-3)
  m.add_argument("--weight-decay", type=float, default=0.1)
  m.add_argument("--grad-clip", type=float, default=1.0)
  m.add_argument("--beam", type=int, default=0, help="tinygrad BEAM search width for our kernels (0: its heuristics)")
  b = p.add_argument_group("the benchmark")
  b.add_argument("--steps", type=int, default=5, help="timed steps of each (after 2 warm-up steps), interleaved")
  b.add_argument("--torch", action="store_true", help="also time transformers in PyTorch (optional extras)")
  add_benchmark_flags(b, "step")
  b.add_argument("--peak-tflops", type=float, default=989.0,
                 help="the GPU's peak for the share shown on a GPU (default 989: H100/H200 SXM, dense bf16, datasheet)")
  a = p.parse_args(argv)
  if min(a.batch_size, a.seq_len, a.steps) < 1: p.error("--batch-size, --seq-len and --steps must be at least 1")
  try: args = model_args(a)
  except ValueError as e: p.error(str(e))
  if a.torch and transformers is None:
    p.error("--torch needs torch and transformers: pip install -r requirements-extras.txt")
  t_start, tokens, fpt = time.perf_counter(), a.batch_size * a.seq_len, flops_per_token(args, a.seq_len)
  what = (f"train step, {args.num_params() / 1e6:.3g}M params (dim {args.dim}, {args.n_layers} layers, "
          f"{args.n_heads} heads, vocab {args.vocab_size}) {a.dtype}, batch {a.batch_size}x{a.seq_len}")
  print(f"{what}: {fpt / 1e6:.0f} model MFLOP per token; tinygrad on {Device.DEFAULT}", flush=True)
  runs, anchor = {}, None
  use_kernel_options()   # as train.py
  for suffix, graph in GRAPH[a.graph].items():
    step = ours(a, args)   # captured on its first run, with that run's graph setting
    for name, on in CORES[a.cores].items():
      def run(on=on, graph=graph, step=step):
        use_all_cores(on)
        use_cpu_graph(graph)
        return timed(step)
      runs[name + suffix] = run
  ours_names = list(runs)
  with contextlib.ExitStack() as stack:
    try:
      if a.torch:
        setup = (args, a, "cpu" if Device.DEFAULT == "CPU" else "cuda")
        pool = stack.enter_context(ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), torch_setup, setup))
        anchor = pool.submit(torch_name).result()
        runs[anchor] = lambda: pool.submit(torch_timed).result()
      for name, run in runs.items():
        w = time.perf_counter()
        for _ in range(2): run()   # ours: the first captures (compiles)
        print(f"{name}: two warm-up steps in {time.perf_counter() - w:.1f} s", flush=True)
      times: dict[str, list[Step]] = interleaved(runs, a.steps, a.time_limit, t_start, "steps")
    except BrokenProcessPool:
      print("bench_train.py: error: the PyTorch process failed (its traceback is above)", file=sys.stderr)
      return 1
  tok_s, text = {}, {}
  for name, ts in times.items():
    wall, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
    tok_s[name] = tokens / wall
    tflops = fpt * tok_s[name] / 1e12
    text[name] = f"{tok_s[name]:,.0f} tok/s, {tflops:.3g} TFLOP/s"
    if Device.DEFAULT != "CPU": text[name] += f" ({100 * tflops / a.peak_tflops:.1f}% of {a.peak_tflops:.0f})"
    print(f"{name}: {wall:.4f} s/step, {cpu:.2f} CPU s/step, {text[name]} (median of {len(ts)})")
  print("\n| workload | ours | anchor | ratio |\n|---|---|---|---|")
  for name in ours_names:
    ref = f"{anchor}: {text[anchor]} | {tok_s[name] / tok_s[anchor]:.2f}x" if anchor else "- | -"
    print(f"| {what}{name[4:]} | {text[name]} | {ref} |")
  if a.cores == "both" and a.graph != "both":
    suffix = next(iter(GRAPH[a.graph]))
    print(f"all cores / one core: {tok_s['ours, all cores' + suffix] / tok_s['ours, one core' + suffix]:.2f}x")
  if a.graph == "both" and a.cores != "both":
    name = next(iter(CORES[a.cores]))
    print(f"CPU graph / tinygrad's executor: {tok_s[name + ', CPU graph'] / tok_s[name + ', no CPU graph']:.2f}x")
  return 0

if __name__ == "__main__": sys.exit(main())
