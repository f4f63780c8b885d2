# The training library behind train.py and scaling.py: TrainConfig, a run set up from scratch, --init-from or
# --resume, the §2.3 loop with its evaluations, log and checkpoints, and the checkpoint of a run saved and loaded.
from __future__ import annotations
import math, pathlib, signal, sys, time
from dataclasses import asdict, dataclass, field
import numpy as np
from tinygrad import Context, Tensor, dtypes
from tinygrad.helpers import tqdm
from tinygrad.nn.optim import OptimizerGroup
import checkpoint, data, llama, lora, memory, parallel, plots, runs
from steps import make_eval_step, make_train_step
from decode import Generator, Sampling, Stats, common_prefix, generate
from optim import lr_at, make_optimizer, optimizer_state, param_groups
from engine import eta_from_here
from progress import phase
from tokenizer import Tokenizer, load_tokenizer
from words import corpus_words, known_share

class TrainError(ValueError):
  """Bad input to training; the message is one line for the user."""

# ***** configuration: every command-line option of train.py, one field each, with its help line *****

def option(default, help: str = "", **argparse_kw):
  """A TrainConfig field that train.py offers as --its-name: the default, the help line, and argparse's type, choices or
  metavar where the default does not say them."""
  return field(default=default, metadata={"help": help, **argparse_kw})

@dataclass
class TrainConfig:
  # model: a preset, optionally overridden field by field (MODEL_FIELDS)
  preset: str = option("small", f"one of {', '.join(llama.PRESETS)} (default small)")
  dim: int | None = option(None, type=int)
  n_layers: int | None = option(None, type=int)
  n_heads: int | None = option(None, type=int)
  n_kv_heads: int | None = option(None, type=int)
  multiple_of: int | None = option(None, type=int)
  # fine-tuning (--init-from; LoRA: Hu et al. 2021)
  init_from: str | None = option(None, "start from this checkpoint (GGUF, llama2.c .bin, Meta, Hugging Face or our own "
                                 "directory): its config, weights and tokenizer; --data must be encoded with that "
                                 "tokenizer", metavar="PATH")
  tokenizer: str | None = option(None, "the tokenizer of --init-from where the checkpoint has none beside it (default: "
                                 "the dataset's)", metavar="PATH")
  lora_rank: int | None = option(None, "train rank-R adapters B·A beside the frozen weights instead of every weight",
                                 type=int)
  lora_alpha: float | None = option(None, "LoRA scale numerator: B·A is scaled by alpha/rank (default: the rank; §4.1)",
                                    type=float)
  lora_targets: str | None = option(None, f"comma-separated matrices to adapt, of {', '.join(lora.SUBLAYER)} "
                                    f"(default {lora.DEFAULT_TARGETS})")
  merge: bool = option(False, "write the merged model of the LoRA checkpoint in --out and exit (a finished run does it "
                       "itself)")
  # data and output
  data: str | None = option(None, "dataset directory made by data.py (default data/, built from the default corpus "
                            "when absent)")
  out: str = option("out", "checkpoint directory (default out/)")
  # optimisation (§2.3)
  batch_size: int = option(8, "sequences per micro-batch")
  grad_accum: int = option(1, "micro-batches per step: a step sees batch·accum·seq-len tokens")
  seed: int = option(1337, "initial weights and batch order")
  seq_len: int = option(128, "tokens per sequence")
  max_steps: int = option(200, "optimiser steps of the run")
  lr: float | None = option(None, "peak learning rate (default: 3e-3 from scratch, 1e-4 fine-tuning, 1e-3 LoRA)",
                            type=float)
  warmup_steps: int | None = option(None, "default: 20 from scratch, 10 fine-tuning", type=int)
  lr_decay_steps: int | None = option(None, "end of the cosine decay (default: max-steps)", type=int)
  min_lr_ratio: float = option(0.1, "final learning rate / peak (§2.3: 10%%)")
  weight_decay: float = option(0.1, "AdamW's decoupled weight decay of the matrices (§2.3: 0.1)")
  grad_clip: float = option(1.0, "clip the global gradient norm to this")
  dtype: str = option("float32", "weights and activations", choices=("float32", "bfloat16", "float16"))
  # evaluation, checkpoints, logs
  eval_every: int = option(100, "steps between validation-loss estimates")
  eval_steps: int = option(10, "validation batches per estimate")
  save_every: int = option(100, "steps between checkpoints (also at the end and on Ctrl-C)")
  resume: bool = option(False, "continue the run whose checkpoint is in --out")
  force: bool = option(False, "replace the run in --out by a new one (its files are deleted)")
  plot: bool = option(False, "write out/loss.png (needs matplotlib)")
  sample_tokens: int = option(100, "tokens of the sample printed at the end (0: none)")
  # devices and memory (§2.4)
  devices: str | tuple[str, ...] = option("", "comma-separated, e.g. CUDA:0,CUDA:1 (CPU:0,CPU:1: virtual CPU devices); "
                                          "default: tinygrad's default device")
  parallel: str = option("dp", "with several devices: dp copies the model and splits each batch, tp splits every layer "
                         "(Megatron-LM); dp+tp needs a 2-D device mesh that tinygrad 0.14 lacks (default dp)",
                         choices=parallel.PARALLEL_MODES)
  checkpoint_activations: bool = option(False, "recompute each block's activations in the backward pass: less memory, "
                                        "one more forward")
  dry_run: bool = option(False, "print the memory per device (the paper's four models, then this run) and exit, "
                         "allocating nothing")
  beam: int = option(0, "BEAM search width for tinygrad kernel options (0: its heuristics); the first run searches, "
                     "later runs read the cache")

  def __post_init__(self):
    for k in ("batch_size", "grad_accum", "seq_len", "max_steps", "eval_every", "eval_steps", "save_every"):
      if getattr(self, k) < 1: raise TrainError(f"--{k.replace('_', '-')} must be at least 1")

  @property
  def tokens_per_step(self) -> int: return self.batch_size * self.grad_accum * self.seq_len

