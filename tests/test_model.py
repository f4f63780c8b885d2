"""Property tests of llama.py's math against the independent numpy reference (tests/reference.py), issue 2.

tinygrad compiles a kernel for every new shape (and every new constant such as eps), so shapes and configs come from
small fixed sets and hypothesis varies values, weights, tokens, positions, theta and split points freely.
Numeric comparisons are at float32 tolerance: max|diff| <= 1e-4 * max|ref|.
"""
import functools
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from tinygrad import Tensor, TinyJit, UOp, nn
import llama
import reference as ref

def assert_close(out, expected, rtol=1e-4):
  out, expected = np.asarray(out, np.float64), np.asarray(expected, np.float64)
  assert out.shape == expected.shape, (out.shape, expected.shape)
  err, scale = np.abs(out - expected).max(), np.abs(expected).max()
  assert err <= rtol * scale, f"max|diff| {err:.3g} > {rtol:g} * max|ref| {scale:.3g}"

def floats(lo: float, hi: float):
  """float32 values; magnitudes below 1e-6 become 0, because the CPU flushes float32 subnormals (x·cos of 1e-45
  is 0)."""
  return st.floats(lo, hi, width=32).map(lambda v: 0.0 if abs(v) < 1e-6 else v)
seeds = st.integers(0, 2**32 - 1)

# ***** RMSNorm (§2.2 pre-normalization) *****

NORM_SHAPE = (3, 5, 24)
TINY_EPS = 1e-10   # tiny next to mean(x²), so scale invariance and unit RMS hold to float32 precision

@functools.cache
def rmsnorm(eps: float) -> llama.RMSNorm: return llama.RMSNorm(NORM_SHAPE[-1], eps=eps)

def run_rmsnorm(x, weight, eps):
  norm = rmsnorm(eps)
  norm.weight = Tensor(np.asarray(weight, np.float32))
  return norm(Tensor(np.asarray(x, np.float32))).numpy()

@settings(max_examples=40)
@given(x=arrays(np.float32, NORM_SHAPE, elements=floats(-100, 100)),
       w=arrays(np.float32, NORM_SHAPE[-1:], elements=floats(-3, 3)),
       eps=st.sampled_from([1e-5, TINY_EPS]))
def test_rmsnorm_matches_reference(x, w, eps):
  assert_close(run_rmsnorm(x, w, eps), ref.rmsnorm(x, w, eps))

@settings(max_examples=40)
@given(seed=seeds, c=st.floats(1e-2, 1e3))
def test_rmsnorm_scale_invariant(seed, c):
  rng = np.random.default_rng(seed)
  x, w = rng.standard_normal(NORM_SHAPE).astype(np.float32), (1 + rng.standard_normal(NORM_SHAPE[-1])).astype(
    np.float32)
  assert_close(run_rmsnorm(x * np.float32(c), w, TINY_EPS), run_rmsnorm(x, w, TINY_EPS))

@settings(max_examples=40)
@given(seed=seeds, scale=st.floats(1e-2, 1e3))
def test_rmsnorm_unit_weight_gives_unit_rms(seed, scale):
  x = (scale * np.random.default_rng(seed).standard_normal(NORM_SHAPE)).astype(np.float32)
  y = run_rmsnorm(x, np.ones(NORM_SHAPE[-1]), TINY_EPS).astype(np.float64)
  np.testing.assert_allclose(np.sqrt(np.mean(y * y, axis=-1)), 1.0, atol=1e-5)

# ***** rotary embeddings (§2.2) *****

ROPE_SHAPE = (2, 6, 3, 8)   # batch, seq, heads, head_dim
positions_st = st.lists(st.integers(0, 4096), min_size=ROPE_SHAPE[1], max_size=ROPE_SHAPE[1])
thetas = st.floats(100.0, 1e6)

def run_rope(x, positions, theta):
  """llama.apply_rotary_emb at arbitrary positions: rows of llama's own table, as a fresh buffer of one fixed shape."""
  table = llama.precompute_freqs(ROPE_SHAPE[-1], max(positions) + 1, theta).numpy()[list(positions)]
  return llama.apply_rotary_emb(Tensor(np.asarray(x, np.float32)), Tensor(table)).numpy()

@settings(max_examples=40)
@given(x=arrays(np.float32, ROPE_SHAPE, elements=floats(-10, 10)), positions=positions_st, theta=thetas)
def test_rope_matches_reference(x, positions, theta):
  assert_close(run_rope(x, positions, theta), ref.rope(x, positions, theta))

