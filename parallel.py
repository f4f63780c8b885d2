# Several devices (§2.4): where each tensor lives under data parallel (dp) and tensor parallel (tp), and the memory
# one device needs to train a model, from its configuration alone.
# §2.4: the 65B model was trained on 2048 GPUs with model and sequence parallelism and activation checkpointing. Here
# several devices are used only through tinygrad's own multi-device tensors: Tensor.shard(devices, axis) puts a tensor
# on a tuple of devices, as a full copy on each (axis=None) or split along one axis. Ops on such tensors run on every
# device at once, and a reduction over the split axis becomes an all-reduce. So each scheme is only a choice of where
# each tensor lives; the model code is the same on one device or many.
#  dp (data parallel): every weight is copied to every device (so is the optimiser state, which AdamW makes with
#     zeros_like), the batch is split along axis 0; a weight's gradient sums over the split batch: one all-reduce each.
#  tp (tensor parallel, Megatron-LM style, as fairscale did for Meta): wq wk wv w1 w3 are split by output rows, so each
#     device computes its own attention heads and its own SwiGLU hidden units from the full (copied) input; wo and w2
#     are split by input columns, so each device multiplies its own heads / units and one all-reduce sums the parts.
#     Norm gains and the RoPE table are copied; the KV cache is split by kv-heads (llama.Transformer.init_cache
#     follows wk).
from __future__ import annotations
import numpy as np
from tinygrad import Device, Tensor
from tinygrad.nn.state import get_state_dict
from llama import ModelArgs, Transformer

PARALLEL_MODES = ("dp", "tp", "dp+tp")

class ParallelError(ValueError):
  """A model that cannot run in the asked parallel mode on the asked devices; the message is one sentence."""

# tensor parallel: the axis each state-dict entry is split along; weights are (out, in) as nn.Linear stores them.
# Entries not listed (norm gains, the RoPE table) are copied to every device.
# The embedding and the output layer are split by vocab rows (fairscale split the embedding by columns instead):
#  - tinygrad's lookup is one-hot(tokens)·W summed over the vocab axis (nn._embedding_fwd), so with W split by rows
#    each device adds up the rows it holds and one all-reduce of (batch, seq, dim) gives every device the full, copied
#    hidden state that the copied norms and the column-parallel wq/wk/wv expect. Split by columns, the residual stream
#    would itself be split by dim and every norm and matmul would have to gather it back.
#  - the output layer split by rows gives logits split by vocab: the loss (logsumexp over the vocab) all-reduces only a
#    max and a sum per token, never the (batch, seq, vocab) logits.
#  - a tied output layer (llama2.c, SmolLM) is the same matrix, so one split serves both uses.
TP_SPLIT_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1, "tok_embeddings": 0, "output": 0,
                 "cache_kv": 2}   # the cache is (2, batch, kv_heads, context, head_dim)

def parse_devices(spec: str | None) -> tuple[str, ...]:
  """`--devices` text to a device tuple: 'CUDA:0,CUDA:1' -> ('CUDA:0', 'CUDA:1'); empty or None -> tinygrad's default
  device. Every device is opened here, so a missing backend is reported at once, as a ValueError."""
  if not spec: return (Device.DEFAULT,)
  devices = tuple(d.strip() for d in spec.split(","))
  if not all(devices): raise ValueError(f"--devices {spec!r} has an empty entry")
  if len({Device.canonicalize(d) for d in devices}) != len(devices):
    raise ValueError(f"--devices {spec!r} names a device twice")
  for d in devices:
    try: Device[d]
    except Exception as e: raise ValueError(f"device {d} is not available here ({type(e).__name__}: {e})") from e
  return devices

def check_parallel(args: ModelArgs, n_devices: int, mode: str, batch: int | None = None) -> None:
  """Raise a one-sentence ParallelError unless a model of `args` can run in `mode` ('dp', 'tp', 'dp+tp') on `n_devices`
  (and, given `batch`, unless dp can split that batch evenly). Tensor parallel splits heads, kv-heads, FFN hidden units
  and the vocabulary evenly (Tensor.shard has no uneven shards). dp+tp needs a 2-D device mesh and an all-reduce over
  one mesh dimension, which tinygrad 0.14 lacks (the README's multi-device section says what is missing)."""
  if mode not in PARALLEL_MODES:
    raise ParallelError(f"parallel mode must be one of {', '.join(PARALLEL_MODES)}, not {mode!r}")
  if n_devices < 1: raise ParallelError("at least one device is needed")
  if mode == "dp+tp":
    raise ParallelError("--parallel dp+tp is not supported: tinygrad 0.14 shards a tensor over one flat tuple of "
                        "devices and all-reduces over all of them, with no 2-D device mesh or subgroup all-reduce; "
                        "use dp or tp")
  if batch is not None: check_batch(batch, n_devices, mode)
  if mode == "tp":
    for what, count in (("n_heads", args.n_heads), ("n_kv_heads", args.n_kv_heads),
                        ("the FFN hidden size", args.ffn_hidden), ("vocab_size", args.vocab_size)):
      if count % n_devices:
        raise ParallelError(f"tensor parallel over {n_devices} devices needs {what} ({count}) "
                            f"to be divisible by {n_devices}")

