"""The paper's central argument (§1, Figure 1), reproduced at laptop scale: Hoffmann et al. (2022) pick the model size
and token count that reach a loss with the least *training* compute, but a model is trained once and served many
times, so for a target quality the preferred model is the one cheapest at *inference*: a smaller model trained on
more tokens than "compute-optimal" (LLaMA-7B still improved after 1T tokens).

  python scaling.py                                    # the default sizes on the default corpus
  python scaling.py --sizes 64x2,96x3,128x4,192x6 --tokens 2000000 --out out/big
  python scaling.py --sizes tiny,small --data data/mine --devices CUDA:0

Each size is an ordinary training run (training.train, train.py's code path, checkpoint and log) in --out/SIZE,
trained on --tokens tokens with the §2.3 recipe, its validation loss measured at geometrically spaced token counts;
the same command again continues an interrupted sweep and retrains nothing that is finished. Then every model's
decode speed is measured through the Generator that generate.py uses, and --out gets scaling.json, scaling.png
(with matplotlib) and the table of the trade-off on stdout.
"""
from __future__ import annotations
import argparse, json, math, pathlib, statistics, sys, time
from dataclasses import dataclass
import data, kernels, llama, plots, runs, training
from checkpoint import load
from decode import Generator, Sampling, Stats, generate, weight_bytes
from cli import one_line_errors
from files import atomic_write

class ScalingError(ValueError):
  """Bad input to scaling.py; the message is one line for the user."""

DEFAULT_SIZES = "64x1,96x2,96x3,128x3"
HEAD_DIM = 64   # Table 2's heads are 128 wide; at widths of 64-192, 64 keeps heads 64-128 wide, the widest multi-head

@dataclass
class Size:
  name: str                       # as given: a preset name, or DIMxLAYERS[xHEADS]
  cfg: training.TrainConfig
  args: llama.ModelArgs

  @property
  def non_embedding_params(self) -> int:
    """Kaplan et al. (2020)'s N: every parameter but the token embedding and the classifier."""
    a = self.args
    return a.num_params() - a.vocab_size * a.dim * (1 if a.tie_embeddings else 2)

  @property
  def flops_per_token(self) -> int:
    """Training FLOPs per token: 6·N (forward 2, backward 4 per multiplying parameter; N: every parameter but the
    input embedding, a table lookup) plus attention, 6·n_layers·seq_len·dim (Kaplan et al. 2020, Table 1: the
    forward's 2·n_layer·n_ctx·d_attn, counted over the whole context as they do, not the causal half)."""
    a = self.args
    n = a.num_params() - (0 if a.tie_embeddings else a.vocab_size * a.dim)
    return 6 * n + 6 * a.n_layers * self.cfg.seq_len * a.dim