def configure(cfg: TrainConfig) -> TrainConfig:
  """The run as it will go: with --resume or --merge the checkpoint's own options where none were given, the defaults
  of this kind of run (from scratch, fine-tuning every weight, LoRA), checked, and every device opened (a missing one
  is reported before anything runs). Calling it again changes nothing."""
  if cfg.resume or cfg.merge:
    out = pathlib.Path(cfg.out)
    saved = runs.read_state(out)["config"] if (out / "train_state.json").is_file() else {}
    for k in INHERITED:
      if getattr(cfg, k) is None: setattr(cfg, k, saved.get(k))
  kind = "lora" if cfg.lora_rank is not None else "full" if cfg.init_from is not None else "scratch"
  lr, warmup = FINETUNE_DEFAULTS[kind]
  if cfg.lr is None: cfg.lr = lr
  if cfg.warmup_steps is None: cfg.warmup_steps = warmup
  if cfg.lr_decay_steps is None: cfg.lr_decay_steps = cfg.max_steps
  if cfg.init_from is not None and (given := [k for k in MODEL_FIELDS if getattr(cfg, k) is not None]):
    raise TrainError(f"--{given[0].replace('_', '-')} cannot change the model that --init-from loads")
  if cfg.lora_rank is not None:
    if cfg.init_from is None: raise TrainError("--lora-rank needs --init-from: LoRA adapts a pretrained model")
    if cfg.lora_rank < 1: raise TrainError(f"--lora-rank must be at least 1, not {cfg.lora_rank}")
    if cfg.lora_alpha is None: cfg.lora_alpha = float(cfg.lora_rank)
    cfg.lora_targets = ",".join(lora.parse_targets(cfg.lora_targets or lora.DEFAULT_TARGETS))
  cfg.devices = parallel.parse_devices(cfg.devices if isinstance(cfg.devices, str) else ",".join(cfg.devices))
  if cfg.parallel == "dp": parallel.check_batch(cfg.batch_size, len(cfg.devices), "dp")
  return cfg

