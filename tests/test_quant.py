"""Compact GGUF weights (issue 17, quant.py): each block format against a numpy dequantiser written from ggml's block
layouts (ggml-common.h, dequantize_row_* in ggml-quants.c) on random blocks, and against tinygrad's own GGUF loader;
the product reads the compact bytes in one kernel; checkpoint.load(compact=True) on a written GGUF and on SmolLM2's."""
import numpy as np
import pytest
from tinygrad import GlobalCounters, Tensor, dtypes
from tinygrad.llm.gguf import ggml_data_to_tensor
from tinygrad.nn.state import get_state_dict
import checkpoint, decode, engine, kernels, quant
import reference as ref
import test_load
from writers import small_args, write_gguf

# ***** numpy dequantisers, one per format, from the ggml block layouts *****

def f16(b: np.ndarray) -> np.ndarray: return b.copy().view(np.float16).astype(np.float32)[..., 0]

def ref_q8_0(b):   # d (f16), 32 × int8: w = d·q
  return f16(b[:, 0:2])[:, None] * b[:, 2:34].view(np.int8)

def ref_q4_0(b):   # d, 16 bytes: element j is the low nibble of byte j, element j+16 the high one; w = (q - 8)·d
  q = np.concatenate([b[:, 2:18] & 0xF, b[:, 2:18] >> 4], 1).astype(np.float32)
  return (q - 8) * f16(b[:, 0:2])[:, None]

def ref_q4_1(b):   # d, m, 16 bytes of nibbles as Q4_0: w = q·d + m
  q = np.concatenate([b[:, 4:20] & 0xF, b[:, 4:20] >> 4], 1).astype(np.float32)
  return q * f16(b[:, 0:2])[:, None] + f16(b[:, 2:4])[:, None]

