"""Checkpoints in and out (issue 3): every format llama.load reads, built here from known weights by independent
writers (numpy, the safetensors package, a hand-made torch zip and GGUF), and the real-weights golden tests.

Small models share one config family so tinygrad compiles few distinct kernels; real weights come from ../shared/fixtures.
"""
import json, pathlib, struct
import numpy as np
import pytest
from tinygrad import Tensor, UOp, dtypes, nn
import llama
import reference as ref

def small_args(**kw) -> llama.ModelArgs:
  base = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=48, norm_eps=1e-5, max_seq_len=32)
  return llama.ModelArgs(**{**base, **kw})

def model_from(weights: dict[str, np.ndarray], args: llama.ModelArgs) -> llama.Transformer:
  """A Transformer carrying exactly these numpy weights (the 'source model' each format is written from)."""
  model = llama.Transformer(args)
  nn.state.load_state_dict(model, {k: Tensor(v) for k, v in weights.items()}, strict=False, verbose=False)
  return model

def weights_of(model: llama.Transformer) -> dict[str, np.ndarray]:
  return {k: v.numpy() for k, v in nn.state.get_state_dict(model).items() if k != "freqs" and "cache_kv" not in k}

TOKENS = [[3, 17, 5, 60, 1, 42, 9]]
def logits(model: llama.Transformer) -> np.ndarray: return model(Tensor(TOKENS)).numpy()

def assert_same_weights(model: llama.Transformer, expected: dict[str, np.ndarray]):
  got = weights_of(model)
  assert sorted(got) == sorted(expected)
  for k, v in expected.items():
    assert got[k].dtype == v.dtype, (k, got[k].dtype, v.dtype)
    np.testing.assert_array_equal(got[k], v, err_msg=k)

def assert_close(out, expected, rtol=1e-4):
  err, scale = np.abs(np.asarray(out, np.float64) - expected).max(), np.abs(expected).max()
  assert err <= rtol * scale, f"max|diff| {err:.3g} > {rtol:g} * max|ref| {scale:.3g}"

# ***** our own format *****

@pytest.mark.parametrize("tied,half", [(False, False), (True, True)])
def test_own_format_round_trip_is_exact(tmp_path, tied, half):
  args = small_args(tie_embeddings=tied, rope_theta=5e5)
  w = ref.random_weights(args, seed=1)
  if half: w = {k: v.astype(np.float16) for k, v in w.items()}
  source = model_from(w, args)
  llama.save(source, tmp_path / "ck")
  assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]                     # the temp dir is gone
  model, tok = llama.load(tmp_path / "ck")
  assert model.args == args and tok is None
  assert_same_weights(model, w)
  np.testing.assert_array_equal(logits(model), logits(source))

def test_save_into_existing_dir_keeps_other_files(tmp_path):
  args = small_args()
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "train_state.safetensors").write_bytes(b"optimizer")   # what train.py keeps beside the model
  w1, w2 = ref.random_weights(args, seed=2), ref.random_weights(args, seed=3)
  llama.save(model_from(w1, args), tmp_path / "out")
  llama.save(model_from(w2, args), tmp_path / "out")
  assert (tmp_path / "out" / "train_state.safetensors").read_bytes() == b"optimizer"
  assert_same_weights(llama.load(tmp_path / "out")[0], w2)
  assert [p.name for p in tmp_path.iterdir()] == ["out"]

# ***** Karpathy's llama2.c .bin, written here in both layouts from known weights *****

