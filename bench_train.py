"""Time one training step (forward, backward, clip, AdamW) of train.py's tinygrad step, and of the same model as a
PyTorch eager step when torch is installed (an optional extra: pip install torch), on random tokens.

  python bench_train.py                                    # the default preset at train.py's default batch
  python bench_train.py --preset 15M --batch-size 8 --seq-len 256 --torch
"""
from __future__ import annotations
import argparse, math, sys, time
import numpy as np

def bench(step, steps: int, tokens: int) -> dict:
  """Median wall and CPU seconds of a step after two warm-up steps (tinygrad: run eagerly, then capture)."""
  for _ in range(2): step()
  wall, cpu = [], []
  for _ in range(steps):
    w, c = time.perf_counter(), time.process_time()
    step()
    wall.append(time.perf_counter() - w); cpu.append(time.process_time() - c)
  s = float(np.median(wall))
  return {"s_per_step": s, "tok_s": tokens / s, "cpu_s_per_step": float(np.median(cpu))}

def tinygrad_step(a, args):
  from tinygrad import Context, Tensor, dtypes
  import llama, train
  Tensor.manual_seed(0)
  model = llama.Transformer(args)
  opt, params = train.make_optimizer(model, a.lr, a.weight_decay)
  step = train.make_train_step(model, opt, params, a.grad_clip)
  rng = np.random.default_rng(0)
  lr = Tensor([a.lr], dtype=dtypes.float32).realize()
  def run():
    x = train.to_device(rng.integers(0, args.vocab_size, (1, a.batch_size, a.seq_len), dtype=np.int32))
    y = train.to_device(rng.integers(0, args.vocab_size, (1, a.batch_size, a.seq_len), dtype=np.int32))
    with Context(USE_ATOMICS=train.use_atomics(a.devices, a.parallel)): step(x, y, lr)[0].item()
  return run

def torch_step(a, args):
  """The same architecture in PyTorch eager (Meta's model.py, no KV cache), the same §2.3 optimiser settings."""
  import torch
  import torch.nn.functional as F
  torch.manual_seed(0)
  hd, kv = args.head_dim, args.n_kv_heads
  class Block(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.wq, self.wo = torch.nn.Linear(args.dim, args.dim, bias=False), torch.nn.Linear(args.dim, args.dim, bias=False)
      self.wk, self.wv = torch.nn.Linear(args.dim, kv * hd, bias=False), torch.nn.Linear(args.dim, kv * hd, bias=False)
      self.w1, self.w3 = torch.nn.Linear(args.dim, args.ffn_hidden, bias=False), torch.nn.Linear(args.dim, args.ffn_hidden, bias=False)
      self.w2 = torch.nn.Linear(args.ffn_hidden, args.dim, bias=False)
      self.n1, self.n2 = torch.nn.RMSNorm(args.dim, eps=args.norm_eps), torch.nn.RMSNorm(args.dim, eps=args.norm_eps)
    def forward(self, x, cos, sin):
      B, T, _ = x.shape
      h = self.n1(x)
      q, k, v = self.wq(h).view(B, T, -1, hd), self.wk(h).view(B, T, kv, hd), self.wv(h).view(B, T, kv, hd)
      def rope(t):
        a, b = t.float().unflatten(-1, (-1, 2)).unbind(-1)
        return torch.stack((a * cos - b * sin, a * sin + b * cos), -1).flatten(-2).type_as(t)
      q, k, v = rope(q).transpose(1, 2), rope(k).transpose(1, 2), v.transpose(1, 2)
      o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=kv != args.n_heads)
      x = x + self.wo(o.transpose(1, 2).reshape(B, T, -1))
      h = self.n2(x)
      return x + self.w2(F.silu(self.w1(h)) * self.w3(h))
  class Model(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.emb, self.layers = torch.nn.Embedding(args.vocab_size, args.dim), torch.nn.ModuleList(Block() for _ in range(args.n_layers))
      self.norm, self.out = torch.nn.RMSNorm(args.dim, eps=args.norm_eps), torch.nn.Linear(args.dim, args.vocab_size, bias=False)
      inv = 1.0 / (args.rope_theta ** (torch.arange(0, hd, 2).float() / hd))
      ang = torch.outer(torch.arange(a.seq_len).float(), inv)
      self.cos, self.sin = ang.cos()[None, :, None], ang.sin()[None, :, None]
    def forward(self, t):
      h = self.emb(t)
      for layer in self.layers: h = layer(h, self.cos, self.sin)
      return self.out(self.norm(h)).float()
  model = Model()
  decay = [p for n, p in model.named_parameters() if p.ndim == 2 and not n.startswith("emb")]
  keep = [p for n, p in model.named_parameters() if not (p.ndim == 2 and not n.startswith("emb"))]
  opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay}, {"params": keep, "weight_decay": 0.0}], lr=a.lr, betas=(0.9, 0.95))
  g = torch.Generator().manual_seed(0)
  def run():
    x = torch.randint(0, args.vocab_size, (a.batch_size, a.seq_len), generator=g)
    y = torch.randint(0, args.vocab_size, (a.batch_size, a.seq_len), generator=g)
    loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
    opt.step()
    loss.item()
  return run

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Seconds per training step: train.py's tinygrad step against PyTorch eager.")
  p.add_argument("--vocab-size", type=int, help="default: the preset's")
  p.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warm-up steps)")
  p.add_argument("--torch", action="store_true", help="also time PyTorch (optional extra)")
  import train
  a, rest = p.parse_known_args(argv)
  t = train.parse_args(rest)   # every train.py flag (preset, sizes, batch, optimiser) means the same here
  args = train.model_args(t, a.vocab_size or train.preset(t).vocab_size)
  tokens = t.batch_size * t.seq_len
  print(f"{t.preset}: dim {args.dim}, {args.n_layers} layers, {args.n_heads} heads ({args.n_kv_heads} kv), vocab {args.vocab_size}, "
        f"{args.num_params() / 1e6:.2f}M params, batch {t.batch_size}x{t.seq_len}")
  runs = [("tinygrad", tinygrad_step)]
  if a.torch:
    try: import torch
    except ImportError: print("bench_train.py: error: --torch needs PyTorch: pip install torch", file=sys.stderr); return 1
    runs.append((f"torch {torch.__version__} ({torch.get_num_threads()} threads)", torch_step))
  results = {}
  for name, make in runs:
    r = results[name] = bench(make(t, args), a.steps, tokens)
    # model FLOPs: 6 per parameter per token (forward 2, backward 4), the figure MFU divides by the device's peak
    print(f"{name:>28}: {r['s_per_step']:.3f} s/step  {r['tok_s']:8.0f} tok/s  ({r['cpu_s_per_step']:.2f} CPU s/step)  "
          f"{6 * args.num_params() * r['tok_s'] / 1e9:.1f} model GFLOP/s")
  if len(results) == 2:
    (_, tg), (_, pt) = results.items()
    print(f"tinygrad / torch tokens/s: {tg['tok_s'] / pt['tok_s']:.2f}x")
  return 0

if __name__ == "__main__": sys.exit(main())
