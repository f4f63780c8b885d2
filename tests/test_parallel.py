"""Multi-device training and inference (issue 6, §2.4) on tinygrad's virtual CPU devices "CPU:0", "CPU:1", ...
Every multi-device result is compared with the same computation on one device."""
import gc
import numpy as np, pytest
from tinygrad import Context, GlobalCounters, Tensor, UOp, dtypes, nn
from tinygrad.nn.state import get_state_dict
import llama
import checkpoint, parallel, kernels, memory
from engine import split_axis
import decode

def devs(n: int) -> tuple[str, ...]: return tuple(f"CPU:{i}" for i in range(n))

# GQA (8 query heads, 4 kv heads), FFN hidden 96, vocab 64: all divisible by 4, so tp runs on 2 and 4 devices.
# One layer: compiling the kernels of a step dominates the time, and a second layer adds kernels, not coverage.
CFG = llama.ModelArgs(dim=32, n_layers=1, n_heads=8, n_kv_heads=4, vocab_size=64, multiple_of=16, max_seq_len=32)
BATCH = np.random.default_rng(0).integers(0, CFG.vocab_size, (4, 9)).astype(np.int32)
LR = 1e-2

def trained_params(model: llama.Transformer) -> dict[str, Tensor]:
  return {k: v for k, v in get_state_dict(model).items() if k != "freqs" and not k.endswith("cache_kv")}

def train_step(devices: tuple[str, ...] | None, mode: str | None, checkpoint: bool = False):
  """One AdamW step; (loss, gradients, weights after the step, bytes per device held after the step that were
  not held before the model existed)."""
  gc.collect()
  before = dict(GlobalCounters.mem_used_per_device)
  Tensor.manual_seed(7)
  model = llama.Transformer(CFG)
  if devices: parallel.shard_model(model, devices, mode)
  params = list(trained_params(model).values())
  # eps 1e-5, not 1e-8: Adam's first update lr·g/(|g|+eps) is ill-conditioned for |g| near eps (its slope lr/eps),
  # and fp32 sums in another order differ by ~1e-9; 1e-5 keeps that under 2e-6 without changing the arithmetic
  opt = nn.optim.AdamW(params, lr=LR, b1=0.9, b2=0.95, eps=1e-5, weight_decay=0.1)
  x, y = Tensor(BATCH[:, :-1]), Tensor(BATCH[:, 1:])
  if devices: x, y = parallel.shard_batch(x, devices, mode), parallel.shard_batch(y, devices, mode)
  with Context(TRAINING=1):
    opt.zero_grad()
    if checkpoint:   # Transformer.__call__ with each block through checkpointed_block
      h, freqs = model.tok_embeddings(x), model.freqs[:x.shape[1]]
      for layer in model.layers: h = llama.checkpointed_block(layer, h, freqs)
      logits = model.output(model.norm(h)).float()
    else: logits = model(x)
    loss = logits.sparse_categorical_crossentropy(y)
    loss.backward()
    for p in params: p.grad = p.grad.contiguous()   # a buffer per gradient (llama.checkpointed_block explains)
    Tensor.realize(loss, *[p.grad for p in params])
    Tensor.realize(*opt.schedule_step())
  after = dict(GlobalCounters.mem_used_per_device)
  return loss.item(), {k: v.grad.numpy() for k, v in trained_params(model).items()}, \
         {k: v.numpy() for k, v in trained_params(model).items()}, \
         {d: after.get(d, 0) - before.get(d, 0) for d in after}

@pytest.fixture(scope="module")
def step():
  """train_step, each configuration run once per module (several tests read the same run)."""
  runs = {}
  def run(n: int, mode: str | None, checkpoint: bool = False):
    if (key := (n, mode, checkpoint)) not in runs: runs[key] = train_step(devs(n) if n > 1 else None, mode, checkpoint)
    return runs[key]
  return run

@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("mode", ["dp", "tp"])
def test_train_step_matches_one_device(step, mode, n):
  Tensor.manual_seed(7)
  initial = {k: v.numpy() for k, v in trained_params(llama.Transformer(CFG)).items()}
  loss1, g1, w1, _ = step(1, None)
  loss, g, w, _ = step(n, mode)
  assert loss == pytest.approx(loss1, abs=1e-5)
  for k in w1:
    np.testing.assert_allclose(g[k], g1[k], atol=1e-5 * np.abs(g1[k]).max(), rtol=0, err_msg=k)
    assert np.abs(w1[k] - initial[k]).max() > 1e-3, f"{k} was not updated"   # the comparison below is not vacuous
    np.testing.assert_allclose(w[k], w1[k], atol=1e-5, rtol=0, err_msg=k)