def write_llama2c(path: pathlib.Path, w: dict[str, np.ndarray], args: llama.ModelArgs, version: int):
  L, tied = args.n_layers, "output.weight" not in w
  stack = lambda kind: np.stack([w[f"layers.{i}.{kind}.weight"] for i in range(L)])
  att, ffn = (lambda n: stack(f"attention.{n}")), (lambda n: stack(f"feed_forward.{n}"))
  cfg = (args.dim, args.ffn_hidden, L, args.n_heads, args.n_kv_heads, args.vocab_size, args.max_seq_len)
  if version == 0:
    header = struct.pack("<7i", *cfg[:5], args.vocab_size if tied else -args.vocab_size, cfg[6])
    freq_cis = np.full((2, args.max_seq_len, args.head_dim // 2), 7.0)            # unused by loaders: any value
    arrays = [w["tok_embeddings.weight"], stack("attention_norm"), att("wq"), att("wk"), att("wv"), att("wo"),
              stack("ffn_norm"), ffn("w1"), ffn("w2"), ffn("w3"), w["norm.weight"], freq_cis]
  else:
    header = struct.pack("<Ii7iB", 0x616B3432, 1, *cfg, int(tied)).ljust(256, b"\0")
    arrays = [stack("attention_norm"), stack("ffn_norm"), w["norm.weight"], w["tok_embeddings.weight"],
              att("wq"), att("wk"), att("wv"), att("wo"), ffn("w1"), ffn("w2"), ffn("w3")]
  if not tied: arrays.append(w["output.weight"])
  path.write_bytes(header + b"".join(np.asarray(a, np.float32).tobytes() for a in arrays))

@pytest.mark.parametrize("version,tied", [(0, True), (0, False), (1, True), (1, False)])
def test_llama2c_layouts_load_exactly(tmp_path, version, tied):
  args = small_args(tie_embeddings=tied)
  w = ref.random_weights(args, seed=4)
  write_llama2c(tmp_path / "m.bin", w, args, version)
  model, tok = llama.load(tmp_path / "m.bin")
  assert tok is None and model.args.tie_embeddings == tied and model.args.n_kv_heads == 2
  assert_same_weights(model, w)
  assert_close(logits(model), ref.forward(w, args, TOKENS))

# ***** real weights: stories260K (llama2.c, GQA 8/4, tied) *****

@pytest.fixture(scope="module")
def stories(fixtures):
  return llama.load(fixtures / "stories260K" / "stories260K.bin")[0]

def test_stories260K_legacy_and_v1_hold_the_same_weights(stories, fixtures):
  v1, _ = llama.load(fixtures / "stories260K" / "stories260K_v1.bin")
  assert v1.args == stories.args
  assert_same_weights(v1, weights_of(stories))

def test_stories260K_first_logits_match_numpy_reference(stories):
  a = stories.args
  assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_hidden, a.tie_embeddings) == (64, 5, 8, 4, 512, 172, True)
  toks = [[1, 403, 407, 261, 378]]     # BOS "Once upon a time"
  out = stories(Tensor(toks)).numpy()
  assert_close(out, ref.forward(weights_of(stories), a, toks))
  assert out[0, 0].argmax() == 403     # after BOS the model starts its story with "Once"

def greedy(model: llama.Transformer, prompt: list[int], steps: int) -> list[int]:
  """Greedy decoding with the KV cache: prefill the prompt, then one token per call at a bound symbolic position,
  so every step reuses the same kernels."""
  ctx = len(prompt) + steps
  model.init_cache(1, ctx)
  try:
    nxt = int(model(Tensor([prompt]), 0)[0, -1].argmax().item())
    out = [nxt]
    for pos in range(len(prompt), ctx - 1):
      start = UOp.variable("start_pos", 1, ctx - 1).bind(pos)
      nxt = int(model(Tensor([[nxt]]), start)[0, -1].argmax().item())
      out.append(nxt)
    return out
  finally: model.drop_cache()

STORIES_REFERENCE = """Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.
Lily's mom said, "Lily, let's go to the park." Lily was sad and didn't know what to do. She said, "I want to play with your ball, but I can't find it."
Lily was sad and didn't know what to do. She said, "I'm sorry, Lily. I didn't know what to do."
Lily didn't want to help her mom, so she"""

def test_stories260K_greedy_200_tokens_print_llama2c_reference(stories, fixtures):
  import sentencepiece
  ids = greedy(stories, [1], 200)
  assert ids[:11] == [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]
  sp = sentencepiece.SentencePieceProcessor(model_file=str(fixtures / "stories260K" / "tok512.model"))
  assert sp.decode(ids) == STORIES_REFERENCE