@settings(max_examples=30)
@given(seed=seeds, positions=positions_st, theta=thetas)
def test_rope_preserves_norms(seed, positions, theta):
  x = np.random.default_rng(seed).standard_normal(ROPE_SHAPE).astype(np.float32)
  np.testing.assert_allclose(np.linalg.norm(run_rope(x, positions, theta), axis=-1),
                             np.linalg.norm(x, axis=-1),
                             rtol=1e-5)

@settings(max_examples=25)
@given(x=arrays(np.float32, ROPE_SHAPE, elements=floats(-10, 10)), theta=thetas)
def test_rope_position_zero_is_identity(x, theta):
  np.testing.assert_allclose(run_rope(x, [0] * ROPE_SHAPE[1], theta), x, rtol=1e-6, atol=1e-6)

@settings(max_examples=40)
@given(seed=seeds, m=st.integers(0, 2048), n=st.integers(0, 2048), shift=st.integers(0, 2048), theta=thetas)
def test_rope_score_depends_only_on_relative_position(seed, m, n, shift, theta):
  # sequence slots 0..3 hold q, k, q, k at positions m, n, m+shift, n+shift; slots 4, 5 are filler
  rng = np.random.default_rng(seed)
  q, k = rng.standard_normal((2, ROPE_SHAPE[0], ROPE_SHAPE[2], ROPE_SHAPE[3])).astype(np.float32)
  x = np.stack([q, k, q, k, q, k], axis=1)
  r = run_rope(x, [m, n, m + shift, n + shift, 0, 1], theta).astype(np.float64)
  before, after = np.sum(r[:, 0] * r[:, 1], -1), np.sum(r[:, 2] * r[:, 3], -1)
  np.testing.assert_allclose(after, before, atol=1e-4 * np.abs(q).max() * np.abs(k).max() * ROPE_SHAPE[3])

# ***** SwiGLU (§2.2) *****

FFN_DIM, FFN_HIDDEN, FFN_X = 24, 40, (2, 5, 24)

@functools.cache
def feed_forward() -> llama.FeedForward: return llama.FeedForward(FFN_DIM, FFN_HIDDEN)

@settings(max_examples=30)
@given(seed=seeds, x=arrays(np.float32, FFN_X, elements=floats(-10, 10)))
def test_swiglu_matches_reference(seed, x):
  rng = np.random.default_rng(seed)
  w = {
    n: (rng.standard_normal(s) / np.sqrt(s[1])).astype(np.float32)
    for n, s in
    {"w1.weight": (FFN_HIDDEN, FFN_DIM), "w2.weight": (FFN_DIM, FFN_HIDDEN), "w3.weight": (FFN_HIDDEN,
                                                                                           FFN_DIM)}.items()
  }
  ffn = feed_forward()
  nn.state.load_state_dict(ffn, {k: Tensor(v) for k, v in w.items()}, verbose=False)
  assert_close(ffn(Tensor(x)).numpy(), ref.swiglu(x, w["w1.weight"], w["w2.weight"], w["w3.weight"]))

def test_hidden_size_rule_paper_dims():
  # §2.2 "2/3·4d" rounded up to a multiple of 256: Meta's 7B/13B/33B/65B FFN sizes
  assert [llama.PRESETS[n].ffn_hidden for n in ("7B", "13B", "33B", "65B")] == [11008, 13824, 17920, 22016]
  assert [ref.ffn_hidden(d) for d in (4096, 5120, 6656, 8192)] == [11008, 13824, 17920, 22016]

@pytest.mark.parametrize(
  "dim, multiple_of, mult, hidden",
  [
    (8192, 4096, 1.3, 28672), # Llama 2 70B params.json: ffn_dim_multiplier 1.3, multiple_of 4096, its w1 has 28672 rows
    (4096, 1024, 1.3, 14336), # Llama 3 8B: ffn_dim_multiplier 1.3, multiple_of 1024
    (5120, 256, None, 13824), # LLaMA 13B, rounding 13653 up
    (288, 32, None, 768), # Karpathy's stories15M (llama2.c): hidden_dim 768
  ])
def test_hidden_size_rule_gives_released_sizes(dim, multiple_of, mult, hidden):
  """The released checkpoints' FFN sizes, read off their weight shapes, not recomputed with the rule."""
  assert llama.ModelArgs(dim=dim,
                         n_heads=dim // 64 if dim % 64 == 0 else 6,
                         multiple_of=multiple_of,
                         ffn_dim_multiplier=mult).ffn_hidden == hidden

