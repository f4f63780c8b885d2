# Memory (§2.4): what one device needs to train a model, from its configuration alone (nothing allocated), the table
# of the paper's four models that train.py --dry-run prints, and the check that refuses a run the host cannot hold.
from __future__ import annotations
import os, pathlib
from tinygrad import Device, dtypes
import lora
from llama import PRESETS, ModelArgs
from parallel import check_parallel

class MemoryCheckError(ValueError):
  """A run that would not fit; the message is one line for the user."""

def memory_per_device(args: ModelArgs, n_devices: int = 1, mode: str = "dp", batch: int = 1, seq_len: int | None = None,
                      dtype=dtypes.float32, checkpoint_activations: bool = False,
                      trainable: int | None = None) -> dict[str, int]:
  """Bytes one device needs to train a model of `args` with AdamW, from the config alone (nothing is allocated).
  `batch` sequences of `seq_len` tokens per step in all (dp gives each device batch/n of them); `dtype` is the weights'.
    weights      the parameters on this device, plus the fp32 RoPE table
    grads        one gradient per parameter, in the weights' dtype
    adam         tinygrad's AdamW moments m and v, fp32, plus an fp32 master copy when the weights are 16-bit
    activations_per_token   what the backward pass keeps per token (below), and `activations` for this device's tokens
  `trainable`: the number of parameters that are trained when not all are (LoRA's float32 adapters beside frozen
  weights); they alone get gradients and Adam moments, no master copies, and are counted whole on every device.
  Activations kept per token and layer: the inputs of the two norms and of the three matmul groups (4·dim), q k v
  (dim + 2·kv_dim), the attention output (dim), the SwiGLU gate, up and product (3·hidden), and one row of scores
  (fp32) and probabilities per head (n_heads·seq_len). Under tp everything after a column-parallel matmul is split,
  the four norm-side tensors are not. After the last layer: the final norm's input and output, and fp32 logits and
  log-probabilities (split by vocab under tp). With checkpoint_activations only each block's input is kept, plus one
  block's activations while it is recomputed. An estimate: what tinygrad keeps alive depends on its kernel fusion."""
  check_parallel(args, n_devices, mode)
  if isinstance(dtype, str): dtype = getattr(dtypes, dtype)
  e, seq_len = dtype.itemsize, seq_len or args.max_seq_len
  tp = n_devices if mode == "tp" else 1
  d, kv, hidden, V, L = args.dim, args.n_kv_heads * args.head_dim, args.ffn_hidden, args.vocab_size, args.n_layers
  copied = L * 2 * d + d                                       # norm gains
  params = copied + (args.num_params() - copied) // tp
  rope = args.max_seq_len * 2 * args.head_dim * 4              # precompute_freqs: (2·max_seq_len, head_dim/2, 2) fp32
  layer = 4 * d * e + (2 * d + 2 * kv + 3 * hidden) * e // tp + args.n_heads * seq_len * (4 + e) // tp
  head = 2 * d * e + 2 * V * 4 // tp
  per_token = (L * d * e + layer if checkpoint_activations else L * layer) + head
  tokens = -(-batch // (n_devices if mode == "dp" else 1)) * seq_len   # sequences per device, rounded up
  # under tp tinygrad leaves an untied embedding's gradient whole on every device: its backward (one-hot · upstream
  # gradient, summed over batch and sequence) never touches the split weight, so nothing splits the result (measured)
  whole_embedding_grad = 0 if mode != "tp" or args.tie_embeddings else V * d - V * d // tp
  if trainable is None: extra, grads, adam = 0, (params + whole_embedding_grad) * e, params * 4 * (2 + (e < 4))
  else: extra, grads, adam = trainable * 4, trainable * 4, trainable * 4 * 2
  ret = {"weights": params * e + rope + extra, "grads": grads, "adam": adam, "activations_per_token": per_token,
         "activations": per_token * tokens}
  ret["total"] = ret["weights"] + ret["grads"] + ret["adam"] + ret["activations"]
  return ret

def memory_table(presets=("7B", "13B", "33B", "65B"), n_devices: int = 8, batch: int | None = None, seq_len: int = 2048,
                 dtype=dtypes.bfloat16, checkpoint_activations: bool = False) -> str:
  """A Markdown table of memory_per_device for the paper's four models under dp and tp (GiB; activations per token in
  MiB). `batch` sequences in all, by default one per device under dp and one under tp."""
  gib, mib = 1 << 30, 1 << 20
  rows = ["| model | mode | devices | weights | grads | Adam state | activations / token (MiB) | activations | total |",
          "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
  for name in presets:
    for mode in ("dp", "tp"):
      b = batch or (n_devices if mode == "dp" else 1)
      try: m = memory_per_device(PRESETS[name], n_devices, mode, b, seq_len, dtype, checkpoint_activations)
      except ValueError as e:
        rows.append(f"| {name} | {mode} | {n_devices} | {e} |||||")
        continue
      rows.append(f"| {name} | {mode} | {n_devices} | {m['weights']/gib:.1f} | {m['grads']/gib:.1f} | "
                  f"{m['adam']/gib:.1f} | {m['activations_per_token']/mib:.2f} | {m['activations']/gib:.1f} | "
                  f"{m['total']/gib:.1f} |")
  dt = dtype if isinstance(dtype, str) else repr(dtype).removeprefix("dtypes.")
  return "\n".join([f"Memory per device (GiB), {dt} weights, AdamW, {seq_len}-token sequences"
                    + (", activation checkpointing" if checkpoint_activations else "") + ":", *rows])

def available_memory() -> int | None:
  """Bytes of host memory free for this run (Linux: MemAvailable, which counts reclaimable page cache), or None."""
  try:
    if os.path.exists("/proc/meminfo"):
      for line in pathlib.Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"): return int(line.split()[1]) * 1024
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (ValueError, OSError, AttributeError): return None

def for_run(args: ModelArgs, cfg) -> dict[str, int]:
  """memory_per_device for the run train.py's configuration `cfg` describes; with LoRA only the adapters get
  gradients and Adam state."""
  return memory_per_device(
    args, len(cfg.devices), cfg.parallel, cfg.batch_size, cfg.seq_len, cfg.dtype, cfg.checkpoint_activations,
    trainable=None if cfg.lora_rank is None else lora.num_params(args, cfg.lora_rank, cfg.lora_targets))

def check_host(args: ModelArgs, cfg) -> None:
  """Refuse a run whose estimate (memory_per_device) exceeds the free host memory, before allocating it.
  CPU only: the other backends report their own allocation failures."""
  if Device.canonicalize(cfg.devices[0]).split(":")[0] != "CPU" or (avail := available_memory()) is None: return
  need = for_run(args, cfg)["total"] * len(cfg.devices)   # virtual CPU devices share the host's memory
  if need > avail:
    raise MemoryCheckError(f"a micro-batch of {cfg.batch_size}x{cfg.seq_len} tokens needs about {need / 2**30:.1f} GiB "
                           f"but {avail / 2**30:.1f} GiB is free: lower --batch-size or --seq-len "
                           "(and raise --grad-accum to keep the tokens per step)")
