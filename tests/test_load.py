"""Checkpoints in and out (issue 3): every format checkpoint.load reads, built from known weights by the independent
writers of tests/writers.py (numpy, the safetensors package, a hand-made torch zip and GGUF), and the real-weights
golden tests.

Small models share one config family so tinygrad compiles few distinct kernels; real weights come from
../shared/fixtures.
"""
import dataclasses, json, pathlib, struct
import numpy as np
import pytest
from tinygrad import Tensor, TinyJit, UOp, dtypes, nn
import llama
import reference as ref
import checkpoint
from writers import GGUF_NAMES, model_from, small_args, write_gguf, write_hf, write_llama2c, write_meta
import sentencepiece

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
  checkpoint.save(source, tmp_path / "ck")
  assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
  assert [p.name for p in tmp_path.iterdir()] == ["ck"]                     # the temp dir is gone
  model, tok = checkpoint.load(tmp_path / "ck")
  assert model.args == args and tok is None
  assert_same_weights(model, w)
  np.testing.assert_array_equal(logits(model), logits(source))

def test_save_into_existing_dir_keeps_other_files(tmp_path):
  args = small_args()
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "train_state.safetensors").write_bytes(b"optimizer")   # what train.py keeps beside the model
  w1, w2 = ref.random_weights(args, seed=2), ref.random_weights(args, seed=3)
  checkpoint.save(model_from(w1, args), tmp_path / "out")
  checkpoint.save(model_from(w2, args), tmp_path / "out")
  assert (tmp_path / "out" / "train_state.safetensors").read_bytes() == b"optimizer"
  assert_same_weights(checkpoint.load(tmp_path / "out")[0], w2)
  assert [p.name for p in tmp_path.iterdir()] == ["out"]

# ***** Karpathy's llama2.c .bin, written here in both layouts from known weights *****

@pytest.mark.parametrize("version,tied", [(0, True), (0, False), (1, True), (1, False)])
def test_llama2c_layouts_load_exactly(tmp_path, version, tied):
  args = small_args(tie_embeddings=tied)
  w = ref.random_weights(args, seed=4)
  write_llama2c(tmp_path / "m.bin", w, args, version)
  model, tok = checkpoint.load(tmp_path / "m.bin")
  assert tok is None and model.args.tie_embeddings == tied and model.args.n_kv_heads == 2
  assert_same_weights(model, w)
  assert_close(logits(model), ref.forward(w, args, TOKENS))

# ***** Meta's release: params.json + consolidated.NN.pth, written as torch zips without torch *****

@pytest.mark.parametrize("tied", [False, True])
def test_meta_two_shards_merge_back_half_precision_kept(tmp_path, tied):
  args = small_args(tie_embeddings=tied, rope_theta=5e5)
  w = {k: v.astype(np.float16) for k, v in ref.random_weights(args, seed=5).items()}
  write_meta(tmp_path / "7B", w, args, shards=2)
  model, tok = checkpoint.load(tmp_path / "7B")
  assert tok is None and model.args == dataclasses.replace(args,
                                                           max_seq_len=2048) # params.json does not say; Meta's default
  assert_same_weights(model, w)          # float16 stays float16, every shard back in place
  assert_close(logits(model), logits(model_from(w, args)))
  assert_close(logits(model), ref.forward(w, args, TOKENS), rtol=1e-2)

def test_meta_dtype_option_casts(tmp_path):
  args = small_args()
  w = ref.random_weights(args, seed=6)
  write_meta(tmp_path / "m", w, args, shards=1)
  model, _ = checkpoint.load(tmp_path / "m", dtype=dtypes.float16)
  assert_same_weights(model, {k: v.astype(np.float16) for k, v in w.items()})

# ***** Hugging Face: config.json + sharded safetensors, q/k permuted for rotate-half RoPE *****

