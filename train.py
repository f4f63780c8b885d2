"""Train LLaMA (Touvron et al., 2023) from scratch with the paper's recipe (§2.3), in tinygrad.

  python train.py                                   # default corpus + small preset, a few minutes on a laptop CPU
  python data.py input.txt --out data/mine && python train.py --data data/mine --preset tiny --max-steps 2000
  python train.py --resume --max-steps 2000         # continue out/ exactly where it stopped
  python generate.py                                # sample from out/
  python train.py --devices CUDA:0,CUDA:1 --parallel tp --dry-run   # memory per device, nothing allocated

§2.3: AdamW with β1 = 0.9, β2 = 0.95, weight decay 0.1, gradient clipping at 1.0, a cosine learning-rate schedule
whose final value is 10% of the peak, and warmup. The paper's numbers (2000 warmup steps, 4M-token batches, peak
3e-4 to 1.5e-4) are for billions of parameters; the defaults here scale them to the small preset.
"""
from __future__ import annotations
import argparse, json, math, os, pathlib, shutil, signal, sys, time
import numpy as np
from tinygrad import Context, Device, Tensor, TinyJit, dtypes
from tinygrad.helpers import tqdm
from tinygrad.nn.optim import AdamW, OptimizerGroup
from tinygrad.nn.state import get_state_dict, safe_load, safe_save
import data, llama

class TrainError(ValueError):
  """Bad input to train.py; the message is one line for the user."""

# ***** command line *****

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="Train a LLaMA model from scratch (paper §2.3 recipe).")
  m = p.add_argument_group("model (a preset, optionally overridden field by field)")
  m.add_argument("--preset", default="small", help=f"one of {', '.join(llama.PRESETS)} (default small)")
  for f in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of"): m.add_argument("--" + f.replace("_", "-"), type=int)
  d = p.add_argument_group("data and output")
  d.add_argument("--data", help="dataset directory made by data.py (default data/, built from the default corpus when absent)")
  d.add_argument("--out", default="out", help="checkpoint directory (default out/)")
  t = p.add_argument_group("optimisation (§2.3)")
  t.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
  t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step: a step sees batch·accum·seq-len tokens")
  t.add_argument("--seq-len", type=int, default=128)
  t.add_argument("--max-steps", type=int, default=200)
  t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate")
  t.add_argument("--warmup-steps", type=int, default=20)
  t.add_argument("--lr-decay-steps", type=int, help="end of the cosine decay (default: max-steps)")
  t.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate / peak (§2.3: 10%%)")
  t.add_argument("--weight-decay", type=float, default=0.1)
  t.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
  t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weights and activations")
  t.add_argument("--seed", type=int, default=1337)
  r = p.add_argument_group("evaluation, checkpoints, logs")
  r.add_argument("--eval-every", type=int, default=100, help="steps between validation-loss estimates")
  r.add_argument("--eval-steps", type=int, default=10, help="validation batches per estimate")
  r.add_argument("--save-every", type=int, default=100, help="steps between checkpoints (also at the end and on Ctrl-C)")
  r.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
  r.add_argument("--plot", action="store_true", help="write out/loss.png (needs matplotlib)")
  r.add_argument("--sample-tokens", type=int, default=100, help="tokens of the sample printed at the end (0: none)")
  g = p.add_argument_group("devices and memory (§2.4)")
  g.add_argument("--devices", help="comma-separated, e.g. CUDA:0,CUDA:1 (CPU:0,CPU:1: virtual CPU devices); default: tinygrad's default device")
  g.add_argument("--parallel", choices=llama.PARALLEL_MODES, default="dp",
                 help="with several devices: dp copies the model and splits each batch, tp splits every layer (Megatron-LM); "
                      "dp+tp needs a 2-D device mesh that tinygrad 0.14 lacks (default dp)")
  g.add_argument("--checkpoint-activations", action="store_true", help="recompute each block's activations in the backward pass: less memory, one more forward")
  g.add_argument("--dry-run", action="store_true", help="print the memory per device (the paper's four models, then this run) and exit, allocating nothing")
  a = p.parse_args(argv)
  for k in ("batch_size", "grad_accum", "seq_len", "max_steps", "eval_every", "eval_steps", "save_every"):
    if getattr(a, k) < 1: raise TrainError(f"--{k.replace('_', '-')} must be at least 1")
  if a.lr_decay_steps is None: a.lr_decay_steps = a.max_steps
  a.devices = llama.parse_devices(a.devices)   # opens each device now: a missing one is reported before anything runs
  if a.parallel == "dp" and a.batch_size % len(a.devices):
    raise TrainError(f"--parallel dp over {len(a.devices)} devices needs --batch-size ({a.batch_size}) to be divisible by {len(a.devices)}")
  return a

