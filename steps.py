# The compiled steps of training: the loss (next-token cross-entropy, chat data's masked targets left out), one update
# from grad_accum micro-batches (forward, backward, §2.3 clipping and AdamW) as one TinyJit, and the validation loss.
from __future__ import annotations
from tinygrad import Context, Tensor, TinyJit
from engine import capture_at_once
from tinygrad.nn.optim import OptimizerGroup
import data
from optim import clip_grad_norm, set_lr

def loss_sum(logits: Tensor, y: Tensor) -> Tensor:
  """Cross-entropy summed over the targets, those equal to data.IGNORE (chat data: what the user wrote, padding) left
  out: they add nothing to the loss or to any gradient."""
  return logits.sparse_categorical_crossentropy(y, ignore_index=data.IGNORE, reduction="sum")

def counted(y: Tensor) -> Tensor:
  """How many targets of y the loss counts (at least 1, so a batch without any gives 0, not NaN)."""
  return (y != data.IGNORE).sum().maximum(1).float()

def make_train_step(model, opt: OptimizerGroup, params: list[Tensor], grad_clip: float,
                    checkpoint_activations: bool = False) -> TinyJit:
  def train_step(x: Tensor, y: Tensor, lr: Tensor) -> tuple[Tensor, Tensor]:
    """One update from grad_accum micro-batches x, y: (K, B, T); the loss is the mean over every counted target of the
    step. Each micro-batch's gradients are realised before the next forward, so memory holds one micro-batch of
    activations; then clip, then AdamW, all one compiled step. Only `params` are differentiated (Tensor.gradient,
    not backward(), which would also differentiate the RoPE table and LoRA's frozen weights). On several devices the
    same code runs sharded: under dp each weight's gradient is all-reduced by tinygrad."""
    with Context(TRAINING=1):
      n, losses = counted(y), []
      for k in range(x.shape[0]):
        loss = loss_sum(model(x[k], checkpoint_activations=checkpoint_activations, training=True), y[k]) / n
        # not opt.zero_grad() and +=: with 16-bit weights opt holds the masters (their .grad is set below); a buffer
        # per gradient (llama.checkpointed_block says why)
        for p, g in zip(params, loss.gradient(*params)): p.grad = (g if k == 0 else p.grad + g).contiguous()
        losses.append(loss.realize(*[p.grad for p in params]).detach())
      total = sum(losses[1:], losses[0])
      masters = [(p, m) for p, m in zip(params, opt.params) if m is not p]   # 16-bit weights (make_optimizer)
      for p, m in masters: m.grad = p.grad.float()
      norm = clip_grad_norm(opt.params, grad_clip)
      set_lr(opt, lr)
      # the loss is read together with the update (realised after it, it would be the next step's); the model gets
      # the updated masters, rounded
      Tensor.realize(total, norm, *opt.schedule_step(), *[p.assign(m.cast(p.dtype)) for p, m in masters])
    return total, norm
  return capture_at_once(train_step, model, opt)

def make_eval_step(model) -> TinyJit:
  def eval_step(x: Tensor, y: Tensor) -> Tensor: return (loss_sum(model(x), y) / counted(y)).realize()
  return capture_at_once(eval_step, model)