@pytest.mark.parametrize("tied,shards", [(False, 2), (True, 3), (False, 1)])
def test_hf_undoes_rotate_half_permutation(tmp_path, tied, shards):
  args = small_args(tie_embeddings=tied, rope_theta=5e5, norm_eps=1e-6)
  w = ref.random_weights(args, seed=7)
  write_hf(tmp_path / "hf", w, args, shards)
  model, tok = checkpoint.load(tmp_path / "hf")
  assert tok is None and model.args == args
  assert_same_weights(model, w)
  assert_close(logits(model), ref.forward(w, args, TOKENS))

# ***** bfloat16 (the dtype of most real Meta and HF releases): uint16 arrays below are bf16 bit patterns *****

def bf16_bits(w: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: (v.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16) for k, v in w.items()}

def widen(bits: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  return {k: (v.astype(np.uint32) << 16).view(np.float32) for k, v in bits.items()}

@pytest.mark.parametrize("write", [write_hf, write_meta])
def test_bfloat16_kept_or_widened_exactly(tmp_path, write):
  args = small_args()
  bits = bf16_bits(ref.random_weights(args, seed=11))
  write(tmp_path / "m", bits, args, 2)
  # kept bfloat16 (CPU clang 14 cannot compute in bf16, so the bits are checked through our own format's file)
  model, _ = checkpoint.load(tmp_path / "m")
  assert all(v.dtype == dtypes.bfloat16 for k, v in nn.state.get_state_dict(model).items() if k in bits)
  checkpoint.save(model, tmp_path / "own")
  raw = (tmp_path / "own" / "model.safetensors").read_bytes()
  start = 8 + struct.unpack("<Q", raw[:8])[0]
  for k, h in json.loads(raw[8:start]).items():
    assert h["dtype"] == "BF16", k
    np.testing.assert_array_equal(np.frombuffer(raw[start + h["data_offsets"][0]:start + h["data_offsets"][1]],
                                                np.uint16).reshape(h["shape"]),
                                  bits[k],
                                  err_msg=k)
  # dtype= widens exactly: float32 holds every bfloat16
  for path in (tmp_path / "m", tmp_path / "own"):
    model, _ = checkpoint.load(path, dtype="float32")
    assert_same_weights(model, widen(bits))
  assert_close(logits(model), ref.forward(widen(bits), args, TOKENS))

# ***** GGUF, written by writers.write_gguf (F32, F16, Q8_0, Q4_1) *****

@pytest.mark.parametrize("tied", [False, True])
def test_gguf_dequantises_and_maps_names(tmp_path, tied):
  args = small_args(tie_embeddings=tied, rope_theta=5e5)
  w = ref.random_weights(args, seed=8)
  expected = write_gguf(tmp_path / "m.gguf", w, args, {"token_embd": 8, "attn_q": 3, "ffn_gate": 8, "output": 3})
  model, tok = checkpoint.load(tmp_path / "m.gguf")
  assert tok is None and model.args == args
  got = weights_of(model)
  assert got["layers.0.attention.wk.weight"].dtype == np.float16 and got[
    "norm.weight"].dtype == np.float32 # F16 stays half
  for k, v in expected.items():   # Q4_1 is d·q + m: allow an FMA's last bit
    np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  assert_close(logits(model), ref.forward(expected, args, TOKENS), rtol=1e-3)

def test_gguf_carries_its_tokenizer_and_dtype_option(tmp_path):
  args = small_args(tie_embeddings=True)
  pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(32, 61)
                                       ] + ["▁" + c for c in "abcdefghijklmnopqrstuvwxyz012"] + ["▁the", "he", "th"]
  assert len(pieces) == args.vocab_size
  tok_kv = {
    "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
    "tokenizer.ggml.scores": [float(-i) for i in range(64)],
    "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 29 + [1] * 32, "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2
  }
  write_gguf(tmp_path / "m.gguf", ref.random_weights(args, seed=9), args, {}, tok_kv)
  model, tok = checkpoint.load(tmp_path / "m.gguf", dtype="float32")
  assert all(v.dtype == np.float32 for v in weights_of(model).values())
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (64, 1, 2)
  assert tok.decode(tok.encode("the b")) == "the b"

# ***** broken input: one clear sentence, never a traceback from inside a parser *****