def test_explicit_hidden_size_overrides_the_rule():
  assert llama.ModelArgs(dim=64, n_heads=8, hidden_dim=172).ffn_hidden == 172 # stories260K's 172 is no multiple of 256

# ***** parameter counts (Table 2) *****

def test_paper_preset_parameter_counts():
  counts = {n: llama.PRESETS[n].num_params() for n in ("7B", "13B", "33B", "65B")}
  assert counts == {"7B": 6_738_415_616, "13B": 13_015_864_320, "33B": 32_528_943_616, "65B": 65_285_660_672}
  for n in counts:   # the same counts from the reference's list of Meta's weight shapes
    assert counts[n] == sum(int(np.prod(s)) for s in ref.weight_shapes(llama.PRESETS[n]).values())

@settings(max_examples=200)
@given(head_dim=st.integers(1, 64), n_kv=st.integers(1, 8), rep=st.integers(1, 4), n_layers=st.integers(1, 40),
       vocab=st.integers(1, 70000), multiple_of=st.sampled_from([1, 32, 256]), tie=st.booleans())
def test_num_params_matches_weight_shapes(head_dim, n_kv, rep, n_layers, vocab, multiple_of, tie):
  args = llama.ModelArgs(dim=2 * head_dim * n_kv * rep, n_layers=n_layers, n_heads=n_kv * rep, n_kv_heads=n_kv,
                         vocab_size=vocab, multiple_of=multiple_of, tie_embeddings=tie)
  assert args.num_params() == sum(int(np.prod(s)) for s in ref.weight_shapes(args).values())

# ***** whole model on tiny configs *****

# the fixed set of shapes (each new one costs seconds of kernel compilation): GQA; plain MHA of the same size; one
# K/V head for six query heads with a tied output, ffn_dim_multiplier and another eps
CONFIGS = {
  "gqa": dict(dim=32, n_heads=4, n_kv_heads=2, vocab_size=61, multiple_of=16, norm_eps=1e-5),
  "mha": dict(dim=32, n_heads=4, n_kv_heads=4, vocab_size=61, multiple_of=16, norm_eps=1e-5),
  "tied": dict(dim=48,
               n_heads=6,
               n_kv_heads=1,
               vocab_size=61,
               multiple_of=32,
               ffn_dim_multiplier=1.3,
               norm_eps=1e-6,
               tie_embeddings=True),
}
B, T, CTX = 3, 6, 16
token_batches = arrays(np.int64, (B, T), elements=st.integers(0, 60))

def make_args(name: str, **kw) -> llama.ModelArgs:
  return llama.ModelArgs(**{"n_layers": 2, "max_seq_len": CTX, **CONFIGS[name], **kw})

def load(model: llama.Transformer, weights: dict[str, np.ndarray]) -> llama.Transformer:
  Tensor.realize(*nn.state.load_state_dict(
    model, {k: Tensor(v)
            for k, v in weights.items()}, strict=False, verbose=False, realize=False))
  return model

def make_model(args: llama.ModelArgs, weights: dict[str, np.ndarray] | None = None) -> llama.Transformer:
  """A model of this config without the random init (its placeholders are replaced by the weights given, if any)."""
  model = llama.Transformer(args, init=False)
  return load(model, weights) if weights else model

def logits(model: llama.Transformer, tokens: np.ndarray) -> np.ndarray:
  """The plain one-shot forward (no cache)."""
  model.drop_cache()
  return model(Tensor(tokens)).numpy()

class Forward:
  """The same one-shot forward of a model whose weights never change again, captured by TinyJit once per input shape:
  a replay skips tinygrad's per-call scheduling, which would otherwise dominate the suite's time.
  test_full_forward_jit_equals_plain checks it against the plain call."""
  def __init__(self, model: llama.Transformer): self.model, self.jits = model, {}
  def __call__(self, tokens: np.ndarray) -> np.ndarray:
    jit = self.jits.setdefault(tokens.shape, TinyJit(lambda t: self.model(t).realize()))
    return jit(Tensor(tokens).realize()).numpy()

@pytest.fixture(scope="session")
def gqa():
  """One 2-layer GQA model (theta 500 through ModelArgs) with reference random weights, and its jitted forward."""
  args = make_args("gqa", rope_theta=500.0)
  weights = ref.random_weights(args, seed=1)
  model = make_model(args, weights)
  return args, weights, model, Forward(model)

