"""Time one training step (forward, backward, clip, AdamW) of steps.make_train_step on random tokens and, with --torch,
the same model as transformers' LlamaForCausalLM in PyTorch eager (an optional extra: pip install -r
requirements-extras.txt): mixed precision by autocast for a 16-bit --dtype, fused AdamW, the same §2.3 settings. Steps
interleaved; prints tok/s, model TFLOP/s (and on a GPU the share of --peak-tflops) and the ratio, as one table.

  python bench_train.py                                    # the default preset at train.py's default batch
  python bench_train.py --preset 15M --batch-size 8 --seq-len 256 --torch
  DEV=CUDA python3 bench_train.py --torch --dim 768 --n-layers 12 --n-heads 12 --vocab-size 32000 --dtype bfloat16 \\
    --batch-size 8 --seq-len 1024                          # 134M parameters, the GPU comparison
"""
from __future__ import annotations
import argparse, multiprocessing, statistics, sys, time
import numpy as np
from tinygrad import Context, Device, Tensor, dtypes
import llama, train
from optim import make_optimizer
from steps import make_train_step
try: import torch, transformers
except ImportError: torch = transformers = None

Step = tuple[float, float]   # wall seconds, CPU seconds of this process

def timed(step) -> Step:
  w, c = time.perf_counter(), time.process_time()
  step()
  return time.perf_counter() - w, time.process_time() - c

def flops_per_token(args: llama.ModelArgs, seq_len: int) -> int:
  """Model FLOPs of one trained token (PaLM, Chowdhery et al. 2022, App. B): 6 per weight that multiplies (forward 2,
  backward 4; every parameter but the input embedding, a lookup), plus 12·layers·dim·seq_len for attention's scores
  and weighted sums, the causal mask's skipped half counted too."""
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
  def run():
    x, y = (train.to_device(rng.integers(0, args.vocab_size, (1, t.batch_size, t.seq_len), dtype=np.int32), t.devices, t.parallel, 1)
            for _ in range(2))
    with Context(USE_ATOMICS=train.use_atomics(t.devices, t.parallel), BEAM=t.beam): step(x, y, lr)[0].item()
  return run

# ***** PyTorch, in a process of its own (tinygrad's CUDA backend makes its own context current on the thread) *****

def torch_worker(conn, args: llama.ModelArgs, t: train.TrainConfig, device: str):
  """Build the model and optimiser, send a description, then answer each request n with n timed steps; None ends."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(hidden_size=args.dim, intermediate_size=args.ffn_hidden, num_hidden_layers=args.n_layers,
                                 num_attention_heads=args.n_heads, num_key_value_heads=args.n_kv_heads, vocab_size=args.vocab_size,
                                 max_position_embeddings=args.max_seq_len, rms_norm_eps=args.norm_eps, rope_theta=args.rope_theta,
                                 tie_word_embeddings=args.tie_embeddings)
  with torch.device(device): model = transformers.LlamaForCausalLM(cfg)   # float32 weights: autocast computes in 16 bits
  # weight decay as optim.param_groups: on the linear layers' matrices, not on norms or the token embedding
  decay = [p for n, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in n]
  keep = [p for n, p in model.named_parameters() if not (p.ndim == 2 and "embed_tokens" not in n)]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": keep, "weight_decay": 0.0}],
                          lr=t.lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
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
  conn.send(f"transformers {transformers.__version__} eager{f', {t.dtype} autocast' if half else ''}, fused AdamW (torch {torch.__version__} on {where})")
  while (n := conn.recv()) is not None: conn.send([timed(step) for _ in range(n)])

class TorchSteps:
  def __init__(self, args: llama.ModelArgs, t: train.TrainConfig):
    ctx = multiprocessing.get_context("spawn")
    self.conn, child = ctx.Pipe()
    device = "cpu" if Device.DEFAULT == "CPU" else "cuda"
    self.proc = ctx.Process(target=torch_worker, args=(child, args, t, device), daemon=True)
    self.proc.start()
    self.name = self.conn.recv()

  def __call__(self, n: int = 1) -> list[Step]:
    self.conn.send(n)
    return self.conn.recv()

  def close(self):
    self.conn.send(None)
    self.proc.join(30)

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Tokens/s of one training step: steps.make_train_step against transformers eager.")
  p.add_argument("--vocab-size", type=int, help="default: the preset's")
  p.add_argument("--steps", type=int, default=5, help="timed steps of each (after 2 warm-up steps), interleaved")
  p.add_argument("--torch", action="store_true", help="also time transformers in PyTorch (optional extras)")
  p.add_argument("--time-limit", type=float, default=0, help="start no timed step after this many seconds (one always runs); 0: none")
  p.add_argument("--peak-tflops", type=float, default=989.0,
                 help="the GPU's peak for the share printed on a GPU (default 989: H100/H200 SXM dense bf16, NVIDIA's datasheet)")
  try:
    a, rest = p.parse_known_args(argv)
    t = train.parse_args(rest)   # every train.py flag (preset, sizes, batch, optimiser, --dtype, --beam) means the same here
    args = train.model_args(t, a.vocab_size or train.preset(t).vocab_size)
  except ValueError as e:
    print(f"bench_train.py: error: {e}", file=sys.stderr)
    return 1
  if a.torch and transformers is None:
    print("bench_train.py: error: --torch needs torch and transformers: pip install -r requirements-extras.txt", file=sys.stderr)
    return 1
  t_start, tokens, fpt = time.perf_counter(), t.batch_size * t.seq_len, flops_per_token(args, t.seq_len)
  what = (f"train step, {args.num_params() / 1e6:.0f}M params (dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads, "
          f"vocab {args.vocab_size}) {t.dtype}, batch {t.batch_size}x{t.seq_len}")
  print(f"{what}: {fpt / 1e6:.0f} model MFLOP per token; tinygrad on {Device.DEFAULT}", flush=True)
  step = ours(t, args)
  runs = {"ours": lambda: timed(step)}
  anchor = TorchSteps(args, t) if a.torch else None
  try:
    if anchor: runs[anchor.name] = lambda: anchor()[0]
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
  finally:
    if anchor: anchor.close()
  tok_s, text = {}, {}
  for name, ts in times.items():
    wall, cpu = statistics.median(w for w, _ in ts), statistics.median(c for _, c in ts)
    tok_s[name] = tokens / wall
    share = f" ({100 * fpt * tok_s[name] / (a.peak_tflops * 1e12):.1f}% of {a.peak_tflops:.0f})" if Device.DEFAULT != "CPU" else ""
    text[name] = f"{tok_s[name]:,.0f} tok/s, {fpt * tok_s[name] / 1e12:.3g} TFLOP/s{share}"
    print(f"{name}: {wall:.4f} s/step, {cpu:.2f} CPU s/step, {text[name]} (median of {len(ts)})")
  print("\n| workload | ours | anchor | ratio |\n|---|---|---|---|")
  print(f"| {what} | {text['ours']} | " + (f"{anchor.name}: {text[anchor.name]} | {tok_s['ours'] / tok_s[anchor.name]:.2f}x |" if anchor else "- | - |"))
  return 0

if __name__ == "__main__": sys.exit(main())
