"""Writers of every checkpoint format checkpoint.load reads, from known numpy weights and independently of the
loader (numpy, the safetensors package, a hand-made torch zip and GGUF): shared by test_load.py (exact round trips),
test_fuzz.py (files to corrupt) and test_crash.py."""
import collections, io, json, pathlib, pickle, struct, zipfile
import numpy as np
from tinygrad import Tensor, nn
import llama
from safetensors.numpy import save_file

def small_args(**kw) -> llama.ModelArgs:
  base = dict(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, hidden_dim=48, norm_eps=1e-5, max_seq_len=32)
  return llama.ModelArgs(**{**base, **kw})

def model_from(weights: dict[str, np.ndarray], args: llama.ModelArgs) -> llama.Transformer:
  """A Transformer carrying exactly these numpy weights (the 'source model' each format is written from)."""
  model = llama.Transformer(args)
  nn.state.load_state_dict(model, {k: Tensor(v) for k, v in weights.items()}, strict=False, verbose=False)
  return model

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
    return TorchRef("torch._utils",
                    "_rebuild_tensor_v2"), (self.storage, 0, self.shape, stride, False, collections.OrderedDict())

class TorchPickler(pickle._Pickler):
  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[TorchRef] = lambda self, obj: self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
  # storages are not in data.pkl: torch refers to them by persistent id ('storage', type, key, location, numel)
  def persistent_id(self, obj):
    return ("storage", TorchRef("torch", obj.kind), obj.key, "cpu", obj.numel) if isinstance(obj, Storage) else None

def write_torch_zip(path: pathlib.Path, state: dict[str, np.ndarray]):
  """torch.save's zip layout: archive/data.pkl (the pickled state dict) and archive/data/<key> (raw little-endian
  storages)."""
  kinds = {np.float32: "FloatStorage", np.float16: "HalfStorage", np.uint16: "BFloat16Storage"} # uint16: bfloat16 bits
  refs, blobs = collections.OrderedDict(), {}
  for i, (name, a) in enumerate(state.items()):
    refs[name] = TensorRef(Storage(str(i), kinds[a.dtype.type], a.size), a.shape)
    blobs[str(i)] = np.ascontiguousarray(a).tobytes()
  pkl = io.BytesIO()
  TorchPickler(pkl, protocol=2).dump(refs)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
    z.writestr("archive/data.pkl", pkl.getvalue())
    for key, b in blobs.items(): z.writestr(f"archive/data/{key}", b)
    z.writestr("archive/version", "3\n")

