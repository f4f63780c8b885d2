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
from dataclasses import fields
import checkpoint, data, llama, lora, memory
from cli import one_line_errors
from engine import use_all_cores, use_cpu_graph, use_kernel_options
from training import TrainConfig, TrainError, configure, describe, load_checkpoint, model_args, train

# train.py's option groups, in TrainConfig's order: each option is a TrainConfig field (its default and help line)
GROUPS = {"model (a preset, optionally overridden field by field)": "preset",
          "fine-tuning (--init-from; LoRA: Hu et al. 2021)": "init_from",
          "data and output": "data", "optimisation (§2.3)": "batch_size", "evaluation, checkpoints, logs": "eval_every",
          "devices and memory (§2.4)": "devices"}

def parse_args(argv=None) -> TrainConfig:
  p = argparse.ArgumentParser(description="Train a LLaMA model from scratch (paper §2.3 recipe).")
  firsts = {first: title for title, first in GROUPS.items()}
  for f in fields(TrainConfig):
    if f.name in firsts: group = p.add_argument_group(firsts[f.name])
    kw = dict(f.metadata)
    if isinstance(f.default, bool): kw["action"] = "store_true"
    elif f.default is not None and "choices" not in kw: kw.setdefault("type", type(f.default))
    group.add_argument("--" + f.name.replace("_", "-"), default=f.default, **kw)
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
  use_cpu_graph()
  use_kernel_options()
  # TrainError, DataError, CheckpointError, ParallelError: one line, no traceback; Ctrl-C before training started
  # (data preparation, compilation) or a second one: "interrupted" (the loop saves on the first)
  return one_line_errors("train.py", lambda: run(parse_args(argv)))

def run(cfg: TrainConfig) -> int: return dry_run(cfg) if cfg.dry_run else merge(cfg) if cfg.merge else train(cfg)

if __name__ == "__main__": sys.exit(main())
