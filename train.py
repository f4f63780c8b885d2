"""Train LLaMA (Touvron et al., 2023) from scratch with the paper's recipe (§2.3), or fine-tune any checkpoint
(every weight, or LoRA adapters: Hu et al. 2021), in tinygrad.

  python train.py                                   # default corpus + small preset, a few minutes on a laptop CPU
  python data.py input.txt --out data/mine && python train.py --data data/mine --preset tiny --max-steps 2000
  python train.py --resume --max-steps 2000         # continue out/ exactly where it stopped
  python generate.py                                # sample from out/
  python train.py --devices CUDA:0,CUDA:1 --parallel tp --dry-run   # memory per device, nothing allocated
  python data.py my.txt --tokenizer tok512.model --out d && python train.py --init-from stories260K.bin --data d
  python data.py --chat chats.jsonl --tokenizer smollm2.gguf --out c
  python train.py --init-from smollm2.gguf --data c --lora-rank 8   # LoRA on chat data

§2.3: AdamW with β1 = 0.9, β2 = 0.95, weight decay 0.1, gradient clipping at 1.0, a cosine learning-rate schedule
whose final value is 10% of the peak, and warmup. The paper's numbers (2000 warmup steps, 4M-token batches, peak
3e-4 to 1.5e-4) are for billions of parameters; the defaults here scale them to the small preset.
"""
from __future__ import annotations
import argparse, pathlib, sys
import checkpoint, data, llama, lora, memory, parallel
from cli import one_line_errors
from engine import use_all_cores
from training import MODEL_FIELDS, TrainConfig, TrainError, configure, describe, load_checkpoint, model_args, train

def parse_args(argv=None) -> TrainConfig:
  p = argparse.ArgumentParser(description="Train a LLaMA model from scratch (paper §2.3 recipe).")
  m = p.add_argument_group("model (a preset, optionally overridden field by field)")
  m.add_argument("--preset", default="small", help=f"one of {', '.join(llama.PRESETS)} (default small)")
  for f in MODEL_FIELDS: m.add_argument("--" + f.replace("_", "-"), type=int)
  f = p.add_argument_group("fine-tuning (--init-from; LoRA: Hu et al. 2021)")
  f.add_argument("--init-from", metavar="PATH",
                 help="start from this checkpoint (GGUF, llama2.c .bin, Meta, Hugging Face or our own "
                 "directory): its config, weights and tokenizer; --data must be encoded with that tokenizer")
  f.add_argument("--tokenizer", metavar="PATH",
                 help="the tokenizer of --init-from where the checkpoint has none beside it (default: the dataset's)")
  f.add_argument("--lora-rank", type=int,
                 help="train rank-R adapters B·A beside the frozen weights instead of every weight")
  f.add_argument("--lora-alpha", type=float,
                 help="LoRA scale numerator: B·A is scaled by alpha/rank (default: the rank)")
  f.add_argument("--lora-targets", help=f"comma-separated matrices to adapt, of {', '.join(lora.SUBLAYER)} "
                 f"(default {lora.DEFAULT_TARGETS})")
  f.add_argument("--merge", action="store_true",
                 help="write the merged model of the LoRA checkpoint in --out and exit (a finished run does it itself)")
  d = p.add_argument_group("data and output")
  d.add_argument("--data",
                 help="dataset directory made by data.py (default data/, built from the default corpus when absent)")
  d.add_argument("--out", default="out", help="checkpoint directory (default out/)")
  t = p.add_argument_group("optimisation (§2.3)")
  t.add_argument("--batch-size", type=int, default=8, help="sequences per micro-batch")
  t.add_argument("--grad-accum", type=int, default=1,
                 help="micro-batches per step: a step sees batch·accum·seq-len tokens")
  t.add_argument("--seq-len", type=int, default=128)
  t.add_argument("--max-steps", type=int, default=200)
  t.add_argument("--lr", type=float,
                 help="peak learning rate (default: 3e-3 from scratch, 1e-4 fine-tuning, 1e-3 LoRA)")
  t.add_argument("--warmup-steps", type=int, help="default: 20 from scratch, 10 fine-tuning")
  t.add_argument("--lr-decay-steps", type=int, help="end of the cosine decay (default: max-steps)")
  t.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate / peak (§2.3: 10%%)")
  t.add_argument("--weight-decay", type=float, default=0.1)
  t.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
  t.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                 help="weights and activations")
  t.add_argument("--seed", type=int, default=1337)
  r = p.add_argument_group("evaluation, checkpoints, logs")
  r.add_argument("--eval-every", type=int, default=100, help="steps between validation-loss estimates")
  r.add_argument("--eval-steps", type=int, default=10, help="validation batches per estimate")
  r.add_argument("--save-every", type=int, default=100,
                 help="steps between checkpoints (also at the end and on Ctrl-C)")
  r.add_argument("--resume", action="store_true", help="continue the run whose checkpoint is in --out")
  r.add_argument("--force", action="store_true", help="replace the run in --out by a new one (its files are deleted)")
  r.add_argument("--plot", action="store_true", help="write out/loss.png (needs matplotlib)")
  r.add_argument("--sample-tokens", type=int, default=100, help="tokens of the sample printed at the end (0: none)")
  g = p.add_argument_group("devices and memory (§2.4)")
  g.add_argument("--devices", default="", help="comma-separated, e.g. CUDA:0,CUDA:1 (CPU:0,CPU:1: virtual CPU "
                 "devices); default: tinygrad's default device")
  g.add_argument("--parallel", choices=parallel.PARALLEL_MODES, default="dp",
                 help="with several devices: dp copies the model and splits each batch, tp splits every layer "
                      "(Megatron-LM); dp+tp needs a 2-D device mesh that tinygrad 0.14 lacks (default dp)")
  g.add_argument("--checkpoint-activations", action="store_true",
                 help="recompute each block's activations in the backward pass: less memory, one more forward")
  g.add_argument("--dry-run", action="store_true",
                 help="print the memory per device (the paper's four models, then this run) and exit, "
                 "allocating nothing")
  g.add_argument("--beam", type=int, default=0, help="BEAM search width for tinygrad kernel options (0: its "
                 "heuristics); the first run searches, later runs read the cache")
  return configure(TrainConfig(**vars(p.parse_args(argv))))