def preset(a: argparse.Namespace) -> llama.ModelArgs:
  if a.preset not in llama.PRESETS: raise TrainError(f"unknown preset {a.preset!r} (known: {', '.join(llama.PRESETS)})")
  return llama.PRESETS[a.preset]

def model_args(a: argparse.Namespace, vocab_size: int) -> llama.ModelArgs:
  """The preset with the command line's overrides; the vocabulary is the dataset's tokenizer's."""
  cfg = preset(a).to_dict()
  if a.n_heads is not None and a.n_kv_heads is None: cfg["n_kv_heads"] = None   # a new head count: plain MHA unless told
  cfg.update({k: getattr(a, k) for k in ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of") if getattr(a, k) is not None})
  cfg.update(vocab_size=vocab_size, max_seq_len=max(cfg["max_seq_len"], a.seq_len))
  return llama.ModelArgs.from_dict(cfg)

# ***** §2.3 optimiser: AdamW, cosine schedule with warmup, clipping *****

def lr_at(step: int, a) -> float:
  """Learning rate of update number step+1: linear warmup to the peak over warmup_steps, then a cosine down to
  min_lr_ratio·peak at lr_decay_steps (§2.3: "the final learning rate is equal to 10% of the maximal learning
  rate"), and that floor afterwards."""
  n = step + 1
  if n <= a.warmup_steps: return a.lr * n / a.warmup_steps
  progress = min(1.0, (n - a.warmup_steps) / (a.lr_decay_steps - a.warmup_steps)) if a.lr_decay_steps > a.warmup_steps else 1.0
  return a.lr * (a.min_lr_ratio + (1 - a.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

def param_groups(model: llama.Transformer) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
  """(decayed, not decayed) trainable tensors by name. Weight decay goes on the weight matrices of the linear layers
  only; norm gains and the token embedding are not decayed (as in nanoGPT / llama2.c). The RoPE table and a KV cache
  are not trained."""
  decay, keep = {}, {}
  for name, t in get_state_dict(model).items():
    if name == "freqs" or name.endswith("cache_kv"): continue
    (decay if t.ndim == 2 and name != "tok_embeddings.weight" else keep)[name] = t
  return decay, keep

def make_optimizer(model: llama.Transformer, a) -> tuple[OptimizerGroup, list[Tensor]]:
  """AdamW over the model's trained tensors; returns (optimiser, those tensors). The tensors the optimiser updates
  (opt.params, in the same order) are the model's own when they are float32, else float32 master copies, placed like
  them (mixed precision, Micikevicius et al. 2018): tinygrad's AdamW keeps fp32 moments but adds each update to the
  weight in the weight's dtype, and an update below half a weight's last bit is lost (bfloat16 keeps 8 significant
  bits: a weight of 0.02 moves in steps of 1.2e-4, more than the paper's final learning rate 3e-5 times Adam's unit
  step). The train step copies the updated masters back into the model, rounded."""
  decay, keep = param_groups(model)
  def master(ts): return [t if t.dtype == dtypes.float32 else t.float().contiguous().realize() for t in ts]
  # §2.3: "AdamW optimizer with the following hyper-parameters: β1 = 0.9, β2 = 0.95", weight decay 0.1
  opt = OptimizerGroup(AdamW(master(decay.values()), lr=a.lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=a.weight_decay),
                       AdamW(master(keep.values()), lr=a.lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.0))
  return opt, list(decay.values()) + list(keep.values())

def clip_grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
  """Scale every gradient by min(1, max_norm/‖g‖) where ‖g‖ is the norm of all gradients together (§2.3 "gradient
  clipping of 1.0"); returns ‖g‖ before clipping. tinygrad has no helper for this."""
  norm = Tensor.stack(*[p.grad.float().square().sum() for p in params]).sum().sqrt()
  scale = (max_norm / (norm + 1e-6)).minimum(1.0)
  for p in params: p.grad = (p.grad * scale).cast(p.grad.dtype)
  return norm

def optimizer_state(opt: OptimizerGroup, params: list[Tensor]) -> dict[str, Tensor]:
  """AdamW's moments and bias-correction powers, by position (parameters are always listed in the same order), and
  the float32 master copies of 16-bit weights (make_optimizer)."""
  out = {f"master.{j}": m for j, (p, m) in enumerate(zip(params, opt.params)) if m is not p}
  for i, o in enumerate(opt.optimizers):
    out |= {f"{i}.b1_t": o.b1_t, f"{i}.b2_t": o.b2_t}
    out |= {f"{i}.m.{j}": t for j, t in enumerate(o.m)} | {f"{i}.v.{j}": t for j, t in enumerate(o.v)}
  return out

# ***** devices (§2.4): llama.shard_model places the weights for --parallel, llama.shard_batch each batch *****

def place_model(model: llama.Transformer, a) -> None:
  """Cast the trained tensors to --dtype, then move the model onto --devices (split or copied as --parallel says).
  Before make_optimizer: AdamW creates its moments (and make_optimizer the masters) where the weights are."""
  if (dtype := getattr(dtypes, a.dtype)) != dtypes.float32:
    for t in (t for g in param_groups(model) for t in g.values()): t.replace(t.cast(dtype).contiguous()).realize()
  llama.shard_model(model, a.devices, a.parallel)

def to_device(arr: np.ndarray, a=None, batch_axis: int = 0) -> Tensor:
  """Tokens onto --devices: split along the batch axis under dp (axis 1 of micro-batches stacked (accum, B, T)),
  copied under tp; without `a` (bench_train.py), onto the default device."""
  return (Tensor(arr) if a is None else llama.shard_batch(Tensor(arr), a.devices, a.parallel, batch_axis)).realize()

def use_atomics(a) -> int:
  """USE_ATOMICS=1 makes the embedding's backward scatter into the table instead of a B·T×V one-hot matmul (trap 4),
  where it is right: tinygrad 0.14 has that kernel for CPU and AMD only (others raise NotImplementedError), and with
  the batch split across devices (dp) each device scatters only its own tokens and nothing all-reduces the results
  (measured: half the embedding gradient on 2 devices). Tensor parallel (vocabulary split, batch copied) is right."""
  backends = {Device.canonicalize(d).split(":")[0] for d in a.devices}
  return int(backends <= {"CPU", "AMD"} and (len(a.devices) == 1 or a.parallel == "tp"))

def check_memory(args: llama.ModelArgs, a) -> None:
  """Refuse a micro-batch that cannot fit in host memory before allocating it (CPU only: the other backends
  report their own allocation failures). The estimate is deliberately rough: weights, gradients and two AdamW
  moments, plus per token the activations backward keeps (≈ 16·dim + 4·ffn + 2·heads·seq per layer) and 3 copies
  of the logits."""
  if Device.DEFAULT != "CPU": return
  try:   # Linux: MemAvailable counts reclaimable page cache; elsewhere: all physical memory
    info = pathlib.Path("/proc/meminfo").read_text() if os.path.exists("/proc/meminfo") else ""
    avail = next((int(l.split()[1]) * 1024 for l in info.splitlines() if l.startswith("MemAvailable:")), None) \
            or os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError): return
  per_token = args.n_layers * (16 * args.dim + 4 * args.ffn_hidden + 2 * args.n_heads * a.seq_len) + 3 * args.vocab_size
  need = 4 * (4 * args.num_params() + a.batch_size * a.seq_len * per_token)
  if need > avail:
    raise TrainError(f"a micro-batch of {a.batch_size}x{a.seq_len} tokens needs about {need / 2**30:.1f} GiB but {avail / 2**30:.1f} GiB "
                     "is free: lower --batch-size or --seq-len (and raise --grad-accum to keep the tokens per step)")

# ***** checkpoints: model (llama.save) + optimiser + training state, swapped in as one directory *****

def save_checkpoint(out: pathlib.Path, model, tokenizer, opt: OptimizerGroup, state: dict) -> None:
  """Build the whole checkpoint in a temporary directory beside `out`, carry over the files of `out` that are not
  part of it (log.jsonl, loss.png), then swap directories: a crash leaves either the old or the new checkpoint."""
  tmp, old = out.with_name(f".{out.name}.saving"), out.with_name(f".{out.name}.old")
  shutil.rmtree(tmp, ignore_errors=True)
  llama.save(model, tmp, tokenizer if isinstance(tokenizer, data.SentencePieceTokenizer) else None)   # .model files only
  safe_save(optimizer_state(opt, [t for g in param_groups(model) for t in g.values()]), str(tmp / "optimizer.safetensors"))
  (tmp / "train_state.json").write_text(json.dumps(state, indent=1) + "\n")
  if out.is_dir():
    for f in out.iterdir():
      if f.is_file() and not (tmp / f.name).exists(): os.link(f, tmp / f.name)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(out, old)
  os.replace(tmp, out)
  shutil.rmtree(old, ignore_errors=True)

def load_checkpoint(out: pathlib.Path, a) -> tuple[llama.Transformer, dict, dict[str, Tensor]]:
  if not out.exists() and out.with_name(f".{out.name}.old").is_dir(): os.replace(out.with_name(f".{out.name}.old"), out)  # crashed mid-swap
  if not (out / "train_state.json").is_file(): raise TrainError(f"--resume: no training checkpoint in {out} (train_state.json missing)")
  state = json.loads((out / "train_state.json").read_text())
  if (was := state["config"].get("dtype", "float32")) != a.dtype:   # the master copies exist only for 16-bit weights
    raise TrainError(f"--resume: the checkpoint was trained with --dtype {was}, not {a.dtype}")
  llama.check_parallel(llama.ModelArgs.from_dict(state["config"]["model"]), len(a.devices), a.parallel)   # before loading
  model, _ = llama.load(out, device=a.devices[0])
  place_model(model, a)
  return model, state, safe_load(str(out / "optimizer.safetensors"))

def restore_optimizer(opt: OptimizerGroup, params: list[Tensor], saved: dict[str, Tensor]) -> None:
  mine = optimizer_state(opt, params)
  if set(mine) != set(saved): raise TrainError("--resume: the optimiser state does not match this model")
  # each saved tensor is read from the file split or copied as its counterpart is (whatever the devices were then)
  for k, t in mine.items(): t.assign(saved[k].shard_like(t).cast(t.dtype)).realize()

# ***** logs *****

def append_log(out: pathlib.Path, entry: dict) -> None:
  with open(out / "log.jsonl", "a") as f: f.write(json.dumps(entry) + "\n")

def read_log(out: pathlib.Path) -> list[dict]:
  p = out / "log.jsonl"
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []

def plot(out: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  log = read_log(out)
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([e["step"] for e in log if "loss" in e], [e["loss"] for e in log if "loss" in e], label="train", lw=0.8)
  ax.plot([e["step"] for e in log if "val_loss" in e], [e["val_loss"] for e in log if "val_loss" in e], "o-", label="validation")
  ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=str(out))
  ax.legend()
  tmp = out / ".loss.tmp.png"
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, out / "loss.png")

# ***** training *****

def make_train_step(model, opt: OptimizerGroup, params: list[Tensor], grad_clip: float) -> TinyJit:
  @TinyJit
  def train_step(x: Tensor, y: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
    """One update from grad_accum micro-batches x, y: (K, B, T). Each micro-batch's gradients are realised before
    the next forward, so memory holds one micro-batch of activations; then clip, then AdamW, all one compiled step.
    On several devices the same code runs sharded: under dp each weight's gradient is all-reduced by tinygrad."""
    with Context(TRAINING=1):
      for p in params: p.grad = None   # not opt.zero_grad(): with 16-bit weights it holds the masters (their .grad is set below)
      model.freqs.grad = None   # backward also differentiates the RoPE table; it is not trained, drop that
      losses = []
      for k in range(x.shape[0]):
        loss = model(x[k]).sparse_categorical_crossentropy(y[k]) / x.shape[0]
        loss.backward()
        # a buffer per gradient: needed under --checkpoint-activations (llama.checkpointed_block explains), free otherwise
        for p in params: p.grad = p.grad.contiguous()
        losses.append(loss.realize(*[p.grad for p in params]).detach())
      total = sum(losses[1:], losses[0])
      masters = [(p, m) for p, m in zip(params, opt.params) if m is not p]   # 16-bit weights (make_optimizer)
      for p, m in masters: m.grad = p.grad.float()
      norm = clip_grad_norm(opt.params, grad_clip)
      for o in opt.optimizers: o.lr.assign(lr.to(o.lr.device))   # the optimiser keeps lr where the weights are
      # the loss is read together with the update (TINYGRAD_NOTES trap 1); the model gets the updated masters, rounded
      Tensor.realize(total, norm, *opt.schedule_step(), *[p.assign(m.cast(p.dtype)) for p, m in masters])
    return total, norm
  return train_step

def make_eval_step(model) -> TinyJit:
  @TinyJit
  def eval_step(x: Tensor, y: Tensor) -> Tensor: return model(x).sparse_categorical_crossentropy(y).realize()
  return eval_step

def evaluate(eval_step, val: np.ndarray, a) -> float:
  """Mean validation loss over eval_steps batches; the same batches every time (a fixed seed), so the curve
  compares like with like."""
  rng = np.random.default_rng(a.seed + 1)
  return float(np.mean([eval_step(*(to_device(b, a) for b in data.get_batch(val, a.batch_size, a.seq_len, rng))).item()
                        for _ in range(a.eval_steps)]))

def print_sample(model, tokenizer, a) -> None:
  import generate
  gen = generate.Generator(model, max_context=min(model.args.max_seq_len, a.sample_tokens + 1),
                           sampling=generate.Sampling(temperature=0.8, top_p=1.0), seed=a.seed, chunk=1)
  ids = generate.generate(gen, [tokenizer.bos_id], a.sample_tokens, tokenizer.eos_id, generate.Stats())
  model.drop_cache()
  print(f"--- sample ---\n{tokenizer.decode(ids)}\n---")

def dry_run(a: argparse.Namespace) -> int:
  """--dry-run: memory per device from the configuration alone (llama.memory_per_device), nothing allocated: the
  paper's four models with 2048-token sequences on this many devices, then this run (vocabulary: --data's, else the
  preset's; one micro-batch: --grad-accum adds no memory)."""
  args = model_args(a, data.read_meta(a.data)["vocab_size"] if a.data else preset(a).vocab_size)
  n, gib = len(a.devices), 1 << 30
  m = llama.memory_per_device(args, n, a.parallel, a.batch_size, a.seq_len, a.dtype, a.checkpoint_activations)
  print(llama.memory_table(n_devices=n, dtype=a.dtype, checkpoint_activations=a.checkpoint_activations))
  print(f"\nthis run: {a.preset} ({args.num_params() / 1e6:,.1f}M parameters, vocab {args.vocab_size}), {a.dtype}, {a.parallel} over "
        f"{n} device(s), micro-batch {a.batch_size}x{a.seq_len} tokens{', activation checkpointing' if a.checkpoint_activations else ''}:\n"
        f"  per device: weights {m['weights'] / gib:.2f} GiB | grads {m['grads'] / gib:.2f} | Adam state {m['adam'] / gib:.2f} | "
        f"activations {m['activations'] / gib:.2f} ({m['activations_per_token'] / (1 << 20):.3f} MiB/token) | total {m['total'] / gib:.2f} GiB")
  return 0

def train(a: argparse.Namespace) -> int:
  if a.dry_run: return dry_run(a)
  out = pathlib.Path(a.out)
  if a.plot:
    try: import matplotlib  # noqa: F401  (an optional extra: fail before training, not after)
    except ImportError: raise TrainError("--plot needs matplotlib: pip install matplotlib") from None
  if a.resume:
    model, state, opt_saved = load_checkpoint(out, a)
    a.data = a.data or state["config"]["data"]
  if a.data is None:
    a.data = "data"
    if not (pathlib.Path(a.data) / "meta.json").is_file():
      print(f"no dataset in {a.data}/: building it from the default corpus (the Python standard library's docs and source)")
      data.prepare([], a.data, vocab_size=preset(a).vocab_size)
  meta = data.read_meta(a.data)
  train_tokens, val_tokens = data.load_split(a.data, "train"), data.load_split(a.data, "val")
  tokenizer = data.load_tokenizer(pathlib.Path(a.data) / meta["tokenizer"])
  if a.seq_len + 1 > min(len(train_tokens), len(val_tokens)):
    raise TrainError(f"--seq-len {a.seq_len} is longer than the data in {a.data} ({len(train_tokens)} train / {len(val_tokens)} val tokens)")
  if not a.resume:
    args = model_args(a, meta["vocab_size"])
    llama.check_parallel(args, len(a.devices), a.parallel)   # a clear error before anything is allocated
    Tensor.manual_seed(a.seed)
    model = llama.Transformer(args)
    place_model(model, a)
    state = {"step": 0, "tokens": 0, "rng": np.random.default_rng(a.seed).bit_generator.state}
  elif model.args.vocab_size != meta["vocab_size"]:
    raise TrainError(f"--resume: the checkpoint's vocabulary ({model.args.vocab_size}) is not the dataset's ({meta['vocab_size']})")
  check_memory(model.args, a)
  model.checkpoint_activations = a.checkpoint_activations
  opt, params = make_optimizer(model, a)
  if a.resume: restore_optimizer(opt, params, opt_saved)
  rng = np.random.default_rng()
  rng.bit_generator.state = state["rng"]   # the data position: the sampler's state decides every next window
  out.mkdir(parents=True, exist_ok=True)
  log = [e for e in read_log(out) if e["step"] <= state["step"]] if a.resume else []
  data._atomic_write(out / "log.jsonl", "".join(json.dumps(e) + "\n" for e in log).encode())   # drop steps past the checkpoint

  def save():
    state.update(rng=rng.bit_generator.state, config=vars(a) | {"model": model.args.to_dict()})
    save_checkpoint(out, model, tokenizer, opt, state)

  # Ctrl-C is honoured between steps, so the checkpoint never holds a half-applied update; a second Ctrl-C aborts
  stop: list[int] = []
  def on_sigint(*_):
    if stop: raise KeyboardInterrupt
    stop.append(1)
    tqdm.write("interrupt: saving a checkpoint after this step (Ctrl-C again to abort without saving)")
  old_handler = signal.signal(signal.SIGINT, on_sigint)

  tokens_per_step = a.batch_size * a.grad_accum * a.seq_len
  print(f"model {model.args.num_params() / 1e6:.2f}M parameters ({a.preset}: dim {model.args.dim}, {model.args.n_layers} layers, "
        f"{model.args.n_heads} heads, vocab {model.args.vocab_size}) | {tokens_per_step} tokens/step"
        + (f" | {a.parallel} over {len(a.devices)} devices" if len(a.devices) > 1 else "") + f" | data {a.data}: "
        f"{len(train_tokens):,} train tokens | steps {state['step']}..{a.max_steps}")
  train_step, eval_step = make_train_step(model, opt, params, a.grad_clip), make_eval_step(model)
  loss = val_loss = float("nan")
  try:
    with Context(USE_ATOMICS=use_atomics(a)), tqdm(total=a.max_steps - state["step"], desc=f"step {state['step']}", unit="step") as bar:
      t_last = time.perf_counter()
      while state["step"] < a.max_steps and not stop:
        step, lr = state["step"], lr_at(state["step"], a)
        batches = [data.get_batch(train_tokens, a.batch_size, a.seq_len, rng) for _ in range(a.grad_accum)]
        x, y = (to_device(np.stack([b[i] for b in batches]), a, batch_axis=1) for i in (0, 1))
        loss, norm = train_step(x, y, Tensor([lr], dtype=dtypes.float32))
        loss, norm = loss.item(), norm.item()
        now = time.perf_counter()
        state.update(step=step + 1, tokens=state["tokens"] + tokens_per_step)
        entry = {"step": step + 1, "loss": loss, "lr": lr, "grad_norm": norm, "tok_s": tokens_per_step / (now - t_last)}
        t_last = now
        if not math.isfinite(loss): raise TrainError(f"the loss became {loss} at step {step + 1}: lower --lr")
        if (step + 1) % a.eval_every == 0 or step + 1 == a.max_steps:
          entry["val_loss"] = val_loss = evaluate(eval_step, val_tokens, a)
          t_last = time.perf_counter()   # evaluation time is not training throughput
        append_log(out, entry)
        bar.set_description(f"step {step + 1} | loss {loss:.3f}" + (f" | val {val_loss:.3f}" if math.isfinite(val_loss) else "") +
                            f" | lr {lr:.2e} | {entry['tok_s']:,.0f} tok/s")
        bar.update(1)
        if (step + 1) % a.save_every == 0 or step + 1 == a.max_steps: save()
  finally:
    signal.signal(signal.SIGINT, old_handler)
  if stop:
    save()
    print(f"interrupted: checkpoint at step {state['step']} saved in {out}/ (continue with --resume)", file=sys.stderr)
    return 130
  if a.plot: plot(out)
  print(f"done: step {state['step']}, train loss {loss:.4f}, validation loss {val_loss:.4f}; checkpoint in {out}/")
  if a.sample_tokens: print_sample(model, tokenizer, a)
  return 0

def main(argv=None) -> int:
  try: return train(parse_args(argv))
  except (ValueError, OSError) as e:   # TrainError, data.DataError, llama.CheckpointError: one line, no traceback
    print(f"train.py: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:            # before training started (data preparation, compilation) or a second Ctrl-C
    print("train.py: interrupted", file=sys.stderr)
    return 130

if __name__ == "__main__": sys.exit(main())