def parse_size(name: str, base: dict, vocab_size: int) -> Size:
  """A preset name, or DIMxLAYERS (heads of HEAD_DIM where the width allows, one head below that) or DIMxLAYERSxHEADS;
  plain multi-head attention, ffn by §2.2's 2/3·4d rule (llama.ModelArgs), the rest from the small preset."""
  parts = name.split("x")
  if name in llama.PRESETS: over = dict(preset=name)
  elif len(parts) in (2, 3) and all(p.isdigit() and int(p) > 0 for p in parts):
    dim, layers = int(parts[0]), int(parts[1])
    heads = int(parts[2]) if len(parts) == 3 else max(1, dim // HEAD_DIM)
    if dim % heads or (dim // heads) % 2:
      raise ScalingError(f"size {name}: {heads} heads do not split dim {dim} into even head sizes")
    over = dict(preset="small", dim=dim, n_layers=layers, n_heads=heads, n_kv_heads=heads)
  else: raise ScalingError(f"size {name!r} is neither a preset ({', '.join(llama.PRESETS)}) nor DIMxLAYERS[xHEADS]")
  cfg = training.configure(training.TrainConfig(**base, **over))
  return Size(name, cfg, training.model_args(cfg, vocab_size))

def eval_steps(total: int, points: int) -> list[int]:
  """Steps at which the validation loss is measured: the last one and each half of the one after it, `points` in all
  (fewer when the run is short), so the token counts are spaced geometrically, as on Figure 1's log axis."""
  return sorted({max(1, round(total / 2 ** k)) for k in range(points)})

# ***** the sweep: one training run per size, resumed where a checkpoint is *****

def run_state(out: pathlib.Path) -> dict | None:
  return runs.read_state(out) if (out / "train_state.json").is_file() else None

def train_size(size: Size, steps: list[int], label: str) -> bool:
  """Train one size to its last eval step (skipped when finished, resumed when a checkpoint is there); False when
  interrupted."""
  cfg, out = size.cfg, pathlib.Path(size.cfg.out)
  if (state := run_state(out)) is not None:
    saved = state["config"]
    if saved["max_steps"] != cfg.max_steps or saved["model"] != size.args.to_dict():
      raise ScalingError(f"{out}/ holds a run of another sweep ({saved['max_steps']} steps of another model or "
                         f"token budget): use another --out, or the command that started it")
    if state["step"] >= cfg.max_steps: return True
    cfg.resume = True
  else: cfg.force = runs.holds_run(out)   # a log without a checkpoint: nothing to continue
  return training.train(cfg, eval_at=frozenset(steps), label=label) == 0

def points(size: Size) -> list[dict]:
  """(tokens, training FLOPs, validation loss) at each evaluation, from the run's own log."""
  return [{"tokens": e["tokens"], "flops": size.flops_per_token * e["tokens"], "val_loss": e["val_loss"]}
          for e in runs.read_log(pathlib.Path(size.cfg.out)) if "val_loss" in e]

def decode_speeds(sizes: list[Size], bos_id: int, new_tokens: int, rounds: int) -> list[float]:
  """Decode tok/s of each trained model through generate.py's path (kernels.use_decode_kernels, Generator, its
  default sampling): one cold run compiles the steps, then `rounds` rounds interleaved over the models (a shared
  machine slows them alike), the median per model."""
  gens = []
  for s in sizes:
    model, _ = load(s.cfg.out, device=s.cfg.devices[0])
    gens.append(Generator(kernels.use_decode_kernels(model), new_tokens + 1, Sampling(), seed=0))
  speeds: list[list[float]] = [[] for _ in sizes]
  for r in range(rounds + 1):
    for g, sp in zip(gens, speeds):
      g.reset()
      generate(g, [bos_id], new_tokens, None, stats := Stats())   # no EOS stop: each decodes the same count
      if r: sp.append(stats.decode_steps / stats.decode_time)
  return [statistics.median(sp) for sp in speeds]

# ***** what the sweep shows: the compute-optimal envelope and the inference-optimal choice *****

def envelope(models: list[dict]) -> list[dict]:
  """The compute-optimal frontier (Hoffmann et al. 2022, Figure 2's lower envelope), fitted to nothing: every
  measured point that has a lower loss than all points of less training compute, with its model."""
  pts = sorted(((p, m["size"]) for m in models for p in m["points"]),
               key=lambda t: (t[0]["flops"], t[0]["val_loss"]))
  front, best = [], math.inf
  for p, name in pts:
    if p["val_loss"] < best: front.append(p | {"size": name}); best = p["val_loss"]
  return front

def choices(models: list[dict]) -> list[tuple[float, tuple[dict, dict], tuple[dict, dict]]]:
  """For each target loss (what each model reaches at the end of its run): the compute-optimal choice (the measured
  point of least training FLOPs that reaches it) and the inference-optimal one (the model that reads the fewest
  weight bytes per token and reaches it within the budget, at its first point that does), each as (point, model)."""
  rows = []
  for target in sorted({m["points"][-1]["val_loss"] for m in models if m["points"]}, reverse=True):
    reach = [(p, m) for m in models for p in m["points"] if p["val_loss"] <= target]
    rows.append((target, min(reach, key=lambda t: t[0]["flops"]),
                 min(reach, key=lambda t: (t[1]["bytes_per_token"], t[0]["tokens"]))))
  return rows

def table(models: list[dict]) -> str:
  head = (f"{'target val loss':>15} | {'compute-optimal: size':>21} {'tokens':>10} {'FLOPs':>9} {'decode tok/s':>12} | "
          f"{'inference-optimal: size':>23} {'tokens':>10} {'FLOPs':>9} {'decode tok/s':>12}")
  lines = [head, "-" * len(head)]
  for target, *picks in choices(models):
    cells = [f"{m['size']:>{w}} {p['tokens']:>10,} {p['flops']:>9.2e} {m['decode_tok_s']:>12,.0f}"
             for (p, m), w in zip(picks, (21, 23))]
    lines.append(f"{target:>15.4f} | {cells[0]} | {cells[1]}")
  return "\n".join(lines)

def plot(result: dict, path: pathlib.Path) -> None:
  """Figure 1's view (validation loss against training tokens, one curve per size) beside the trade-off view
  (against training FLOPs, the compute-optimal envelope dashed, each curve labelled with its decode cost)."""
  fig, (a, b) = plots.plt.subplots(1, 2, figsize=(12, 4.5))
  for m in result["models"]:
    t, f, l = ([p[k] for p in m["points"]] for k in ("tokens", "flops", "val_loss"))
    a.plot(t, l, "o-", ms=3, label=f"{m['size']} ({m['non_embedding_params'] / 1e6:.2f}M non-embedding)")
    b.plot(f, l, "o-", ms=3,
           label=f"{m['size']}: decode {m['decode_tok_s']:,.0f} tok/s, {m['bytes_per_token'] / 1e6:.2f} MB/token")
    b.annotate(f"{m['decode_tok_s']:,.0f} tok/s", (f[-1], l[-1]), textcoords="offset points", xytext=(4, 4),
               fontsize=7)
  env = envelope(result["models"])
  b.plot([p["flops"] for p in env], [p["val_loss"] for p in env], "k--", lw=1, label="compute-optimal envelope")
  c = result["corpus"]
  a.set(xscale="log", xlabel="training tokens", ylabel="validation loss (nats/token)",
        title=f"val loss vs tokens (cf. LLaMA Figure 1); {c['epochs_longest']:.2f} epochs of {c['train_tokens']:,}")
  b.set(xscale="log", xlabel="training FLOPs (6·N·D + attention)", ylabel="validation loss (nats/token)",
        title="training compute vs inference cost")
  for ax in (a, b):
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    ax.xaxis.set_minor_formatter(plots.plt.NullFormatter())   # a log axis over less than two decades labels every tick
  fig.tight_layout()
  plots.save(fig, path)

# ***** the command line *****

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="Train a family of model sizes on one corpus and show the trade-off between "
                              "training compute and inference cost (LLaMA §1, Figure 1; Hoffmann et al. 2022).")
  p.add_argument("--sizes", default=DEFAULT_SIZES, help="comma-separated presets or DIMxLAYERS[xHEADS] (heads of "
                 f"{HEAD_DIM} by default, one head below {HEAD_DIM} dims) (default {DEFAULT_SIZES})")
  p.add_argument("--tokens", type=int, default=65_536, help="training tokens of every size (default 65,536)")
  p.add_argument("--data", help=f"dataset directory made by data.py (default {training.DEFAULT_DATA}/, built from "
                 "the default corpus when absent)")
  p.add_argument("--out", default="out/scaling", help="sweep directory: one run per size, scaling.json, scaling.png "
                 "(default out/scaling)")
  p.add_argument("--max-epochs", type=float, default=4.0, help="cap on the passes over the training split: past a "
                 "few epochs training longer measures memorising (default 4; the token budget is cut to it)")
  p.add_argument("--points", type=int, default=6, help="validation points per run, each at half the tokens of the "
                 "next (default 6)")
  p.add_argument("--batch-size", type=int, default=8)
  p.add_argument("--seq-len", type=int, default=128)
  p.add_argument("--lr", type=float, help="peak learning rate of every size (default: train.py's from scratch)")
  p.add_argument("--eval-steps", type=int, default=4, help="validation batches per point (default 4)")
  p.add_argument("--decode-tokens", type=int, default=64, help="tokens decoded per speed measurement (default 64)")
  p.add_argument("--decode-rounds", type=int, default=3, help="warm decode measurements per model (default 3)")
  p.add_argument("--devices", default="", help="as train.py: comma-separated, e.g. CUDA:0 (default: tinygrad's)")
  p.add_argument("--seed", type=int, default=1337)
  a = p.parse_args(argv)
  for k in ("tokens", "points", "batch_size", "seq_len", "eval_steps", "decode_tokens", "decode_rounds"):
    if getattr(a, k) < 1: raise ScalingError(f"--{k.replace('_', '-')} must be at least 1")
  if not a.max_epochs > 0: raise ScalingError("--max-epochs must be positive")
  return a

def sweep(a: argparse.Namespace) -> int:
  first = training.TrainConfig(data=a.data, seq_len=a.seq_len, batch_size=a.batch_size)
  train_split, val_split, tok = training.load_data(first)   # builds the default dataset when none is named
  corpus = {"data": first.data, "source": data.read_meta(first.data).get("source"), "train_tokens": len(train_split),
            "val_tokens": len(val_split), "vocab_size": tok.vocab_size}
  tokens = a.tokens
  if tokens > a.max_epochs * len(train_split):   # honest method: longer training must not mean memorising
    tokens = int(a.max_epochs * len(train_split))
    print(f"scaling.py: --tokens {a.tokens:,} would repeat the {len(train_split):,} training tokens "
          f"{a.tokens / len(train_split):.1f} times; cut to {tokens:,} ({a.max_epochs:g} epochs, --max-epochs)",
          file=sys.stderr)
  tps = a.batch_size * a.seq_len
  steps = max(1, tokens // tps)
  base = dict(data=first.data, seq_len=a.seq_len, batch_size=a.batch_size, max_steps=steps, eval_every=steps,
              eval_steps=a.eval_steps, save_every=max(1, steps // 8), sample_tokens=0, devices=a.devices, seed=a.seed,
              lr=a.lr)
  names = [s.strip() for s in a.sizes.split(",") if s.strip()]
  if len(set(names)) < 2: raise ScalingError("--sizes needs at least two different sizes")
  sizes = [parse_size(n, base | dict(out=str(pathlib.Path(a.out) / n)), tok.vocab_size) for n in names]
  corpus |= {"tokens_longest": steps * tps, "epochs_longest": steps * tps / len(train_split),
             "max_epochs": a.max_epochs, "capped": tokens < a.tokens}
  evals = eval_steps(steps, a.points)
  print(f"sweep: {len(sizes)} sizes x {steps * tps:,} tokens ({steps} steps of {tps}) on {first.data} "
        f"({len(train_split):,} train tokens, {corpus['epochs_longest']:.2f} epochs), validation at steps {evals}")
  # the sweep's ETA: the seconds per training FLOP so far in this invocation, times the FLOPs still to train
  def left(z: Size) -> int: return steps - min(steps, (run_state(pathlib.Path(z.cfg.out)) or {}).get("step", 0))
  done, spent = 0, 0.0
  for i, s in enumerate(sizes):
    todo, rest = left(s), sum(z.flops_per_token * tps * left(z) for z in sizes[i:])
    eta = f"sweep ETA {rest * spent / done / 60:.0f} min" if done else "sweep ETA after the first run"
    t0 = time.perf_counter()
    if not train_size(s, evals, f"[{i + 1}/{len(sizes)} {s.name} | {eta}] "): return 130
    if todo: done, spent = done + s.flops_per_token * tps * todo, spent + time.perf_counter() - t0
  print(f"decode speed: {a.decode_rounds} warm runs of {a.decode_tokens} tokens per model, interleaved",
        file=sys.stderr)
  speeds = decode_speeds(sizes, tok.bos_id, a.decode_tokens, a.decode_rounds)
  models = []
  for s, speed in zip(sizes, speeds):
    model = load(s.cfg.out, device=s.cfg.devices[0])[0]
    models.append({"size": s.name, "dim": s.args.dim, "n_layers": s.args.n_layers, "n_heads": s.args.n_heads,
                   "head_dim": s.args.head_dim, "ffn_hidden": s.args.ffn_hidden, "params": s.args.num_params(),
                   "non_embedding_params": s.non_embedding_params, "flops_per_token": s.flops_per_token,
                   "decode_tok_s": speed, "bytes_per_token": weight_bytes(model), "points": points(s)})
  result = {"corpus": corpus, "flops": "6*N*D + 6*n_layers*seq_len*dim*D, N = params - vocab_size*dim (the input "
            "embedding is a lookup); Kaplan et al. 2020 Table 1", "seq_len": a.seq_len, "tokens_per_step": tps,
            "models": models}
  out = pathlib.Path(a.out)
  atomic_write(out / "scaling.json", (json.dumps(result, indent=1) + "\n").encode())
  if plots.available(): plot(result, out / "scaling.png")
  print(table(models))
  print(f"wrote {out / 'scaling.json'}" + (f" and {out / 'scaling.png'}" if plots.available() else
                                          " (pip install matplotlib for scaling.png)"))
  return 0

def main(argv=None) -> int:   # ScalingError, TrainError, DataError, CheckpointError: one line, no traceback
  return one_line_errors("scaling.py", lambda: sweep(parse_args(argv)))

if __name__ == "__main__": sys.exit(main())