MODEL_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "multiple_of")
INHERITED = ("init_from", "tokenizer", "lora_rank", "lora_alpha", "lora_targets", "lr", "warmup_steps")
# (peak learning rate, warmup steps): from scratch; fine-tuning every weight of a trained model, which a large step
# would undo (lit-llama's full.py and lora.py use 3e-5 and 3e-4 for 7B models); LoRA, whose B starts at zero
FINETUNE_DEFAULTS = {"scratch": (3e-3, 20), "full": (1e-4, 10), "lora": (1e-3, 10)}

def model_args(cfg: TrainConfig, vocab_size: int) -> llama.ModelArgs:
  """The preset with the command line's overrides; the vocabulary is the dataset's tokenizer's."""
  return llama.preset_args(cfg.preset, cfg.seq_len, vocab_size, **{k: getattr(cfg, k) for k in MODEL_FIELDS})

# ***** the model to train, placed on --devices (§2.4): from scratch, or --init-from a checkpoint (full or LoRA) *****

def place_model(model: llama.Transformer, cfg: TrainConfig) -> None:
  """Cast the learned tensors to --dtype, then move the model onto --devices (split or copied as --parallel says).
  Before make_optimizer: AdamW creates its moments (and make_optimizer the masters) where the weights are."""
  if (dtype := getattr(dtypes, cfg.dtype)) != dtypes.float32:
    for t in llama.learned(model).values(): t.replace(t.cast(dtype).contiguous()).realize()
  parallel.shard_model(model, cfg.devices, cfg.parallel)