def check_batch(batch: int, n_devices: int, mode: str) -> None:
  if mode == "dp" and batch % n_devices:
    raise ParallelError(f"data parallel over {n_devices} devices needs the batch size ({batch}) "
                        f"to be divisible by {n_devices}")

def shard_axis(name: str, mode: str) -> int | None:
  """The axis along which the state-dict entry `name` ('layers.3.attention.wq.weight', 'freqs', ...) is split in
  `mode`; None means a full copy on every device."""
  if mode != "tp": return None
  parts = name.split(".")
  return TP_SPLIT_AXIS.get(parts[-2] if parts[-1] == "weight" and len(parts) > 1 else parts[-1])

def place(name: str, t: Tensor, devices: tuple[str, ...], mode: str = "tp") -> Tensor:
  """One tensor onto `devices` (lazy: realise it yourself): moved when there is one device, else sharded by
  shard_axis. A loader calls this tensor by tensor on lazy disk tensors: each device then receives only its own part,
  and no device ever holds the whole model."""
  return t.to(devices[0]) if len(devices) == 1 else t.shard(devices, shard_axis(name, mode))

def model_devices(model: Transformer) -> tuple[str, ...]:
  """The devices `model`'s weights live on, as a tuple (one entry on a single device)."""
  return d if isinstance(d := model.tok_embeddings.weight.device, tuple) else (d,)

def model_backend(model: Transformer) -> str:
  """The backend the model runs on ("CPU", "CUDA", "METAL", ...), of its first device."""
  return Device.canonicalize(model_devices(model)[0]).split(":")[0]

def shard_model(model: Transformer, devices: tuple[str, ...], mode: str = "tp") -> Transformer:
  """Move every tensor of `model` (weights, RoPE table, KV cache if any) onto `devices` for `mode` ('dp' or 'tp'), in
  place and one tensor at a time: each is realised on its new devices before the next moves, so its old buffer can
  be freed at once. Make the optimiser after this (its moments are created like the weights), and feed batches
  through shard_batch."""
  devices = tuple(devices)
  check_parallel(model.args, len(devices), mode)
  for name, t in get_state_dict(model).items():
    if isinstance(t.device, tuple):
      raise ValueError(f"{name} is already on several devices {t.device}: shard a model once")
    t.replace(place(name, t, devices, mode).realize())
  return model

def shard_batch(x: Tensor, devices: tuple[str, ...], mode: str = "dp", batch_axis: int = 0) -> Tensor:
  """Tokens or targets for a model sharded in `mode`: split along the batch axis for dp (axis 1 for micro-batches
  stacked as (accum, batch, seq)), copied to every device for tp."""
  if len(devices) == 1: return x.to(devices[0])
  if mode == "dp":
    check_batch(x.shape[batch_axis], len(devices), mode)
    return x.shard(devices, batch_axis)
  return x.shard(devices)

def to_device(arr: np.ndarray, devices: tuple[str, ...] = (), mode: str = "dp", batch_axis: int = 0) -> Tensor:
  """Tokens onto `devices`: split along the batch axis under dp (axis 1 of micro-batches stacked (accum, B, T)),
  copied under tp; no devices: the default device."""
  return (shard_batch(Tensor(arr), devices, mode, batch_axis) if devices else Tensor(arr)).realize()

def use_atomics(devices: tuple[str, ...], mode: str) -> int:
  """USE_ATOMICS=1 makes the embedding's backward scatter into the table instead of a B·T×V one-hot matmul, where it
  is right: tinygrad 0.14 has that kernel for CPU and AMD only (others raise NotImplementedError), and with the batch
  split across devices (dp) each device scatters only its own tokens and nothing all-reduces the results."""
  backends = {Device.canonicalize(d).split(":")[0] for d in devices}
  return int(backends <= {"CPU", "AMD"} and (len(devices) == 1 or mode == "tp"))