def test_tp_places_weights_megatron_style():
  model = parallel.shard_model(llama.Transformer(CFG), devs(2), "tp")
  a, f = model.layers[0].attention, model.layers[0].feed_forward
  axes = {
    "wq": a.wq, "wk": a.wk, "wv": a.wv, "w1": f.w1, "w3": f.w3, "wo": a.wo, "w2": f.w2, "emb": model.tok_embeddings,
    "out": model.output, "norm": model.layers[0].attention_norm
  }
  assert {k: split_axis(m.weight)
          for k, m in axes.items()} == {
            "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "wo": 1, "w2": 1, "emb": 0, "out": 0, "norm": None
          }
  assert model.freqs.device == a.wq.weight.device and split_axis(model.freqs) is None # ('CPU', 'CPU:1'): CPU:0 is CPU
  model.init_cache(1, 16)
  cache = model.layers[0].attention.cache_kv
  assert cache.device == a.wq.weight.device and split_axis(cache) == 2       # split by kv-heads
  assert parallel.model_devices(model) == a.wq.weight.device and len(a.wq.weight.device) == 2

def test_dp_places_full_copies_and_splits_batch():
  model = parallel.shard_model(llama.Transformer(CFG), devs(2), "dp")
  assert all(
    isinstance(t.device, tuple) and len(t.device) == 2 and split_axis(t) is None
    for t in get_state_dict(model).values())
  x = parallel.shard_batch(Tensor(BATCH), devs(2), "dp")
  assert split_axis(x) == 0 and x.shape == BATCH.shape
  assert split_axis(parallel.shard_batch(Tensor(BATCH[None]), devs(2), "dp", batch_axis=1)) == 1   # (accum, batch, seq)
  assert split_axis(parallel.shard_batch(Tensor(BATCH), devs(2), "tp")) is None

# ----- greedy generation: tensor parallel over 2 devices equals one device -----

def greedy(model: llama.Transformer, prompt: list[int], n_new: int) -> tuple[list[int], list[np.ndarray]]:
  """Plain KV-cache loop: prefill the prompt (the masked path when it has several tokens), then one token at a time
  at a bound symbolic position (one set of kernels for every position). Returns the ids and each step's last logits."""
  model.init_cache(1, len(prompt) + n_new)
  devices = parallel.model_devices(model)
  pos = UOp.variable("start_pos", 0, len(prompt) + n_new - 1)
  ids, logits, step_in = list(prompt), [], prompt
  for _ in range(n_new):
    start = len(ids) - len(step_in)
    toks = parallel.shard_batch(Tensor([step_in], dtype=dtypes.int32), devices, "tp")
    out = model(toks, pos.bind(start) if len(step_in) == 1 else start)[0, -1].realize()
    logits.append(out.numpy())
    ids.append(int(logits[-1].argmax()))
    step_in = [ids[-1]]
  model.drop_cache()
  return ids, logits

def test_tp_greedy_matches_one_device_random_gqa():
  args = llama.ModelArgs(dim=48, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=96, multiple_of=16, max_seq_len=64)
  Tensor.manual_seed(3)
  model = llama.Transformer(args)
  ids1, logits1 = greedy(model, [1, 17, 42, 5], 8)
  ids2, logits2 = greedy(parallel.shard_model(model, devs(2), "tp"), [1, 17, 42, 5], 8)
  assert ids2 == ids1
  np.testing.assert_allclose(np.stack(logits2), np.stack(logits1), atol=1e-4)

# Karpathy's stories260K from BOS, greedy: llama2.c's reference token ids (shared/fixtures/README.md)
STORIES_IDS = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]

def test_tp_greedy_stories260k_matches_one_device(fixtures):
  path = fixtures / "stories260K" / "stories260K.bin"
  model, _ = checkpoint.load(path)
  ids1, logits1 = greedy(model, [1], 11)
  sharded, _ = checkpoint.load(path)
  ids2, logits2 = greedy(parallel.shard_model(sharded, devs(2), "tp"), [1], 11)
  assert ids1 == STORIES_IDS and ids2 == STORIES_IDS
  np.testing.assert_allclose(np.stack(logits2), np.stack(logits1), atol=1e-4)

