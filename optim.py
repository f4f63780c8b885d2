# §2.3 of the paper, the optimiser: AdamW (β1 = 0.9, β2 = 0.95, weight decay 0.1), a cosine learning-rate schedule
# with warmup whose final value is 10% of the peak, gradient clipping at 1.0; float32 master copies for 16-bit weights,
# and the optimiser's state as named tensors for a checkpoint.
from __future__ import annotations
import math
from tinygrad import Tensor, dtypes
from tinygrad.nn.optim import AdamW, OptimizerGroup
import llama, lora
from engine import adam_state, optimizers

def lr_at(step: int, peak: float, warmup: int, decay_end: int, min_ratio: float) -> float:
  """Learning rate of update number step+1: linear warmup to the peak over `warmup` steps, then a cosine down to
  min_ratio·peak at `decay_end`, and that floor afterwards (§2.3: "the final learning rate is equal to 10% of the
  maximal learning rate")."""
  n = step + 1
  if n <= warmup: return peak * n / warmup
  progress = min(1.0, (n - warmup) / (decay_end - warmup)) if decay_end > warmup else 1.0
  return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

def trainable(model: llama.Transformer) -> dict[str, Tensor]:
  """The tensors the optimiser updates, by name: a LoRA model's adapters, else every learned tensor."""
  return lora.adapters(model) or llama.learned(model)

def param_groups(model: llama.Transformer) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
  """(decayed, not decayed) trainable tensors by name. Weight decay goes on the weight matrices of the linear layers
  (and LoRA's A and B) only; norm gains and the token embedding are not decayed (as in nanoGPT / llama2.c)."""
  decay, keep = {}, {}
  for name, t in trainable(model).items():
    (decay if t.ndim == 2 and name != "tok_embeddings.weight" else keep)[name] = t
  return decay, keep

def make_optimizer(model: llama.Transformer, lr: float, weight_decay: float) -> tuple[OptimizerGroup, list[Tensor]]:
  """AdamW over the model's trainable tensors; returns (optimiser, those tensors). The tensors the optimiser updates
  (opt.params, in the same order) are the model's own when they are float32, else float32 master copies, placed like
  them (mixed precision, Micikevicius et al. 2018): tinygrad's AdamW adds each update to the weight in the weight's
  dtype, and an update below half a weight's last bit is lost (bfloat16 keeps 8 significant bits). The train step
  copies the updated masters back into the model, rounded."""
  decay, keep = param_groups(model)
  def master(ts): return [t if t.dtype == dtypes.float32 else t.float().contiguous().realize() for t in ts]
  # §2.3: "AdamW optimizer with the following hyper-parameters: β1 = 0.9, β2 = 0.95", weight decay 0.1
  # (a LoRA model has no undecayed group)
  opt = OptimizerGroup(*[AdamW(master(g.values()), lr=lr, b1=0.9, b2=0.95, eps=1e-8, weight_decay=wd)
                         for g, wd in ((decay, weight_decay), (keep, 0.0)) if g])
  return opt, list(decay.values()) + list(keep.values())

def set_lr(opt: OptimizerGroup, lr: Tensor) -> None:
  """The learning rate of the next step, from a device tensor (so a compiled step takes it as an input); each AdamW
  keeps its own where its weights are."""
  for o in optimizers(opt): o.lr.assign(lr.to(o.lr.device))

def clip_grad_norm(params: list[Tensor], max_norm: float) -> Tensor:
  """Scale every gradient by min(1, max_norm/‖g‖) where ‖g‖ is the norm of all gradients together
  (§2.3 "gradient clipping of 1.0"); returns ‖g‖ before clipping. tinygrad has no helper for this."""
  norm = Tensor.stack(*[p.grad.float().square().sum() for p in params]).sum().sqrt()
  scale = (max_norm / (norm + 1e-6)).minimum(1.0)
  for p in params: p.grad = (p.grad * scale).cast(p.grad.dtype)
  return norm

def optimizer_state(opt: OptimizerGroup, params: list[Tensor]) -> dict[str, Tensor]:
  """AdamW's moments and bias-correction powers, by position (parameters are always listed in the same order), and
  the float32 master copies of 16-bit weights (make_optimizer)."""
  return {f"master.{j}": m for j, (p, m) in enumerate(zip(params, opt.params)) if m is not p} | adam_state(opt)