META_SPLIT = {"tok_embeddings": 1, "wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1}

def write_meta(path: pathlib.Path, w: dict[str, np.ndarray], args: llama.ModelArgs, shards: int):
  path.mkdir()
  (path / "params.json").write_text(
    json.dumps({
      "dim": args.dim, "n_layers": args.n_layers, "n_heads": args.n_heads, "n_kv_heads": args.n_kv_heads,
      "vocab_size": -1, "multiple_of": 16, "norm_eps": args.norm_eps, "rope_theta": args.rope_theta
    }))
  for r in range(shards):
    state = {
      k: np.split(v, shards, axis=META_SPLIT[k.split(".")[-2]])[r] if k.split(".")[-2] in META_SPLIT else v
      for k, v in w.items()
    }
    state["rope.freqs"] = np.zeros((args.max_seq_len, args.head_dim // 2), np.float32)   # Meta saves its table; unused
    write_torch_zip(path / f"consolidated.{r:02d}.pth", state)

def hf_permute(w: np.ndarray, heads: int) -> np.ndarray:
  """What HF's convert_llama_weights_to_hf.py does to wq/wk: w.view(heads, rows/heads/2, 2, cols).transpose(1, 2)."""
  return w.reshape(heads, w.shape[0] // heads // 2, 2, w.shape[1]).transpose(0, 2, 1, 3).reshape(w.shape)

def save_safetensors(tensors: dict[str, np.ndarray], path: pathlib.Path):
  """The safetensors package's numpy writer, or by hand when uint16 arrays stand for bfloat16 bits (numpy has no bf16):
  8-byte header length, JSON header, raw little-endian data."""
  if not any(v.dtype == np.uint16 for v in tensors.values()): return save_file(tensors, str(path))
  header, data = {}, b""
  for k, v in tensors.items():
    header[k] = {
      "dtype": {np.uint16: "BF16", np.float32: "F32"}[v.dtype.type], "shape": list(v.shape),
      "data_offsets": [len(data), len(data) + v.nbytes]
    }
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
  layer = {
    "attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
    "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w2": "mlp.down_proj",
    "feed_forward.w3": "mlp.up_proj", "attention_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"
  }
  hf = {}
  for k, v in w.items():
    if k.startswith("layers."):
      _, i, rest = k.split(".", 2)
      if rest == "attention.wq.weight": v = hf_permute(v, args.n_heads)
      if rest == "attention.wk.weight": v = hf_permute(v, args.n_kv_heads)
      hf[f"model.layers.{i}.{layer[rest.removesuffix('.weight')]}.weight"] = v
    else:
      hf[{
        "tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"
      }[k]] = v
  hf["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(args.head_dim // 2, np.float32)   # older exports kept it
  if shards == 1: return save_safetensors(hf, path / "model.safetensors")
  names, weight_map = list(hf), {}
  for r in range(shards):
    fn = f"model-{r+1:05d}-of-{shards:05d}.safetensors"
    part = {k: hf[k] for k in names[r::shards]}
    save_safetensors(part, path / fn)
    weight_map.update(dict.fromkeys(part, fn))
  (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

GGUF_NAMES = {
  "tok_embeddings": "token_embd", "norm": "output_norm", "output": "output", "attention_norm": "attn_norm",
  "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
  "ffn_norm": "ffn_norm", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down", "feed_forward.w3": "ffn_up"
}

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
  # Q4_1: fp16 scale d, fp16 min m, 16 bytes of nibbles (low: elements 0-15, high: 16-31): w = d·q + m
  assert ggml_type == 3
  m = blocks.min(1, keepdims=True).astype(np.float16)
  d = ((blocks.max(1, keepdims=True) - m.astype(np.float32)) / 15).astype(np.float16)
  q = np.clip(np.round((blocks - m.astype(np.float32)) / np.maximum(d.astype(np.float32), 1e-8)), 0, 15).astype(
    np.uint8)
  raw = np.concatenate([d.view(np.uint8), m.view(np.uint8), q[:, :16] | (q[:, 16:] << 4)], 1)
  return raw.tobytes(), (d.astype(np.float32) * q + m.astype(np.float32)).reshape(a.shape)


def write_gguf(path: pathlib.Path,
               w: dict[str, np.ndarray],
               args: llama.ModelArgs,
               types: dict[str, int],
               extra_kv=None):
  """Returns the weights as a correct dequantiser must give them back (Meta names)."""
  kv = {
    "general.architecture": "llama", "general.alignment": 32, "llama.embedding_length": args.dim,
    "llama.block_count": args.n_layers, "llama.attention.head_count": args.n_heads,
    "llama.attention.head_count_kv": args.n_kv_heads, "llama.feed_forward_length": args.ffn_hidden,
    "llama.rope.freq_base": args.rope_theta, "llama.context_length": args.max_seq_len,
    "llama.attention.layer_norm_rms_epsilon": args.norm_eps, "llama.rope.dimension_count": args.head_dim,
    **(extra_kv or {})
  }
  infos, data, expected = b"", b"", {}
  for k, v in w.items():
    parts = k.removesuffix(".weight").split(".")
    name = f"blk.{parts[1]}.{GGUF_NAMES['.'.join(parts[2:])]}.weight" if parts[
      0] == "layers" else f"{GGUF_NAMES[parts[0]]}.weight"
    ggml_type = 0 if v.ndim == 1 else types.get(name.split(".")[-2], 1)
    raw, expected[k] = quantize(v, ggml_type)
    infos += gguf_string(name) + struct.pack("<I", v.ndim) + struct.pack(f"<{v.ndim}Q", *reversed(
      v.shape)) + struct.pack("<IQ", ggml_type, len(data))
    data += raw + b"\0" * (-len(raw) % 32)
  head = b"GGUF" + struct.pack("<IQQ", 3, len(w), len(kv)) + b"".join(
    gguf_string(k) + gguf_value(v) for k, v in kv.items()) + infos
  path.write_bytes(head + b"\0" * (-len(head) % 32) + data)
  return expected