def dry_run(cfg: TrainConfig) -> int:
  """--dry-run: memory per device from the configuration alone (memory.memory_per_device), nothing allocated: the
  paper's four models with 2048-token sequences on this many devices, then this run (vocabulary: --data's, else the
  preset's; one micro-batch: --grad-accum adds no memory). With --init-from the configuration is the checkpoint's,
  which checkpoint.load reads together with the weights (into host memory); with --lora-rank only the adapters have
  gradients and Adam state."""
  if cfg.init_from is not None: args = checkpoint.load(cfg.init_from, device="CPU")[0].args
  else:
    vocab = (data.read_meta(cfg.data)["vocab_size"] if cfg.data
             else llama.preset_args(cfg.preset, cfg.seq_len).vocab_size)
    args = model_args(cfg, vocab)
  if cfg.lora_rank is not None: lora.check(args, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
  n, gib = len(cfg.devices), 1 << 30
  m = memory.for_run(args, cfg)
  print(memory.memory_table(n_devices=n, dtype=cfg.dtype, checkpoint_activations=cfg.checkpoint_activations))
  print(f"\nthis run: {describe(args, cfg)}, {cfg.dtype}, {cfg.parallel} over {n} device(s), micro-batch "
        f"{cfg.batch_size}x{cfg.seq_len} tokens{', activation checkpointing' if cfg.checkpoint_activations else ''}:\n"
        f"  per device: weights {m['weights'] / gib:.2f} GiB | grads {m['grads'] / gib:.2f} | "
        f"Adam state {m['adam'] / gib:.2f} | activations {m['activations'] / gib:.2f} "
        f"({m['activations_per_token'] / (1 << 20):.3f} MiB/token) | total {m['total'] / gib:.2f} GiB")
  return 0

def merge(cfg: TrainConfig) -> int:
  """--merge: the LoRA run in --out (adapters there, base from its --init-from) saved as a merged model in --out."""
  if cfg.lora_rank is None:
    raise TrainError(f"--merge: {cfg.out} holds no LoRA run (no train_state.json with --lora-rank)")
  out = pathlib.Path(cfg.out)
  model, tok, state, _ = load_checkpoint(out, cfg)
  checkpoint.save(lora.merged(model), out, tok)   # without a tokenizer of its own, the one in out/ stays
  print(f"merged the LoRA adapters of step {state['step']} into {out}/ (config.json, model.safetensors)")
  return 0

def main(argv=None) -> int:
  use_all_cores()
  # TrainError, DataError, CheckpointError, ParallelError: one line, no traceback; Ctrl-C before training started
  # (data preparation, compilation) or a second one: "interrupted" (the loop saves on the first)
  return one_line_errors("train.py", lambda: run(parse_args(argv)))

def run(cfg: TrainConfig) -> int: return dry_run(cfg) if cfg.dry_run else merge(cfg) if cfg.merge else train(cfg)

if __name__ == "__main__": sys.exit(main())