def scale_min_k4(j: int, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:   # ggml's get_scale_min_k4
  if j < 4: return s[:, j] & 63, s[:, j + 4] & 63
  return (s[:, j + 4] & 0xF) | ((s[:, j - 4] >> 6) << 4), (s[:, j + 4] >> 4) | ((s[:, j] >> 6) << 4)

def ref_q4_k(b):   # d, dmin, 12 bytes of 6-bit scales and mins, 128 bytes: 4 chunks of 32 bytes, 64 weights each
  d, dmin, s, qs, y = f16(b[:, 0:2]), f16(b[:, 2:4]), b[:, 4:16], b[:, 16:144], []
  for c in range(4):
    (sc1, m1), (sc2, m2) = scale_min_k4(2 * c, s), scale_min_k4(2 * c + 1, s)
    q = qs[:, 32 * c:32 * c + 32]
    y += [(d * sc1)[:, None] * (q & 0xF) - (dmin * m1)[:, None], (d * sc2)[:, None] * (q >> 4) - (dmin * m2)[:, None]]
  return np.concatenate(y, 1)

def ref_q6_k(b):   # ql 128 bytes, qh 64, 16 int8 scales, d: two halves of 128 weights, each four quadrants of 32
  ql, qh, sc = b[:, 0:128].astype(np.int32), b[:, 128:192].astype(np.int32), b[:, 192:208].view(np.int8)
  d, y = f16(b[:, 208:210]), []
  for n in range(2):
    l, h, s = ql[:, 64 * n:64 * n + 64], qh[:, 32 * n:32 * n + 32], sc[:, 8 * n:8 * n + 8].astype(np.float32)
    quads = [(l[:, :32] & 0xF) | ((h & 3) << 4), (l[:, 32:] & 0xF) | (((h >> 2) & 3) << 4),
             (l[:, :32] >> 4) | (((h >> 4) & 3) << 4), (l[:, 32:] >> 4) | (((h >> 6) & 3) << 4)]
    for i, q in enumerate(quads):   # scale is[l/16 + 2i] over the quadrant's two halves of 16
      y.append(d[:, None] * np.repeat(s[:, 2 * i:2 * i + 2], 16, 1) * (q - 32))
  return np.concatenate(y, 1)

REFS = {8: ref_q8_0, 2: ref_q4_0, 3: ref_q4_1, 12: ref_q4_k, 14: ref_q6_k}
HALVES = {8: (0,), 2: (0,), 3: (0, 2), 12: (0, 2), 14: (208,)}   # byte offsets of each format's float16 fields

def random_blocks(ggml_type: int, rows: int, cols: int, seed: int) -> np.ndarray:
  """(rows · cols/block, block bytes) of random quants and sub-scales, with finite random float16 scales."""
  rng, (_, n, nbytes) = np.random.default_rng(seed), quant.FORMATS[ggml_type]
  b = rng.integers(0, 256, (rows * cols // n, nbytes), dtype=np.uint8)
  for off in HALVES[ggml_type]:
    b[:, off:off + 2] = rng.uniform(-0.05, 0.05, (len(b), 1)).astype(np.float16).view(np.uint8)
  return b

def layer(blocks: np.ndarray, ggml_type: int, shape: tuple[int, int], embedding=False) -> quant.QuantLinear:
  q = quant.Packed(Tensor(blocks.reshape(-1)), ggml_type, shape).module("CPU", embedding=embedding)
  Tensor.realize(*q.parts.values())   # as checkpoint.load does
  return q

FORMATS = pytest.mark.parametrize("ggml_type", list(quant.FORMATS), ids=lambda t: quant.FORMATS[t][0])

@FORMATS
def test_numpy_dequantiser_agrees_with_tinygrads_loader(ggml_type):
  b = random_blocks(ggml_type, 4, 512, seed=ggml_type)
  got = ggml_data_to_tensor(Tensor(b.reshape(-1)), b.shape[0] * quant.FORMATS[ggml_type][1], ggml_type).numpy()
  np.testing.assert_allclose(got.reshape(-1), REFS[ggml_type](b).reshape(-1), rtol=1e-6, atol=1e-7)

@FORMATS
def test_quant_linear_and_embedding_match_numpy(ggml_type):
  """The layer's output (prefill-shaped input and the decode matvec) is x @ Wᵀ of the numpy-dequantised W; the
  embedding gives W's rows."""
  rows, cols = 40, 512
  b = random_blocks(ggml_type, rows, cols, seed=10 + ggml_type)
  w = REFS[ggml_type](b).reshape(rows, cols).astype(np.float64)
  x = np.random.default_rng(1).standard_normal((1, 3, cols)).astype(np.float32)
  lin = layer(b, ggml_type, (rows, cols))
  np.testing.assert_allclose(lin(Tensor(x)).numpy(), x @ w.T, rtol=1e-4, atol=1e-4 * np.abs(w).max())
  lin.product = kernels.matvec_linear
  np.testing.assert_allclose(lin(Tensor(x[:, :1])).numpy(), x[:, :1] @ w.T, rtol=1e-4, atol=1e-4 * np.abs(w).max())
  idx = [[3, 0, 39, 3]]
  np.testing.assert_allclose(layer(b, ggml_type, (rows, cols), embedding=True)(Tensor(idx)).numpy(), w[idx], rtol=1e-6)

@FORMATS
def test_matvec_is_one_kernel_reading_the_compact_bytes(ggml_type):
  """One token's product is a single kernel whose traffic is the packed parts plus input and output: the unpacking is
  fused into the reduction, no float32 copy of the weight is written or read."""
  rows, cols = 256, 1024
  lin = layer(random_blocks(ggml_type, rows, cols, seed=3), ggml_type, (rows, cols))
  x = Tensor.randn(1, 1, cols).realize()
  compact = sum(p.nbytes() for p in lin.parts.values())
  GlobalCounters.reset()
  kernels.matvec_linear(lin.weight, x).realize()
  assert GlobalCounters.kernel_count == 1
  assert GlobalCounters.global_mem <= compact + 4 * (rows + cols) < rows * cols * 4 / 3

# ***** checkpoint.load(compact=True) *****

TYPES = {"token_embd": 8, "attn_q": 3, "attn_k": 8, "attn_v": 3, "attn_output": 8, "ffn_gate": 3, "ffn_up": 8,
         "output": 3}

def test_compact_load_gives_the_dequantised_models_outputs(tmp_path):
  """A written GGUF (Q8_0 and Q4_1 matrices, an F16 w2, an untied classifier) loaded compact: its layers are
  quant.QuantLinear holding the packed bytes; logits equal numpy's forward of the dequantised weights, and so do the
  greedy tokens decoded with the decode kernels. A compact model is not saved (its parts are no checkpoint)."""
  args = small_args()
  expected = write_gguf(tmp_path / "m.gguf", ref.random_weights(args, seed=5), args, TYPES)
  model, _ = checkpoint.load(tmp_path / "m.gguf", compact=True)
  a = model.layers[0].attention
  assert isinstance(model.tok_embeddings, quant.QuantEmbedding) and isinstance(model.output, quant.QuantLinear)
  assert a.wq.parts["qs"].dtype == dtypes.uint8 and model.layers[0].feed_forward.w2.weight.dtype == dtypes.float16
  tokens = [[3, 17, 5, 60, 1, 42, 9]]
  np.testing.assert_allclose(model(Tensor(tokens)).numpy(), ref.forward(expected, args, tokens), rtol=1e-3, atol=1e-3)
  got = test_load.greedy(kernels.use_decode_kernels(model, min_size=0), [1, 5, 9], 8)
  assert isinstance(a.wq, quant.QuantLinear) and a.wq.product is kernels.matvec_linear
  assert got == ref.forward(expected, args, [[1, 5, 9] + got])[0, 2:-1].argmax(-1).tolist()
  with pytest.raises(checkpoint.CheckpointError, match="compact"): checkpoint.save(model, tmp_path / "out")

def decode_step_kernels(model) -> int:
  """Kernels one decode step launches, the Generator as generate.py builds it, with the CPU graph off (a test before may
  have turned it on; its replay counts as one launch)."""
  was = engine.use_cpu_graph(False)
  try:
    gen = decode.Generator(model, 16, decode.Sampling(0.0), chunk=1)
    gen.feed([1, 5])
    gen.next()
    GlobalCounters.reset()
    gen.next()
    return GlobalCounters.kernel_count
  finally: engine.use_cpu_graph(was)

def test_compact_layers_of_one_format_are_one_product(tmp_path):
  """wq‖wk‖wv (all Q4_1) and w1‖w3 (both Q8_0) become FusedQuantParts of one compact matrix each: the state dict keeps
  its names, shapes and bytes, the greedy tokens are numpy's forward of the dequantised weights, and a decode step
  launches 3 kernels fewer per layer than the same model whose formats differ within those groups (above: unfused)."""
  args = small_args()
  one_format = TYPES | {"attn_k": 3, "ffn_gate": 8}
  expected = write_gguf(tmp_path / "m.gguf", ref.random_weights(args, seed=5), args, one_format)
  model, _ = checkpoint.load(tmp_path / "m.gguf", compact=True)
  before = {k: (v.shape, v.dtype, v.nbytes()) for k, v in get_state_dict(model).items()}
  got = test_load.greedy(kernels.use_decode_kernels(model, min_size=0), [1, 5, 9], 8)
  a, f = model.layers[0].attention, model.layers[0].feed_forward
  assert all(isinstance(l, kernels.FusedQuantPart) for l in (a.wq, a.wk, a.wv, f.w1, f.w3))
  assert {k: (v.shape, v.dtype, v.nbytes()) for k, v in get_state_dict(model).items()} == before
  assert got == ref.forward(expected, args, [[1, 5, 9] + got])[0, 2:-1].argmax(-1).tolist()
  write_gguf(tmp_path / "mixed.gguf", ref.random_weights(args, seed=5), args, TYPES)
  mixed, _ = checkpoint.load(tmp_path / "mixed.gguf", compact=True)
  assert decode_step_kernels(kernels.use_decode_kernels(mixed, min_size=0)) - decode_step_kernels(model) == \
    3 * args.n_layers

# numpy's greedy continuation (reference.forward of the dequantised weights, 16 steps) of "Once upon a time" by SmolLM2:
# ", the city of Nova Haven was a thriving metropolis, with towering skyscrapers and bustling"; test_load.py decodes it
GOLDEN = [28, 260, 2240, 282, 23324, 27108, 436, 253, 15114, 39228, 28, 351, 25854, 41658, 284, 14055]

def test_smollm2_compact_gives_the_golden_greedy_tokens(fixtures):
  """SmolLM2-135M (Q8_0 embedding, Q4_1 layers) loaded compact holds about the file's bytes, and its argmax after
  every prefix of prompt + GOLDEN is the next golden token (so greedy decoding gives GOLDEN), as numpy's forward of
  test_load.py's independent dequantisation says (checked here too, on the same teacher-forced sequence)."""
  path = fixtures / "smollm2-135m-instruct-q4_1.gguf"
  model, tok = checkpoint.load(path, compact=True)
  assert decode.weight_bytes(model) < 1.2 * path.stat().st_size
  seq = tok.encode("Once upon a time") + GOLDEN
  assert model(Tensor([seq[:-1]]))[0, 3:].argmax(-1).tolist() == GOLDEN
  kv, raw = test_load.read_gguf_numpy(path)
  inv = {g: m for m, g in test_load.GGUF_NAMES.items()}
  w = {}
  for k, v in raw.items():
    p = k.removesuffix(".weight").split(".")
    w[f"layers.{p[1]}.{inv[p[2]]}.weight" if p[0] == "blk" else f"{inv[p[0]]}.weight"] = v
  cfg = {"n_heads": kv["llama.attention.head_count"], "n_kv_heads": kv["llama.attention.head_count_kv"],
         "norm_eps": kv["llama.attention.layer_norm_rms_epsilon"], "rope_theta": kv["llama.rope.freq_base"]}
  assert ref.forward(w, cfg, np.array(seq[:-1]))[3:].argmax(-1).tolist() == GOLDEN

def test_compact_decode_step_reads_little_more_than_the_file(fixtures):
  """One decode step of SmolLM2 loaded compact, with the one-token kernels and the Generator as generate.py builds
  them, reads within 1.3× the GGUF file's bytes, not the float32 model's: nothing it reads was made into floats ahead of
  the step (the tied classifier reads the embedding's Q8_0 blocks; the float32 model reads 5.8× the file)."""
  path = fixtures / "smollm2-135m-instruct-q4_1.gguf"
  model, tok = checkpoint.load(path, compact=True)
  gen = decode.Generator(kernels.use_decode_kernels(model), 64, decode.Sampling(0.0), chunk=1)
  gen.feed(tok.encode("Once"))
  gen.next()
  GlobalCounters.reset()
  gen.next()
  assert GlobalCounters.global_mem < 1.3 * path.stat().st_size   # issue 17's bound; measured 1.20×