def test_tp_generator_gives_golden_tokens(fixtures):
  """decode.Generator (what generate.py --devices runs) on stories260K loaded over 2 devices: chunked prefill, the
  TinyJit decode step and the 8-lane matvec layers (on every layer here, so the row-split wo/w2 reshape their split
  axis) give llama2.c's greedy tokens. (Sampling on a split model: test_train's tensor-parallel sample.)"""
  model, _ = checkpoint.load(fixtures / "stories260K" / "stories260K.bin", device=devs(2))
  kernels.use_decode_kernels(model, min_size=0)
  gen = decode.Generator(model, 16, decode.Sampling(0.0), chunk=4)
  assert decode.generate(gen, STORIES_IDS[:6], 6, None,
                         decode.Stats()) == STORIES_IDS[6:] # a prefill of 2 chunks, then decode

def test_tp_load_splits_each_tensor_as_it_is_read(fixtures):
  """checkpoint.load(device=(d0, d1)) places each tensor as the reader yields it: each device ends up holding only its
  shards (plus the copied norms and RoPE table), never the whole model, and the weights equal a one-device load."""
  path = fixtures / "stories260K" / "stories260K.bin"
  ref, _ = checkpoint.load(path)
  gc.collect()
  before = dict(GlobalCounters.mem_used_per_device)
  model, _ = checkpoint.load(path, device=devs(2))
  grown = [GlobalCounters.mem_used_per_device[d] - before.get(d, 0) for d in ("CPU", "CPU:1")]
  args = model.args
  copied = 4 * (2 * args.n_layers + 1) * args.dim               # norm gains, on every device
  expected = (4 * args.num_params() - copied) // 2 + copied + ref.freqs.nbytes()
  assert all(expected <= g <= expected + 64 for g in grown), (grown, expected)   # + a few bytes of tinygrad scalars
  assert split_axis(model.layers[0].attention.wq.weight) == 0 and split_axis(model.layers[0].attention.wo.weight) == 1
  for name, t in get_state_dict(ref).items():
    if not name.endswith("cache_kv"):
      np.testing.assert_array_equal(get_state_dict(model)[name].numpy(), t.numpy(), err_msg=name)

def test_tp_load_indivisible_heads_fails_clearly(fixtures):
  with pytest.raises(parallel.ParallelError,
                     match=r"tensor parallel over 3 devices needs n_heads \(8\) to be divisible by 3"):
    checkpoint.load(fixtures / "stories260K" / "stories260K.bin", device=devs(3))

# ----- clear errors -----

def test_tp_heads_not_dividing_devices_fails_before_moving_anything():
  model = llama.Transformer(CFG, init=False)   # 8 heads
  with pytest.raises(ValueError, match=r"tensor parallel over 3 devices needs n_heads \(8\) to be divisible by 3"):
    parallel.shard_model(model, devs(3), "tp")
  assert all(isinstance(t.device, str) for t in get_state_dict(model).values())

@pytest.mark.parametrize("args, message", [
  (llama.ModelArgs(dim=48, n_layers=1, n_heads=6, vocab_size=64), r"n_heads \(6\) to be divisible by 4"),
  (llama.ModelArgs(dim=32, n_layers=1, n_heads=4, n_kv_heads=2,
                   vocab_size=64), r"n_kv_heads \(2\) to be divisible by 4"),
  (llama.ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=66,
                   multiple_of=16), r"vocab_size \(66\) to be divisible by 4"),
  (llama.ModelArgs(dim=32, n_layers=1, n_heads=4, vocab_size=64,
                   hidden_dim=90), r"FFN hidden size \(90\) to be divisible by 4"),
])
def test_tp_indivisible_config_fails_clearly(args, message):
  with pytest.raises(ValueError, match=message): parallel.check_parallel(args, 4, "tp")
  with pytest.raises(ValueError, match=message): memory.memory_per_device(args, 4, "tp")
  parallel.check_parallel(args, 4, "dp")   # data parallel splits only the batch

