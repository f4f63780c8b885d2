"""Checkpoints in and out (issue 3): every format checkpoint.load reads, built here from known weights by independent
writers (numpy, the safetensors package, a hand-made torch zip and GGUF), and the real-weights golden tests.

Small models share one config family so tinygrad compiles few distinct kernels; real weights come from ../shared/fixtures.
"""
import collections, dataclasses, json, pathlib, pickle, struct, zipfile
import numpy as np
import pytest
from tinygrad import Tensor, TinyJit, UOp, dtypes, nn
import llama
import reference as ref
import checkpoint

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
  model, tok = checkpoint.load(tmp_path / "m.bin")
  assert tok is None and model.args.tie_embeddings == tied and model.args.n_kv_heads == 2
  assert_same_weights(model, w)
  assert_close(logits(model), ref.forward(w, args, TOKENS))

# ***** Meta's release: params.json + consolidated.NN.pth, written as torch zips without torch *****

class TorchRef:
  """A name inside torch, pickled as a GLOBAL opcode without importing torch (which is not installed)."""
  def __init__(self, module: str, name: str): self.module, self.name = module, name
  def __call__(self): raise TypeError("a stand-in, never called")

class Storage:
  def __init__(self, key: str, kind: str, numel: int): self.key, self.kind, self.numel = key, kind, numel

class TensorRef:
  """Pickles as torch does: torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)."""
  def __init__(self, storage: Storage, shape: tuple[int, ...]): self.storage, self.shape = storage, shape
  def __reduce__(self):
    stride = tuple(int(np.prod(self.shape[i+1:])) for i in range(len(self.shape)))
    return TorchRef("torch._utils", "_rebuild_tensor_v2"), (self.storage, 0, self.shape, stride, False, collections.OrderedDict())

class TorchPickler(pickle._Pickler):
  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[TorchRef] = lambda self, obj: self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
  # storages are not in data.pkl: torch refers to them by persistent id ('storage', type, key, location, numel)
  def persistent_id(self, obj):
    return ("storage", TorchRef("torch", obj.kind), obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

def write_torch_zip(path: pathlib.Path, state: dict[str, np.ndarray]):
  """torch.save's zip layout: archive/data.pkl (the pickled state dict) and archive/data/<key> (raw little-endian storages)."""
  kinds = {np.float32: "FloatStorage", np.float16: "HalfStorage", np.uint16: "BFloat16Storage"}   # uint16: bfloat16 bits
  refs, blobs = collections.OrderedDict(), {}
  for i, (name, a) in enumerate(state.items()):
    refs[name] = TensorRef(Storage(str(i), kinds[a.dtype.type], a.size), a.shape)
    blobs[str(i)] = np.ascontiguousarray(a).tobytes()
  pkl = __import__("io").BytesIO()
  TorchPickler(pkl, protocol=2).dump(refs)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", pkl.getvalue())
    for key, b in blobs.items(): z.writestr(f"archive/data/{key}", b)
    z.writestr("archive/version", "3\n")

META_SPLIT = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}