@functools.cache
def config_model(name: str) -> llama.Transformer:
  """One model per config, shared by the tests that only need its shapes or load their own weights."""
  return make_model(make_args(name))

def test_init_from_scratch():
  # nanoGPT / llama2.c: N(0, 0.02) matrices, residual projections (wo, w2) at 0.02/sqrt(2·n_layers), unit norm gains;
  # the same seed gives the same model
  args = make_args("gqa")
  Tensor.manual_seed(5)
  first = {k: v.numpy() for k, v in nn.state.get_state_dict(llama.Transformer(args)).items() if k != "freqs"}
  Tensor.manual_seed(5)
  again = {k: v.numpy() for k, v in nn.state.get_state_dict(llama.Transformer(args)).items() if k != "freqs"}
  assert first.keys() == again.keys() and all(np.array_equal(first[k], again[k]) for k in first)
  groups = {"norm": [], "residual": [], "other": []}
  for k, v in first.items():
    groups["norm" if v.ndim == 1 else "residual" if k.endswith(("wo.weight", "w2.weight")) else "other"].append(
      v.ravel())
  norm, residual, other = (np.concatenate(g).astype(np.float64) for g in groups.values())
  assert np.all(norm == 1)
  for values, std in ((other, 0.02), (residual, 0.02 / np.sqrt(2 * args.n_layers))):
    assert abs(values.mean()) < 0.1 * std and abs(values.std() / std - 1) < 0.05, (values.mean(), values.std(), std)

@pytest.mark.parametrize("name", CONFIGS)
def test_state_dict_has_meta_names(name):
  args = make_args(name)
  sd = {k: v for k, v in nn.state.get_state_dict(config_model(name)).items() if k != "freqs"}
  assert {k: v.shape for k, v in sd.items()} == ref.weight_shapes(args)
  assert sum(v.numel() for v in sd.values()) == args.num_params()

def test_model_matches_reference_fixed(gqa):
  args, weights, model, _ = gqa
  tokens = np.random.default_rng(3).integers(0, 61, (B, T))
  assert_close(logits(model, tokens), ref.forward(weights, args, tokens))

def test_full_forward_jit_equals_plain(gqa):
  _, _, model, forward = gqa
  for seed in range(4):   # eager, capture, then two replays
    tokens = np.random.default_rng(seed).integers(0, 61, (B, T))
    assert_close(forward(tokens), logits(model, tokens), rtol=1e-6)

@settings(max_examples=25)
@given(name=st.sampled_from(list(CONFIGS)), theta=thetas, seed=seeds, tokens=token_batches)
def test_model_matches_reference(name, theta, seed, tokens):
  # one model per shape; each example loads fresh weights and the rotary table for its theta through nn.state
  args = make_args(name, rope_theta=theta)
  weights = ref.random_weights(args, seed)
  model = config_model(name)
  rotary = llama.precompute_freqs(args.head_dim, model.freqs.shape[0], theta)
  load(model, {**weights, "freqs": rotary.numpy()})
  assert_close(logits(model, tokens), ref.forward(weights, args, tokens))

@settings(max_examples=25)
@given(tokens=token_batches, t=st.integers(0, T - 2), change=st.integers(1, 60))
def test_attention_is_causal(gqa, tokens, t, change):
  forward = gqa[3]
  changed = tokens.copy()
  changed[:, t + 1:] = (changed[:, t + 1:] + change) % 61   # every later token differs
  a, b = forward(tokens), forward(changed)
  np.testing.assert_allclose(b[:, :t + 1], a[:, :t + 1], rtol=0, atol=1e-6 * np.abs(a).max())
  assert not np.allclose(b[:, t + 1:], a[:, t + 1:], atol=1e-3)   # the change is visible where it may be

@pytest.fixture(scope="session")
def mha_attention():
  args = make_args("mha")
  return args, llama.Attention(args)

@settings(max_examples=25)
@given(seed=seeds, start=st.integers(0, 2 * CTX - T), theta=thetas)
def test_attention_mha_matches_plain_multihead(mha_attention, seed, start, theta):
  # n_kv_heads == n_heads: the block is Vaswani et al.'s multi-head attention (here at positions start..start+T-1)
  args, attn = mha_attention
  rng = np.random.default_rng(seed)
  w = {
    k.removeprefix("layers.0.attention."): v
    for k, v in ref.random_weights(args, seed).items() if ".attention." in k
  }
  nn.state.load_state_dict(attn, {k: Tensor(v) for k, v in w.items()}, strict=False, verbose=False)
  x = rng.standard_normal((B, T, args.dim)).astype(np.float32)
  freqs = Tensor(llama.precompute_freqs(args.head_dim, 2 * CTX, theta).numpy()[start:start + T])
  out = attn(Tensor(x), 0, freqs).numpy()
  expected = ref.attention(x, w["wq.weight"], w["wk.weight"], w["wv.weight"], w["wo.weight"], args.n_heads, None, theta,
                           start)
  assert_close(out, expected)