def test_other_bad_parallel_input_fails_clearly():
  model = llama.Transformer(CFG)
  with pytest.raises(ValueError, match=r"dp\+tp is not supported"): parallel.shard_model(model, devs(4), "dp+tp")
  with pytest.raises(ValueError, match="one of dp, tp, dp\\+tp"): parallel.shard_model(model, devs(2), "pp")
  with pytest.raises(ValueError, match=r"batch size \(3\) to be divisible by 2"):
    parallel.shard_batch(Tensor(BATCH[:3]), devs(2), "dp")
  parallel.shard_model(model, devs(2), "dp")
  with pytest.raises(ValueError, match="already on several devices"): parallel.shard_model(model, devs(2), "tp")
  assert parallel.parse_devices("CPU:0, CPU:1") == ("CPU:0", "CPU:1")
  with pytest.raises(ValueError, match="names a device twice"): parallel.parse_devices("CPU,CPU:0")
  with pytest.raises(ValueError, match="empty entry"): parallel.parse_devices("CPU:0,")
  with pytest.raises(ValueError, match="NOSUCHDEV:1 is not available"): parallel.parse_devices("CPU:0,NOSUCHDEV:1")

# ----- §2.4 activation checkpointing -----

def test_activation_checkpointing_same_gradients(step):
  """A whole step with each block recomputed in the backward pass: the same loss, gradients and update as without."""
  loss1, g1, w1, _ = step(1, None)
  loss, g, w, _ = step(1, None, checkpoint=True)
  assert loss == pytest.approx(loss1, abs=1e-6)
  for k in w1:
    np.testing.assert_allclose(g[k], g1[k], atol=1e-6 * np.abs(g1[k]).max(), rtol=0, err_msg=k)
    np.testing.assert_allclose(w[k], w1[k], atol=1e-6, rtol=0, err_msg=k)

# ----- memory per device -----

def test_memory_estimate_matches_measured_persistent_memory(step):
  """What stays allocated on the second device after a tp step (weights, gradients, AdamW state, as counted by
  tinygrad's allocator) is memory_per_device's figure, plus a few KB (lr, bias-correction powers, batch, loss,
  small scratch buffers)."""
  *_, held = step(2, "tp")
  est = memory.memory_per_device(CFG, 2, "tp", batch=4, seq_len=8)
  # FeedForward's contiguous_backward gives the gradients of w1(x) and w3(x) buffers of their own, which tinygrad
  # still references after the step (until the next one): at most two (batch, seq, hidden) fp32 tensors per layer
  swiglu_grads = CFG.n_layers * 2 * 4 * 8 * CFG.ffn_hidden * 4
  assert 0 <= held["CPU:1"] - (est["weights"] + est["grads"] + est["adam"]) <= 0.05 * held["CPU:1"] + swiglu_grads

def test_memory_per_device_splits_as_documented():
  a = llama.PRESETS["65B"]
  one = memory.memory_per_device(a, 1, "dp", batch=8, seq_len=2048, dtype=dtypes.bfloat16)
  dp = memory.memory_per_device(a, 8, "dp", batch=8, seq_len=2048, dtype=dtypes.bfloat16)
  tp = memory.memory_per_device(a, 8, "tp", batch=8, seq_len=2048, dtype=dtypes.bfloat16)
  rope = a.max_seq_len * 2 * a.head_dim * 4
  assert one["weights"] == 2 * a.num_params() + rope and one["grads"] == 2 * a.num_params()
  assert one["adam"] == 12 * a.num_params()                          # fp32 m, v and master copy of bf16 weights
  assert dp["weights"] == one["weights"] and dp["activations"] * 8 == one["activations"]
  copied = a.n_layers * 2 * a.dim + a.dim                            # norm gains live on every device
  assert ((tp["weights"] - rope) // 2 - copied) * 8 == a.num_params() - copied
  assert tp["grads"] - (tp["weights"] - rope) == 2 * a.vocab_size * a.dim * 7 // 8   # the whole embedding gradient
  assert tp["activations_per_token"] < dp["activations_per_token"] and tp["activations"] > dp["activations"]
  ckpt = memory.memory_per_device(a, 8, "dp", batch=8, seq_len=2048, dtype=dtypes.bfloat16, checkpoint_activations=True)
  assert ckpt["activations"] < dp["activations"] / 10
  table = memory.memory_table()
  assert all(f"| {p} | {m} | 8 |" in table for p in ("7B", "13B", "33B", "65B") for m in ("dp", "tp"))
  assert "n_heads (52) to be divisible by 8" in table                # 33B has 52 heads