def broken_inputs(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
  """{case: (path, what the error must say)}"""
  args = small_args()
  w = ref.random_weights(args, seed=10)
  cases = {}
  def case(name: str, path: pathlib.Path, reason: str) -> pathlib.Path: return cases.setdefault(name, (path, reason))[0]
  def truncate(p: pathlib.Path, keep: float): p.write_bytes(p.read_bytes()[:int(p.stat().st_size * keep)])

  checkpoint.save(
    model_from(w, args),
    case("own: truncated safetensors", tmp_path / "own", "model.safetensors is truncated: .* ends at data offset"))
  truncate(tmp_path / "own" / "model.safetensors", 0.7)
  checkpoint.save(model_from(w, args), case("own: corrupt config", tmp_path / "own2", "config.json is not valid JSON"))
  (tmp_path / "own2" / "config.json").write_text("{not json")
  write_llama2c(
    case("llama2.c: truncated", tmp_path / "m.bin", "70,848 bytes but its llama2.c header describes 78,720 .truncated"),
    w, args, 1)
  truncate(tmp_path / "m.bin", 0.9)
  write_meta(
    case("meta: truncated shard", tmp_path / "meta",
         "consolidated.01.pth is not a usable PyTorch zip checkpoint: .*truncated"), w, args, 2)
  truncate(tmp_path / "meta" / "consolidated.01.pth", 0.5)
  write_meta(case("meta: no shards", tmp_path / "meta2", "no consolidated.NN.pth files"), w, args, 1)
  (tmp_path / "meta2" / "consolidated.00.pth").unlink()
  write_hf(
    case("hf: missing shard", tmp_path / "hf",
         "index.json lists the shard model-00002-of-00002.safetensors, which is missing"), w, args, 2)
  (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
  write_gguf(case("gguf: truncated", tmp_path / "t.gguf", "places tensor .* outside the file's .* bytes .truncated"), w,
             args, {})
  truncate(tmp_path / "t.gguf", 0.8)
  case("gguf: corrupt header", tmp_path / "c.gguf",
       "claims 1,099,511,627,776 metadata entries").write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 1 << 40) +
                                                                b"\xff" * 64)
  case("unknown file", tmp_path / "notes.txt", "not a checkpoint load.. knows").write_text(
    "just some text, not weights\n" * 10)
  case("empty dir", tmp_path / "empty", "a directory without config.json or params.json").mkdir()
  case("missing path", tmp_path / "nowhere", "does not exist")
  return cases

def test_broken_inputs_raise_one_clear_sentence(tmp_path):
  for case, (path, reason) in broken_inputs(tmp_path).items():
    with pytest.raises(checkpoint.CheckpointError, match=reason) as e: checkpoint.load(path)
    msg = str(e.value)
    assert msg.startswith(str(path)) and "\n" not in msg, (case, msg)
    # found by the reader's own checks: load()'s last-resort wrapper (which chains what it caught) never fired
    assert e.value.__cause__ is None, (case, msg)

# ***** real weights: stories260K (llama2.c, GQA 8/4, tied) *****

@pytest.fixture(scope="module")
def stories(fixtures):
  return checkpoint.load(fixtures / "stories260K" / "stories260K.bin")[0]

def test_stories260K_legacy_and_v1_hold_the_same_weights(stories, fixtures):
  v1, _ = checkpoint.load(fixtures / "stories260K" / "stories260K_v1.bin")
  assert v1.args == stories.args
  assert_same_weights(v1, weights_of(stories))

def test_stories260K_first_logits_match_numpy_reference(stories):
  a = stories.args
  assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_hidden, a.tie_embeddings) == (64, 5, 8, 4,
                                                                                                        512, 172, True)
  toks = [[1, 403, 407, 261, 378]]     # BOS "Once upon a time"
  out = stories(Tensor(toks)).numpy()
  assert_close(out, ref.forward(weights_of(stories), a, toks))
  assert out[0, 0].argmax() == 403     # after BOS the model starts its story with "Once"

