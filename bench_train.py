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
import llama, train
from optim import make_optimizer
from steps import make_train_step
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

def ours(t: train.TrainConfig, args: llama.ModelArgs):
  """train.py's model, placement (--dtype, --devices) and compiled step; returns a function doing one step."""
  Tensor.manual_seed(0)
  model = llama.Transformer(args)
  train.place_model(model, t)
  opt, params = make_optimizer(model, t.lr, t.weight_decay)
  step = make_train_step(model, opt, params, t.grad_clip)
  rng, lr = np.random.default_rng(0), Tensor([t.lr], dtype=dtypes.float32).realize()
  def batch() -> Tensor:
    ids = rng.integers(0, args.vocab_size, (1, t.batch_size, t.seq_len), dtype=np.int32)   # (accum, batch, seq)
    return train.to_device(ids, t.devices, t.parallel, batch_axis=1)
  def run():
    x, y = batch(), batch()
    with Context(USE_ATOMICS=train.use_atomics(t.devices, t.parallel), BEAM=t.beam): step(x, y, lr)[0].item()
  return run

# ***** PyTorch, in a process of its own *****
# tinygrad's CUDA backend makes its own context current on the thread, and PyTorch's runtime calls would run in it; a
# pool of one worker, so that a worker that dies raises BrokenProcessPool instead of leaving us waiting.

TORCH = {}   # in the worker process: what torch_setup made

def torch_setup(args: llama.ModelArgs, t: train.TrainConfig, device: str):
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
             "weight_decay": t.weight_decay if d else 0.0} for d in (True, False)]
  opt = torch.optim.AdamW(groups, lr=t.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
  half = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(t.dtype)
  g = torch.Generator(device).manual_seed(0)
  def step():
    x, y = (torch.randint(0, args.vocab_size, (t.batch_size, t.seq_len), generator=g, device=device) for _ in range(2))
    with torch.autocast(torch.device(device).type, dtype=half, enabled=half is not None):
      logits = model(input_ids=x).logits
    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
    opt.step()
    loss.item()
  where = torch.cuda.get_device_name() if device == "cuda" else f"the CPU ({torch.get_num_threads()} threads)"
  precision = f", {t.dtype} autocast" if half else ""
  TORCH.update(step=step, name=f"transformers {transformers.__version__} eager{precision}, fused AdamW "
                               f"(torch {torch.__version__} on {where})")

def torch_name() -> str: return TORCH["name"]
def torch_timed() -> Step: return timed(TORCH["step"])

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Tokens/s of one training step: steps.make_train_step against transformers.")
  p.add_argument("--vocab-size", type=int, help="default: the preset's")
  p.add_argument("--steps", type=int, default=5, help="timed steps of each (after 2 warm-up steps), interleaved")
  p.add_argument("--torch", action="store_true", help="also time transformers in PyTorch (optional extras)")
  p.add_argument("--time-limit", type=float, default=0,
                 help="start no timed step after this many seconds since the start (one always runs); 0: none")
  p.add_argument("--peak-tflops", type=float, default=989.0,
                 help="the GPU's peak for the share shown on a GPU (default 989: H100/H200 SXM, dense bf16, datasheet)")
  try:
    a, rest = p.parse_known_args(argv)
    t = train.parse_args(rest)   # every train.py flag (preset, sizes, batch, optimiser, --dtype, --beam) means the same
    args = train.model_args(t, a.vocab_size or train.preset(t).vocab_size)
  except ValueError as e:
    print(f"bench_train.py: error: {e}", file=sys.stderr)
    return 1
  if a.torch and transformers is None:
    print("bench_train.py: error: --torch needs torch and transformers: pip install -r requirements-extras.txt",
          file=sys.stderr)
    return 1
  t_start, tokens, fpt = time.perf_counter(), t.batch_size * t.seq_len, flops_per_token(args, t.seq_len)
  what = (f"train step, {args.num_params() / 1e6:.3g}M params (dim {args.dim}, {args.n_layers} layers, "
          f"{args.n_heads} heads, vocab {args.vocab_size}) {t.dtype}, batch {t.batch_size}x{t.seq_len}")
  print(f"{what}: {fpt / 1e6:.0f} model MFLOP per token; tinygrad on {Device.DEFAULT}", flush=True)
  step, anchor = ours(t, args), None
  runs = {"ours": lambda: timed(step)}
  with contextlib.ExitStack() as stack:
    try:
      if a.torch:
        setup = (args, t, "cpu" if Device.DEFAULT == "CPU" else "cuda")
        pool = stack.enter_context(ProcessPoolExecutor(1, multiprocessing.get_context("spawn"), torch_setup, setup))
        anchor = pool.submit(torch_name).result()
        runs[anchor] = lambda: pool.submit(torch_timed).result()
      for name, run in runs.items():
        w = time.perf_counter()
        for _ in range(2): run()   # tinygrad: runs eagerly, then captures
        print(f"{name}: two warm-up steps in {time.perf_counter() - w:.1f} s", flush=True)
      times: dict[str, list[Step]] = {name: [] for name in runs}
      for i in range(a.steps):
        if i and a.time_limit and time.perf_counter() - t_start > a.time_limit:
          print(f"--time-limit of {a.time_limit:.0f} s reached: {i} timed steps instead of {a.steps}")
          break
        for name, run in runs.items(): times[name].append(run())
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
  ref = f"{anchor}: {text[anchor]} | {tok_s['ours'] / tok_s[anchor]:.2f}x" if anchor else "- | -"
  print(f"| {what} | {text['ours']} | {ref} |")
  return 0

if __name__ == "__main__": sys.exit(main())