@pytest.fixture(scope="session")
def mha_twin(gqa):
  """The jitted forward of an MHA model whose K/V projections are the GQA model's, each K/V head repeated for the
  query heads it serves (Meta's repeat_kv: query head h reads K/V head h // (n_heads / n_kv_heads))."""
  args, weights, _, _ = gqa
  rep, hd = args.n_heads // args.n_kv_heads, args.head_dim
  twin = {k: (np.repeat(v.reshape(args.n_kv_heads, hd, -1), rep, axis=0).reshape(args.n_heads * hd, -1)
              if k.endswith(("attention.wk.weight", "attention.wv.weight")) else v) for k, v in weights.items()}
  return Forward(make_model(make_args("mha", rope_theta=args.rope_theta), twin))

@settings(max_examples=25)
@given(tokens=token_batches)
def test_gqa_equals_mha_with_repeated_kv_heads(gqa, mha_twin, tokens):
  assert_close(gqa[3](tokens), mha_twin(tokens))

@settings(max_examples=25)
@given(tokens=token_batches)
def test_batch_rows_are_independent(gqa, tokens):
  forward = gqa[3]
  batched = forward(tokens)
  for b in range(B): assert_close(batched[b:b + 1], forward(tokens[b:b + 1]))

# ***** KV cache decoding *****

@pytest.fixture(scope="session")
def decoder(gqa):
  """A second instance of the GQA model (same weights) that keeps a KV cache; the cache holds more rows than used."""
  args, weights, _, _ = gqa
  return make_model(args, weights)

def start_at(pos: int, length: int) -> UOp:
  """A symbolic start position: one compiled graph per chunk length serves every position."""
  return UOp.variable("start_pos", 0, CTX - length).bind(pos)

def test_kv_cache_token_by_token_and_in_chunks(gqa, decoder):
  tokens = np.random.default_rng(7).integers(0, 61, (B, T))
  full = logits(gqa[2], tokens)
  decoder.init_cache(max_batch=B + 1, max_context=CTX)
  steps = [decoder(Tensor(tokens[:, i:i + 1]), start_at(i, 1)).realize().numpy() for i in range(T)]
  assert_close(np.concatenate(steps, axis=1), full)
  decoder.init_cache(max_batch=B + 1, max_context=CTX) # int positions: prefill 3, then a chunk of 3 on top of the cache
  chunks = [decoder(Tensor(tokens[:, a:b]), a).realize().numpy() for a, b in ((0, 3), (3, 6))]
  assert_close(np.concatenate(chunks, axis=1), full)

@settings(max_examples=25)
@given(tokens=token_batches, cuts=st.sets(st.integers(1, T - 1), max_size=3))
def test_kv_cache_chunks_from_any_split(gqa, decoder, tokens, cuts):
  bounds = [0, *sorted(cuts), T]
  decoder.init_cache(max_batch=B + 1, max_context=CTX)
  out = [decoder(Tensor(tokens[:, a:b]), start_at(a, b - a)).realize().numpy() for a, b in zip(bounds, bounds[1:])]
  assert_close(np.concatenate(out, axis=1), gqa[3](tokens))

def test_tinyjit_decode_step_with_symbolic_start_pos(gqa, decoder):
  tokens = np.random.default_rng(11).integers(0, 61, (B, T))
  decoder.init_cache(max_batch=B + 1, max_context=CTX)
  step = TinyJit(lambda tok, start_pos: decoder(tok, start_pos).realize())
  got = [decoder(Tensor(tokens[:, :2]), 0).realize().numpy()]             # prefill outside the JIT
  for i in range(2, T):                                                   # runs eagerly, captures, then replays
    tok = Tensor(tokens[:, i:i + 1]).realize()                            # a fresh input buffer every step
    got.append(step(tok, start_at(i, 1)).numpy())
  assert step.captured is not None
  assert_close(np.concatenate(got, axis=1), logits(gqa[2], tokens))