def test_device_option_places_every_tensor(stories, fixtures):
  model, _ = checkpoint.load(fixtures / "stories260K" / "stories260K.bin", device="CPU:1") # a second virtual CPU device
  assert {t.device for t in nn.state.get_state_dict(model).values()} == {"CPU:1"}
  np.testing.assert_array_equal(model(Tensor([[1, 403]], device="CPU:1")).numpy(), stories(Tensor([[1, 403]])).numpy())

def greedy(model: llama.Transformer, prompt: list[int], steps: int) -> list[int]:
  """Greedy decoding with the KV cache, one token per call, the prompt too, through one TinyJit step at a bound
  symbolic position: a single compiled graph serves every position (scheduling a 30-layer graph costs seconds).
  Each call gets a fresh realized token buffer, as TinyJit needs."""
  ctx = len(prompt) + steps
  model.init_cache(1, ctx)
  step = TinyJit(lambda tok, start: model(tok, start)[:, -1].argmax(-1).realize())
  ids = list(prompt)
  try:
    for pos in range(ctx - 1):
      nxt = int(step(Tensor([ids[pos:pos+1]]).realize(), UOp.variable("start_pos", 0, ctx - 1).bind(pos)).item())
      if pos >= len(prompt) - 1: ids.append(nxt)
    return ids[len(prompt):]
  finally: model.drop_cache()


STORIES_REFERENCE = ('Once upon a time, there was a little girl named Lily. She loved to play outside in the '
                     'park. One day, she saw a big, red ball. She wanted to play with it, but it was too high.\n'
                     'Lily\'s mom said, "Lily, let\'s go to the park." Lily was sad and didn\'t know what to do. She '
                     'said, "I want to play with your ball, but I can\'t find it."\nLily was sad and didn\'t know '
                     'what to do. She said, "I\'m sorry, Lily. I didn\'t know what to do."\nLily didn\'t want to help '
                     'her mom, so she')

def test_stories260K_greedy_200_tokens_print_llama2c_reference(stories, fixtures):
  ids = greedy(stories, [1], 200)
  assert ids[:11] == [403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315]
  sp = sentencepiece.SentencePieceProcessor(model_file=str(fixtures / "stories260K" / "tok512.model"))
  assert sp.decode(ids) == STORIES_REFERENCE
  # and through the tokenizer load() attaches: llama2.c's own tokenizer.bin export of the same vocabulary
  _, tok = checkpoint.load(fixtures / "stories260K" / "stories260K.bin",
                           tokenizer=fixtures / "stories260K" / "tok512.bin")
  assert tok.decode(ids) == STORIES_REFERENCE

def test_own_format_carries_the_sentencepiece_tokenizer(stories, fixtures, tmp_path):
  spm = fixtures / "stories260K" / "tok512.model"
  _, tok = checkpoint.load(fixtures / "stories260K" / "stories260K.bin", tokenizer=spm)
  checkpoint.save(stories, tmp_path / "ck", tok)
  assert (tmp_path / "ck" / "tokenizer.model").read_bytes() == spm.read_bytes()
  model, tok2 = checkpoint.load(tmp_path / "ck")
  assert model.args == stories.args and tok2.encode("Once upon a time", bos=True) == [1, 403, 407, 261, 378]
  assert_same_weights(model, weights_of(stories))

# ***** real weights: SmolLM2-135M-Instruct, GGUF Q4_1 (30 layers, GQA 9/3, theta 1e5, tied, GPT-2 BPE) *****