def write_meta(path: pathlib.Path, w: dict[str, np.ndarray], args: llama.ModelArgs, shards: int):
  path.mkdir()
  (path / "params.json").write_text(json.dumps({"dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads,
    "n_kv_heads": args.n_kv_heads, "vocab_size": -1, "multiple_of": 16, "norm_eps": args.norm_eps, "rope_theta": args.rope_theta}))
  for r in range(shards):
    state = {k: np.split(v, shards, axis=META_SPLIT[k.split(".")[-2]])[r] if k.split(".")[-2] in META_SPLIT else v for k, v in w.items()}
    state["rope.freqs"] = np.zeros((args.max_seq_len, args.head_dim // 2), np.float32)   # Meta saves its table; unused
    write_torch_zip(path / f"consolidated.{r:02d}.pth", state)

@pytest.mark.parametrize("tied", [False, True])
def test_meta_two_shards_merge_back_half_precision_kept(tmp_path, tied):
  args = small_args(tie_embeddings=tied, rope_theta=5e5)
  w = {k: v.astype(np.float16) for k, v in ref.random_weights(args, seed=5).items()}
  write_meta(tmp_path / "7B", w, args, shards=2)
  model, tok = checkpoint.load(tmp_path / "7B")
  assert tok is None and model.args == dataclasses.replace(args, max_seq_len=2048)   # params.json does not say; Meta's default
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

def hf_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """What HF's convert_llama_weights_to_hf.py does to wq/wk: w.view(heads, rows/heads/2, 2, cols).transpose(1, 2)."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)

def save_safetensors(tensors: dict[str, np.ndarray], path: pathlib.Path):
  """The safetensors package's numpy writer, or by hand when uint16 arrays stand for bfloat16 bits (numpy has no bf16):
  8-byte header length, JSON header, raw little-endian data."""
  from safetensors.numpy import save_file
  if not any(v.dtype == np.uint16 for v in tensors.values()): return save_file(tensors, str(path))
  header, data = {}, b""
  for k, v in tensors.items():
    header[k] = {"dtype": {np.uint16: "BF16", np.float32: "F32"}[v.dtype.type], "shape": list(v.shape), "data_offsets": [len(data), len(data) + v.nbytes]}
    data += np.ascontiguousarray(v).tobytes()
  j = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(j)) + j + data)

def write_hf(path: pathlib.Path, w: dict[str, np.ndarray], args: llama.ModelArgs, shards: int):
  path.mkdir()
  tied = "output.weight" not in w
  (path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": args.dim, "num_hidden_layers": args.n_layers, "num_attention_heads": args.n_heads,
    "num_key_value_heads": args.n_kv_heads, "intermediate_size": args.ffn_hidden, "vocab_size": args.vocab_size,
    "rms_norm_eps": args.norm_eps, "rope_theta": args.rope_theta, "max_position_embeddings": args.max_seq_len,
    "tie_word_embeddings": tied, "hidden_act": "silu", "rope_scaling": None, "torch_dtype": "float32"}))
  layer = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
           "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
           "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}
  hf = {}
  for k, v in w.items():
    if k.startswith("layers."):
      _, i, rest = k.split(".", 2)
      if rest == "attention.wq.weight": v = hf_permute(v, args.n_heads)
      if rest == "attention.wk.weight": v = hf_permute(v, args.n_kv_heads)
      hf[f"model.layers.{i}.{layer[rest.removesuffix('.weight')]}.weight"] = v
    else: hf[{"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight", "output.weight": "lm_head.weight"}[k]] = v
  hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(args.head_dim // 2, np.float32)   # older exports kept it
  if shards == 1: return save_safetensors(hf, path / "model.safetensors")
  names, weight_map = list(hf), {}
  for r in range(shards):
    fn = f"model-{r+1:05d}-of-{shards:05d}.safetensors"
    part = {k: hf[k] for k in names[r::shards]}
    save_safetensors(part, path / fn)
    weight_map.update(dict.fromkeys(part, fn))
  (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

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
    np.testing.assert_array_equal(np.frombuffer(raw[start + h["data_offsets"][0]:start + h["data_offsets"][1]], np.uint16).reshape(h["shape"]), bits[k], err_msg=k)
  # dtype= widens exactly: float32 holds every bfloat16
  for path in (tmp_path / "m", tmp_path / "own"):
    model, _ = checkpoint.load(path, dtype="float32")
    assert_same_weights(model, widen(bits))
  assert_close(logits(model), ref.forward(widen(bits), args, TOKENS))

# ***** GGUF: a minimal v3 writer (F32, F16, Q8_0, Q4_1) *****

GGUF_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output", "attention_norm": "attn_norm",
              "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
              "ffn_norm": "ffn_norm", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"}

def gguf_value(v) -> bytes:
  """(type, payload) of one metadata value: uint32, float32, bool, string, arrays of those."""
  if isinstance(v, bool): return struct.pack("<IB", 7, v)
  if isinstance(v, int): return struct.pack("<II", 4, v)
  if isinstance(v, float): return struct.pack("<If", 6, v)
  if isinstance(v, str): return struct.pack("<IQ", 8, len(v.encode())) + v.encode()
  items = [gguf_value(x) for x in v]
  return struct.pack("<IIQ", 9, struct.unpack("<I", items[0][:4])[0], len(v)) + b"".join(x[4:] for x in items)

def gguf_string(s: str) -> bytes: return struct.pack("<Q", len(s.encode())) + s.encode()

def quantize(a: np.ndarray, ggml_type: int) -> tuple[bytes, np.ndarray]:
  """(bytes as ggml stores them, the float32 values a dequantiser must give back)."""
  if ggml_type == 0: return a.astype(np.float32).tobytes(), a.astype(np.float32)
  if ggml_type == 1: return a.astype(np.float16).tobytes(), a.astype(np.float16)
  blocks = a.astype(np.float32).reshape(-1, 32)
  if ggml_type == 8:    # Q8_0: fp16 scale d, 32 int8: w = d·q
    d = (np.abs(blocks).max(1, keepdims=True) / 127).astype(np.float16)
    q = np.clip(np.round(blocks / np.maximum(d.astype(np.float32), 1e-8)), -127, 127).astype(np.int8)
    raw = np.concatenate([d.view(np.uint8), q.view(np.uint8)], 1)
    return raw.tobytes(), (d.astype(np.float32) * q).reshape(a.shape)
  assert ggml_type == 3   # Q4_1: fp16 scale d, fp16 min m, 16 bytes of nibbles (low: elements 0-15, high: 16-31): w = d·q + m
  m = blocks.min(1, keepdims=True).astype(np.float16)
  d = ((blocks.max(1, keepdims=True) - m.astype(np.float32)) / 15).astype(np.float16)
  q = np.clip(np.round((blocks - m.astype(np.float32)) / np.maximum(d.astype(np.float32), 1e-8)), 0, 15).astype(np.uint8)
  raw = np.concatenate([d.view(np.uint8), m.view(np.uint8), q[:, :16] | (q[:, 16:] << 4)], 1)
  return raw.tobytes(), (d.astype(np.float32) * q + m.astype(np.float32)).reshape(a.shape)

def write_gguf(path: pathlib.Path, w: dict[str, np.ndarray], args: llama.ModelArgs, types: dict[str, int], extra_kv=None):
  """Returns the weights as a correct dequantiser must give them back (Meta names)."""
  kv = {"general.architecture": "llama", "general.alignment": 32, "llama.embedding_length": args.dim,
        "llama.block_count": args.n_layers, "llama.attention.head_count": args.n_heads, "llama.attention.head_count_kv": args.n_kv_heads,
        "llama.feed_forward_length": args.ffn_hidden, "llama.rope.freq_base": args.rope_theta, "llama.context_length": args.max_seq_len,
        "llama.attention.layer_norm_rms_epsilon": args.norm_eps, "llama.rope.dimension_count": args.head_dim, **(extra_kv or {})}
  infos, data, expected = b"", b"", {}
  for k, v in w.items():
    parts = k.removesuffix(".weight").split(".")
    name = f"blk.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:])]}.weight" if parts[0] == "layers" else f"{GGUF_NAMES[parts[0]]}.weight"
    ggml_type = 0 if v.ndim == 1 else types.get(name.split(".")[-2], 1)
    raw, expected[k] = quantize(v, ggml_type)
    infos += gguf_string(name) + struct.pack("<I", v.ndim) + struct.pack(f"<{v.ndim}Q", *reversed(v.shape)) + struct.pack("<IQ", ggml_type, len(data))
    data += raw + b"\0" * (-len(raw) % 32)
  head = b"GGUF" + struct.pack("<IQQ", 3, len(w), len(kv)) + b"".join(gguf_string(k) + gguf_value(v) for k, v in kv.items()) + infos
  path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
  return expected

@pytest.mark.parametrize("tied", [False, True])
def test_gguf_dequantises_and_maps_names(tmp_path, tied):
  args = small_args(tie_embeddings=tied, rope_theta=5e5)
  w = ref.random_weights(args, seed=8)
  expected = write_gguf(tmp_path / "m.gguf", w, args, {"token_embd": 8, "attn_q": 3, "ffn_gate": 8, "output": 3})
  model, tok = checkpoint.load(tmp_path / "m.gguf")
  assert tok is None and model.args == args
  got = weights_of(model)
  assert got["layers.0.attention.wk.weight"].dtype == np.float16 and got["norm.weight"].dtype == np.float32   # F16 stays half
  for k, v in expected.items():   # Q4_1 is d·q + m: allow an FMA's last bit
    np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  assert_close(logits(model), ref.forward(expected, args, TOKENS), rtol=1e-3)

def test_gguf_carries_its_tokenizer_and_dtype_option(tmp_path):
  args = small_args(tie_embeddings=True)
  pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(32, 61)] + ["▁" + c for c in "abcdefghijklmnopqrstuvwxyz012"] + ["▁the", "he", "th"]
  assert len(pieces) == args.vocab_size
  tok_kv = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.scores": [float(-i) for i in range(64)],
            "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 29 + [1] * 32, "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2}
  write_gguf(tmp_path / "m.gguf", ref.random_weights(args, seed=9), args, {}, tok_kv)
  model, tok = checkpoint.load(tmp_path / "m.gguf", dtype="float32")
  assert all(v.dtype == np.float32 for v in weights_of(model).values())
  assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (64, 1, 2)
  assert tok.decode(tok.encode("the b")) == "the b"

# ***** broken input: one clear sentence, never a traceback from inside a parser *****

def broken_inputs(tmp_path: pathlib.Path) -> dict[str, pathlib.Path]:
  args = small_args()
  w = ref.random_weights(args, seed=10)
  cases = {}
  def truncate(p: pathlib.Path, keep: float): p.write_bytes(p.read_bytes()[:int(p.stat().st_size * keep)])
  checkpoint.save(model_from(w, args), cases.setdefault("own: truncated safetensors", tmp_path / "own"))
  truncate(tmp_path / "own" / "model.safetensors", 0.7)
  checkpoint.save(model_from(w, args), cases.setdefault("own: corrupt config", tmp_path / "own2"))
  (tmp_path / "own2" / "config.json").write_text("{not json")
  write_llama2c(cases.setdefault("llama2.c: truncated", tmp_path / "m.bin"), w, args, 1)
  truncate(tmp_path / "m.bin", 0.9)
  write_meta(cases.setdefault("meta: truncated shard", tmp_path / "meta"), w, args, 2)
  truncate(tmp_path / "meta" / "consolidated.01.pth", 0.5)
  write_meta(cases.setdefault("meta: no shards", tmp_path / "meta2"), w, args, 1)
  (tmp_path / "meta2" / "consolidated.00.pth").unlink()
  write_hf(cases.setdefault("hf: missing shard", tmp_path / "hf"), w, args, 2)
  (tmp_path / "hf" / "model-00002-of-00002.safetensors").unlink()
  write_gguf(cases.setdefault("gguf: truncated", tmp_path / "t.gguf"), w, args, {})
  truncate(tmp_path / "t.gguf", 0.8)
  (cases.setdefault("gguf: corrupt header", tmp_path / "c.gguf")).write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 5, 1 << 40) + b"\xff" * 64)
  (cases.setdefault("unknown file", tmp_path / "notes.txt")).write_text("just some text, not weights\n" * 10)
  (cases.setdefault("empty dir", tmp_path / "empty")).mkdir()
  cases["missing path"] = tmp_path / "nowhere"
  return cases

def test_broken_inputs_raise_one_clear_sentence(tmp_path):
  for case, path in broken_inputs(tmp_path).items():
    with pytest.raises(checkpoint.CheckpointError) as e: checkpoint.load(path)
    msg = str(e.value)
    assert str(path) in msg and "\n" not in msg, (case, msg)
    assert isinstance(e.value, ValueError)

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
  assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_hidden, a.tie_embeddings) == (64, 5, 8, 4, 512, 172, True)
  toks = [[1, 403, 407, 261, 378]]     # BOS "Once upon a time"
  out = stories(Tensor(toks)).numpy()
  assert_close(out, ref.forward(weights_of(stories), a, toks))
  assert out[0, 0].argmax() == 403     # after BOS the model starts its story with "Once"

def test_device_option_places_every_tensor(stories, fixtures):
  model, _ = checkpoint.load(fixtures / "stories260K" / "stories260K.bin", device="CPU:1")   # a second virtual CPU device
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
  # and through the tokenizer load() attaches: llama2.c's own tokenizer.bin export of the same vocabulary
  _, tok = checkpoint.load(fixtures / "stories260K" / "stories260K.bin", tokenizer=fixtures / "stories260K" / "tok512.bin")
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
  assert (a.dim, a.n_layers, a.n_heads, a.n_kv_heads, a.vocab_size, a.ffn_hidden, a.rope_theta, a.norm_eps, a.tie_embeddings) == \
         (576, 30, 9, 3, 49152, 1536, 1e5, 1e-5, True)
  got = weights_of(model)
  assert sorted(got) == sorted(w)
  for k, v in w.items(): np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-7, err_msg=k)
  assert (tok.bos_id, tok.eos_id) == (1, 2) and "{% for message in messages %}" in tok.chat_template

def test_smollm2_greedy_matches_numpy_forward_for_32_tokens(smollm2):
  model, tok, kv, w = smollm2
  vocab = kv["tokenizer.ggml.tokens"]
  prompt = [vocab.index(p) for p in ("Once", "Ġupon", "Ġa", "Ġtime")]   # GPT-2 byte-level pieces; SmolLM2 adds no BOS
  assert tok.encode("Once upon a time") == prompt
  got = greedy(model, prompt, 32)
  cfg = {"n_heads": kv["llama.attention.head_count"], "n_kv_heads": kv["llama.attention.head_count_kv"],
         "norm_eps": kv["llama.attention.layer_norm_rms_epsilon"], "rope_theta": kv["llama.rope.freq_base"]}
  # numpy's greedy choice after each prefix of `got` is the argmax at that position of one causal forward over
  # prompt + got (logits at position i see tokens <= i only): one teacher-forced pass checks all 32 steps
  w64 = {k: v.astype(np.float64) for k, v in w.items()}
  ref_next = ref.forward(w64, cfg, np.array(prompt + got))[len(prompt) - 1:-1].argmax(-1).tolist()
  assert got == ref_next, (tok.decode(got), tok.decode(ref_next))
