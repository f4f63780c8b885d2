# LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models"): chosen Linear layers of a loaded
# model are wrapped from outside, their weight W frozen and a trainable low-rank update B·A added beside it;
# merged() folds B·A back into W, giving a plain model of the same shape and names. llama.py's model stays as it is.
from __future__ import annotations
import math
from typing import Iterator
from tinygrad import Tensor, dtypes
from tinygrad.nn.state import get_state_dict
import llama
from engine import split_axis

class LoRAError(ValueError):
  """LoRA settings that do not fit the model; the message is one line for the user."""

# which block holds each adaptable matrix
SUBLAYER = {"wq": "attention", "wk": "attention", "wv": "attention", "wo": "attention",
            "w1": "feed_forward", "w2": "feed_forward", "w3": "feed_forward"}
# §4.2 / §7.1 (Table 5): adapting W_q and W_v alone works best for a given number of trainable parameters
DEFAULT_TARGETS = "wq,wv"
ADAPTER_NAMES = ("lora_a", "lora_b")

class LoRALinear:
  """h = W·x + (α/r)·B·A·x (§4.1, eq. 3 with §4.1's scaling): W (out, in) is the base layer's weight, frozen (it
  keeps its dtype, so it may stay 16-bit); A (r, in) starts Gaussian and B (out, r) zero, so B·A = 0 and the wrapped
  layer begins exactly as the base one. A and B are float32 and live where W does (copied, or split along with it)."""
  def __init__(self, weight: Tensor, rank: int, alpha: float):
    out_features, in_features = weight.shape
    self.weight, self.scale = weight, alpha / rank
    # §4.1: "a random Gaussian initialization for A and zero for B"; std 1/sqrt(in) keeps A·x at the scale of x
    self.lora_a = place(Tensor.normal(rank, in_features, std=1 / math.sqrt(in_features), dtype=dtypes.float32),
                        weight, 1)
    self.lora_b = place(Tensor.zeros(out_features, rank, dtype=dtypes.float32), weight, 0)

  def __call__(self, x: Tensor) -> Tensor:
    return x.linear(self.weight.T) + ((x.float() @ self.lora_a.T) @ self.lora_b.T * self.scale).cast(x.dtype)

  def merged(self) -> Tensor:
    """W + (α/r)·B·A in W's dtype (§4.1: "we can explicitly compute and store W = W0 + BA", so inference costs
    nothing extra)."""
    merged = self.weight.float() + (self.lora_b @ self.lora_a) * self.scale
    return merged.cast(self.weight.dtype).contiguous().realize()

def place(t: Tensor, weight: Tensor, axis: int) -> Tensor:
  """An adapter onto `weight`'s device(s), realised. Under tensor parallel W split by output rows (axis 0) splits
  B by rows too, W split by input columns (axis 1) splits A by columns; the other factor is copied. So B·A is split
  like W."""
  if not isinstance(weight.device, tuple): return t.to(weight.device).contiguous().realize()
  return t.shard(weight.device, axis if split_axis(weight) == axis else None).contiguous().realize()

def parse_targets(spec: str) -> tuple[str, ...]:
  targets = tuple(dict.fromkeys(s.strip() for s in spec.split(",") if s.strip()))
  if not targets or any(t not in SUBLAYER for t in targets):
    raise LoRAError(f"--lora-targets {spec!r}: give a comma-separated list of {', '.join(SUBLAYER)}")
  return targets

def check(args: llama.ModelArgs, rank: int, alpha: float, targets: str) -> tuple[str, ...]:
  """The parsed targets, or a LoRAError for a rank outside 1..dim, a non-positive alpha or an unknown target."""
  if not 1 <= rank <= args.dim:
    raise LoRAError(f"--lora-rank must be between 1 and the model's dim ({args.dim}), not {rank}")
  if not alpha > 0: raise LoRAError(f"--lora-alpha must be positive, not {alpha}")
  return parse_targets(targets)

def shapes(args: llama.ModelArgs) -> dict[str, tuple[int, int]]:
  """(out, in) of each adaptable matrix, from the config alone."""
  d, kv, h = args.dim, args.n_kv_heads * args.head_dim, args.ffn_hidden
  return {"wq": (d, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, d), "w1": (h, d), "w2": (d, h), "w3": (h, d)}

def num_params(args: llama.ModelArgs, rank: int, targets: str) -> int:
  """Trainable parameters of the adapters: r·(in + out) per adapted matrix and layer."""
  return args.n_layers * sum(rank * sum(shapes(args)[t]) for t in parse_targets(targets))

def wrapped(model: llama.Transformer) -> Iterator[tuple[str, object, str]]:
  """(state-dict prefix, owning block, attribute) of every LoRALinear in `model`."""
  for i, layer in enumerate(model.layers):
    for attr, sub in SUBLAYER.items():
      if isinstance(getattr(owner := getattr(layer, sub), attr), LoRALinear):
        yield f"layers.{i}.{sub}.{attr}", owner, attr

def apply(model: llama.Transformer, rank: int, alpha: float, targets: str = DEFAULT_TARGETS) -> llama.Transformer:
  """Wrap the `targets` Linear layers of every block of `model` in LoRALinear, in place (after the model is placed on
  its devices: the adapters are made where each weight is). The adapters are drawn and realised in a fixed order,
  so a seed fixes them."""
  for t in check(model.args, rank, alpha, targets):
    for layer in model.layers:
      owner = getattr(layer, SUBLAYER[t])
      if isinstance(lin := getattr(owner, t), LoRALinear): raise LoRAError(f"{t} already carries LoRA adapters")
      setattr(owner, t, LoRALinear(lin.weight, rank, alpha))
  return model

def adapters(model: llama.Transformer) -> dict[str, Tensor]:
  """The trainable tensors of a LoRA model by name ('layers.0.attention.wq.lora_a', ...); empty for a plain model."""
  return {k: v for k, v in get_state_dict(model).items() if k.endswith(ADAPTER_NAMES)}

def base(model: llama.Transformer) -> dict[str, Tensor]:
  """The frozen tensors of a LoRA model: llama.learned without the adapters (the base model's own names)."""
  return {k: v for k, v in llama.learned(model).items() if not k.endswith(ADAPTER_NAMES)}

def merged(model: llama.Transformer) -> llama.Transformer:
  """A plain Transformer whose adapted weights are W + (α/r)·B·A; every other tensor is shared with `model`, which
  stays as it is (training can go on). llama.learned() of it gives exactly the base model's names."""
  plain = llama.Transformer(model.args, init=False)
  new = {f"{prefix}.weight": getattr(owner, attr).merged() for prefix, owner, attr in wrapped(model)}
  src = get_state_dict(model)
  for name in get_state_dict(plain):
    *path, leaf = name.split(".")
    obj = plain
    for p in path: obj = obj[int(p)] if p.isdigit() else getattr(obj, p)
    setattr(obj, leaf, new.get(name, src[name]))
  return plain