def read_gguf_numpy(path: pathlib.Path) -> tuple[dict, dict[str, np.ndarray]]:
  """An independent GGUF reader for the test: metadata, and every tensor dequantised to float32 in numpy
  (F32, F16, Q8_0: w = d·q, Q4_1: w = d·q + m with low nibbles first), under llama.cpp's names."""
  buf, pos = memoryview(pathlib.Path(path).read_bytes()), 0
  def take(fmt: str):
    nonlocal pos
    v = struct.unpack_from("<" + fmt, buf, pos)[0]; pos += struct.calcsize(fmt)
    return v
  def string() -> str:
    nonlocal pos
    n = take("Q"); pos += n
    return bytes(buf[pos - n:pos]).decode()
  scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
  def value(t: int):
    if t == 8: return string()
    if t == 9:
      sub, n = take("I"), take("Q")
      return [value(sub) for _ in range(n)]
    return take(scalar[t])
  assert bytes(buf[:4]) == b"GGUF"; pos = 4
  _, n_tensors, n_kv = take("I"), take("Q"), take("Q")
  kv = {}
  for _ in range(n_kv): key = string(); kv[key] = value(take("I"))
  infos = []
  for _ in range(n_tensors):
    name, nd = string(), take("I")
    infos.append((name, [take("Q") for _ in range(nd)][::-1], take("I"), take("Q")))
  start = -(-pos // kv.get("general.alignment", 32)) * kv.get("general.alignment", 32)
  tensors = {}
  for name, shape, typ, off in infos:
    n, o = int(np.prod(shape)), start + off
    if typ == 0: a = np.frombuffer(buf, np.float32, n, o)
    elif typ == 1: a = np.frombuffer(buf, np.float16, n, o).astype(np.float32)
    elif typ == 8:
      b = np.frombuffer(buf, np.uint8, n // 32 * 34, o).reshape(-1, 34)
      a = b[:, :2].copy().view(np.float16).astype(np.float32) * b[:, 2:].view(np.int8)
    elif typ == 3:
      b = np.frombuffer(buf, np.uint8, n // 32 * 20, o).reshape(-1, 20)
      d, m = (b[:, s:s + 2].copy().view(np.float16).astype(np.float32) for s in (0, 2))
      a = d * np.concatenate([b[:, 4:] & 0xF, b[:, 4:] >> 4], 1) + m
    else: raise AssertionError(f"type {typ} not expected in this file")
    tensors[name] = np.asarray(a, np.float32).reshape(shape)
  return kv, tensors

@pytest.fixture(scope="module")
def smollm2(fixtures):
  path = fixtures / "smollm2-135m-instruct-q4_1.gguf"
  model, tok = checkpoint.load(path)
  kv, raw = read_gguf_numpy(path)
  meta = {}
  for k, v in raw.items():
    parts = k.removesuffix(".weight").split(".")
    inv = {g: m for m, g in GGUF_NAMES.items()}
    meta[f"layers.{parts[1]}.{inv[parts[2]]}.weight" if parts[0] == "blk" else f"{inv[parts[0]]}.weight"] = v
  return model, tok, kv, meta

def test_smollm2_config_and_dequantised_weights(smollm2):
  model, tok, kv, w = smollm2
  a = model.args
  assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_hidden) == (576, 30, 9, 3, 49152, 1536)
  assert (a.rope_theta, a.norm_eps, a.tie_embeddings) == (1e5, 1e-5, True)
  got = weights_of(model)
  assert sorted(got) == sorted(w)
  for k, v in w.items(): np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  assert (tok.bos_id, tok.eos_id) == (1, 2) and "{% for message in messages %}" in tok.chat_template

def test_smollm2_greedy_matches_numpy_forward_for_32_tokens(smollm2):
  model, tok, kv, w = smollm2
  vocab = kv["tokenizer.ggml.tokens"]
  prompt = [vocab.index(p) for p in ("Once", "Ġupon", "Ġa", "Ġtime")] # GPT-2 byte-level pieces; SmolLM2 adds no BOS
  assert tok.encode("Once upon a time") == prompt
  got = greedy(model, prompt, 32)
  cfg = {"n_heads": kv["llama.attention.head_count"], "n_kv_heads": kv["llama.attention.head_count_kv"],
         "norm_eps": kv["llama.attention.layer_norm_rms_epsilon"], "rope_theta": kv["llama.rope.freq_base"]}
  # numpy's greedy choice after each prefix of `got` is the argmax at that position of one causal forward over
  # prompt + got (logits at position i see tokens <= i only): one teacher-forced pass checks all 32 steps
  w64 = {k: v.astype(np.float64) for k, v in w.items()}
  ref_next = ref.forward(w64, cfg, np.array(prompt + got))[len(prompt) - 1:-1].argmax(-1).tolist()
  assert got == ref_next, (tok.decode(got), tok.decode(ref_next))