def pretrained(cfg: TrainConfig) -> tuple[llama.Transformer, Tokenizer | None]:
  """--init-from: the checkpoint's model (config and weights, no re-initialisation) and tokenizer (--tokenizer's where
  given), cast and placed on the devices like a new model; with --lora-rank, seeded adapters on its chosen layers."""
  model, tok = checkpoint.load(cfg.init_from, tokenizer=cfg.tokenizer, device=cfg.devices[0])
  if cfg.seq_len > model.args.max_seq_len:
    raise TrainError(f"--seq-len {cfg.seq_len} is longer than the model's context ({model.args.max_seq_len})")
  parallel.check_parallel(model.args, len(cfg.devices), cfg.parallel)
  memory.check_host(model.args, cfg)
  place_model(model, cfg)
  if cfg.lora_rank is not None:
    Tensor.manual_seed(cfg.seed)
    lora.apply(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
  return model, tok

def run_tokenizer(model: llama.Transformer, model_tok: Tokenizer | None, data_tok: Tokenizer,
                  cfg: TrainConfig) -> Tokenizer:
  """The tokenizer the checkpoints carry: the model's, which must be the one the dataset was encoded with (the same
  bytes for every id, whatever the file kinds), or the dataset's for a model that has none (from scratch, a llama2.c
  .bin alone)."""
  tok = model_tok or data_tok
  if tok.pieces != data_tok.pieces:
    first = common_prefix(tok.pieces, data_tok.pieces)
    raise TrainError(f"the dataset in {cfg.data} was encoded with another tokenizer than the model's "
                     f"({data_tok.vocab_size} vs {tok.vocab_size} tokens, the first difference at id {first}): "
                     f"rebuild it with python data.py ... --tokenizer <the model's tokenizer>")
  if tok.vocab_size > model.args.vocab_size:
    raise TrainError(f"the tokenizer has {tok.vocab_size} tokens but the model embeds only {model.args.vocab_size}")
  return tok

# ***** validation and a sample *****

def evaluate(eval_step, val: np.ndarray, cfg: TrainConfig) -> float:
  """Mean validation loss over eval_steps batches; the same batches every time (a fixed seed), so the curve
  compares like with like."""
  rng = np.random.default_rng(cfg.seed + 1)
  def one() -> float:
    batch = data.get_batch(val, cfg.batch_size, cfg.seq_len, rng)
    return eval_step(*(parallel.to_device(b, cfg.devices, cfg.parallel) for b in batch)).item()
  return float(np.mean([one() for _ in range(cfg.eval_steps)]))

def print_sample(model, tokenizer, cfg: TrainConfig) -> None:
  gen = Generator(model, max_context=min(model.args.max_seq_len, cfg.sample_tokens + 1),
                  sampling=Sampling(temperature=0.8, top_p=1.0), seed=cfg.seed, chunk=1)
  ids = generate(gen, [tokenizer.bos_id], cfg.sample_tokens, tokenizer.eos_id, Stats())
  model.drop_cache()
  text = tokenizer.decode(ids)
  share = known_share(text, corpus_words(cfg.data)) if data.read_meta(cfg.data).get("format") != "chat" else None
  print("--- sample" + (f" ({share:.0%} of its words are words of the corpus)" if share is not None else "")
        + f" ---\n{text}\n---")

def describe(args: llama.ModelArgs, cfg: TrainConfig) -> str:
  """One line on the model being trained (and, with LoRA, how much of it)."""
  what = f"fine-tuning {cfg.init_from}" if cfg.init_from is not None else cfg.preset
  text = (f"{what} ({args.num_params() / 1e6:,.2f}M parameters: dim {args.dim}, {args.n_layers} layers, "
          f"{args.n_heads} heads, vocab {args.vocab_size})")
  if cfg.lora_rank is None: return text
  n = lora.num_params(args, cfg.lora_rank, cfg.lora_targets)
  return text + (f", LoRA rank {cfg.lora_rank} alpha {cfg.lora_alpha:g} on {cfg.lora_targets}: {n:,} trainable "
                 f"({100 * n / args.num_params():.2f}%)")

def load_checkpoint(out: pathlib.Path, cfg: TrainConfig) -> tuple[llama.Transformer, Tokenizer | None, dict,
                                                                  dict[str, Tensor]]:
  """(model, its tokenizer, training state, saved optimiser state) of the run in `out`."""
  state = runs.read_state(out)
  if (was := state["config"].get("dtype", "float32")) != cfg.dtype:   # the master copies exist only for 16-bit weights
    raise TrainError(f"--resume: the checkpoint was trained with --dtype {was}, not {cfg.dtype}")
  if cfg.lora_rank is not None:
    if not (out / "adapters.safetensors").is_file():
      raise TrainError(f"--resume: {out} holds no LoRA adapters (adapters.safetensors missing)")
    model, tok = pretrained(cfg)
    runs.restore(lora.adapters(model), checkpoint.read_safetensors(out / "adapters.safetensors"), "the LoRA adapters")
  else:
    args = llama.ModelArgs.from_dict(state["config"]["model"])
    parallel.check_parallel(args, len(cfg.devices), cfg.parallel)   # before loading
    memory.check_host(args, cfg)
    model, tok = checkpoint.load(out, device=cfg.devices[0])
    place_model(model, cfg)
  return model, tok, state, runs.read_optimizer(out)

# ***** training: set up (data, model, optimiser, state), then the loop *****

@dataclass
class Run:
  model: llama.Transformer
  tokenizer: object
  opt: OptimizerGroup
  params: list[Tensor]
  train_tokens: np.ndarray | data.ChatSplit
  val_tokens: np.ndarray | data.ChatSplit
  state: dict                     # step, tokens, the data sampler's RNG state, config (what a checkpoint saves)
  rng: np.random.Generator

def load_data(cfg: TrainConfig):
  """(train tokens, val tokens, tokenizer) of --data, building data/ from the default corpus when no dataset is
  named."""
  if cfg.data is None:
    if cfg.init_from is not None:
      raise TrainError("--init-from needs --data: a dataset encoded with the model's tokenizer "
                       "(python data.py TEXT --tokenizer PATH --out DIR)")
    cfg.data = DEFAULT_DATA
    if not (pathlib.Path(cfg.data) / "meta.json").is_file():
      print(f"no dataset in {cfg.data}/: building it from the default corpus "
            "(English prose of the Python standard library: pydoc topics and docstrings)")
      data.prepare([], cfg.data, vocab_size=llama.preset_args(cfg.preset, cfg.seq_len).vocab_size)
  meta = data.read_meta(cfg.data)
  train_tokens, val_tokens = data.load_split(cfg.data, "train"), data.load_split(cfg.data, "val")
  if meta.get("format") != "chat" and cfg.seq_len + 1 > min(len(train_tokens), len(val_tokens)):   # chat: padded
    raise TrainError(f"--seq-len {cfg.seq_len} is longer than the data in {cfg.data} "
                     f"({len(train_tokens)} train / {len(val_tokens)} val tokens)")
  return train_tokens, val_tokens, load_tokenizer(pathlib.Path(cfg.data) / meta["tokenizer"])

DEFAULT_DATA = "data"   # the dataset directory a run without --data uses, built from data.py's default corpus

def setup(cfg: TrainConfig) -> Run:
  out = pathlib.Path(cfg.out)
  if cfg.plot and not plots.available(): raise TrainError("--plot needs matplotlib: pip install matplotlib")
  if not cfg.resume and runs.holds_run(out):
    if not cfg.force:
      raise TrainError(f"{out}/ holds a training run: --resume to continue it, --force to replace it, or another --out")
    runs.remove(out)   # --force: nothing of the old run survives into the new one
  if cfg.resume:
    model, model_tok, state, opt_saved = load_checkpoint(out, cfg)
    cfg.data = cfg.data or state["config"]["data"]
  train_tokens, val_tokens, data_tok = load_data(cfg)
  if not cfg.resume:
    if cfg.init_from is not None: model, model_tok = pretrained(cfg)
    else:
      args = model_args(cfg, data_tok.vocab_size)
      parallel.check_parallel(args, len(cfg.devices), cfg.parallel)   # a clear error before anything is allocated
      memory.check_host(args, cfg)
      Tensor.manual_seed(cfg.seed)
      model, model_tok = llama.Transformer(args), None
      place_model(model, cfg)
    state = {"step": 0, "tokens": 0, "rng": np.random.default_rng(cfg.seed).bit_generator.state}
  tokenizer = run_tokenizer(model, model_tok, data_tok, cfg)
  opt, params = make_optimizer(model, cfg.lr, cfg.weight_decay)
  if cfg.resume:
    runs.restore(optimizer_state(opt, params), opt_saved, "the optimiser state")
    runs.keep_log(out, state["step"])   # drop the steps past the checkpoint
  rng = np.random.default_rng()
  rng.bit_generator.state = state["rng"]   # the data position: the sampler's state decides every next window
  return Run(model, tokenizer, opt, params, train_tokens, val_tokens, state, rng)

def save(run: Run, cfg: TrainConfig, final: bool = False) -> None:
  """A checkpoint of the run; the final one of a LoRA run also holds the merged model."""
  config = asdict(cfg) | {"devices": list(cfg.devices), "model": run.model.args.to_dict()}
  run.state.update(rng=run.rng.bit_generator.state, config=config)
  opt_state = optimizer_state(run.opt, [t for g in param_groups(run.model) for t in g.values()])
  runs.save_checkpoint(pathlib.Path(cfg.out), run.model, run.tokenizer, opt_state, run.state, merge=final)

def describe_data(run: Run, cfg: TrainConfig) -> str:
  split = run.train_tokens
  text = f"data {cfg.data}: {len(split):,} train tokens"
  if isinstance(split, data.ChatSplit):
    text += (f" in {len(split.lengths):,} conversations, "
             f"{int((split.lengths > cfg.seq_len + 1).sum()):,} of them cut at --seq-len")
  return text

def train(cfg: TrainConfig, eval_at: frozenset[int] = frozenset(), label: str = "") -> int:
  """Set up the run of `cfg` and train it to --max-steps: validation loss every --eval-every steps, at the steps in
  `eval_at` and at the end, a checkpoint every --save-every steps, at the end and on Ctrl-C (then 130 is returned).
  `label` starts the progress bar's text (scaling.py's place in its sweep)."""
  configure(cfg)
  run = setup(cfg)
  model, state, out = run.model, run.state, pathlib.Path(cfg.out)
  # Ctrl-C is honoured between steps, so the checkpoint never holds a half-applied update; a second Ctrl-C aborts
  stop: list[int] = []
  def on_sigint(*_):
    if stop: raise KeyboardInterrupt
    stop.append(1)
    tqdm.write("interrupt: saving a checkpoint after this step (Ctrl-C again to abort without saving)")
  old_handler = signal.signal(signal.SIGINT, on_sigint)

  tokens_per_step = cfg.tokens_per_step
  print(f"model: {describe(model.args, cfg)} | {tokens_per_step} tokens/step"
        + (f" | {cfg.parallel} over {len(cfg.devices)} devices" if len(cfg.devices) > 1 else "")
        + f" | {describe_data(run, cfg)} | steps {state['step']}..{cfg.max_steps}")
  train_step = make_train_step(model, run.opt, run.params, cfg.grad_clip, cfg.checkpoint_activations)
  eval_step = make_eval_step(model)
  loss = val_loss = float("nan")
  try:
    with Context(USE_ATOMICS=parallel.use_atomics(cfg.devices, cfg.parallel), BEAM=cfg.beam), \
         tqdm(total=cfg.max_steps - state["step"], desc=f"{label}step {state['step']}", unit="step") as bar:
      t_last, first = time.perf_counter(), state["step"]
      while state["step"] < cfg.max_steps and not stop:
        step, lr = state["step"], lr_at(state["step"], cfg.lr, cfg.warmup_steps, cfg.lr_decay_steps, cfg.min_lr_ratio)
        batches = [data.get_batch(run.train_tokens, cfg.batch_size, cfg.seq_len, run.rng)
                   for _ in range(cfg.grad_accum)]
        x, y = (parallel.to_device(np.stack([b[i] for b in batches]), cfg.devices, cfg.parallel, batch_axis=1)
                for i in (0, 1))
        with phase("compiling the training step", quiet=state["step"] > first):   # the first call compiles
          loss, norm = train_step(x, y, Tensor([lr], dtype=dtypes.float32))
          loss, norm = loss.item(), norm.item()
        now = time.perf_counter()
        if state["step"] - first == 1: eta_from_here(bar, now - t_last)   # the ETA leaves the compile out
        state.update(step=step + 1, tokens=state["tokens"] + tokens_per_step)
        entry = {"step": step + 1, "tokens": state["tokens"], "loss": loss, "lr": lr, "grad_norm": norm,
                 "tok_s": tokens_per_step / (now - t_last)}
        t_last = now
        if not math.isfinite(loss): raise TrainError(f"the loss became {loss} at step {step + 1}: lower --lr")
        if (step + 1) % cfg.eval_every == 0 or step + 1 == cfg.max_steps or step + 1 in eval_at:
          with phase("validation loss", quiet=math.isfinite(val_loss)):   # the first one compiles its step
            entry["val_loss"] = val_loss = evaluate(eval_step, run.val_tokens, cfg)
          t_last = time.perf_counter()   # evaluation time is not training throughput
        runs.append_log(out, entry)
        bar.set_description(f"{label}step {step + 1} | loss {loss:.3f}"
                            + (f" | val {val_loss:.3f}" if math.isfinite(val_loss) else "")
                            + f" | lr {lr:.2e} | {entry['tok_s']:,.0f} tok/s")
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.max_steps:
          save(run, cfg, final=step + 1 == cfg.max_steps)
  finally:
    signal.signal(signal.SIGINT, old_handler)
  if stop:
    save(run, cfg)
    print(f"interrupted: checkpoint at step {state['step']} saved in {out}/ (continue with --resume"
          + (", or write the merged model with --merge)" if cfg.lora_rank is not None else ")"), file=sys.stderr)
    return 130
  if cfg.plot: plots.loss_curve(runs.read_log(out), str(out), out / "loss.png")
  print(f"done: step {state['step']}, train loss {loss:.4f}, validation loss {val_loss:.4f}; checkpoint in {out}/"
        + (" (the LoRA adapters and the merged model)" if cfg.lora_rank is not None else ""))
  if cfg.sample_tokens: print_sample(model, run.tokenizer, cfg)
  return 0
