# Checkpoints in and out: load() opens the five common LLaMA formats (our own, Meta's release, Hugging Face, GGUF,
# llama2.c), telling them apart by what is at the path; save() writes our own. Each format's reader yields (Meta name,
# lazy tensor) pairs that build() realises on the device one at a time, so loading needs about the model's own size in
# memory (plus one tensor), never a second full copy.
from __future__ import annotations
import json, math, mmap, pathlib, re, struct, zipfile
from typing import Callable, Iterable, Iterator
import numpy as np
from tinygrad import Device, Tensor, dtypes
from tinygrad.llm.gguf import ggml_data_to_tensor
from tinygrad.nn.state import safe_load, safe_load_metadata, safe_save, torch_load
import gguf
from files import publish_dir, staging_dir
from llama import ModelArgs, Transformer, learned
from parallel import TP_SPLIT_AXIS, ParallelError, check_parallel, place
from tokenizer import Tokenizer, TokenizerError, load_tokenizer, tokenizer_from_gguf

class CheckpointError(ValueError):
  """A checkpoint that is missing, truncated, corrupt or of a format load() does not know; the message is one sentence."""

# what a format reader hands back: the config, the weights under Meta's names, how to make the tokenizer (or None),
# and the files the weights are read from
Weights = Iterable[tuple[str, Tensor]]
Reader = tuple[ModelArgs, Weights, Callable[[], object] | None, list[pathlib.Path]]

def _drop_pages(files: list[pathlib.Path]):
  """tinygrad reads DISK tensors through an mmap of the file, so every page read stays in this process's resident set
  (clean and reclaimable, but counted) until the file is closed; without this a model loaded from one file peaks at
  twice its size in RSS. MADV_DONTNEED unmaps what was read; the page cache keeps the data."""
  for f in files:
    dev = Device[f"DISK:{f.resolve()}"]
    if getattr(dev, "size", None) is not None and hasattr(dev, "mem"): dev.mem.madvise(mmap.MADV_DONTNEED)

def _build(args: ModelArgs, weights: Weights, files: list[pathlib.Path], dtype, devices: tuple, source: pathlib.Path) -> Transformer:
  model = Transformer(args, init=False)
  check_parallel(args, len(devices), "tp")
  want, seen = {k: tuple(v.shape) for k, v in learned(model).items()}, set()
  for name, t in weights:
    if name not in want: raise CheckpointError(f"{source} holds a tensor '{name}' that this LLaMA configuration does not have")
    if tuple(t.shape) != want[name]: raise CheckpointError(f"{source}: '{name}' has shape {tuple(t.shape)} but the config implies {want[name]}")
    t = place(name, t, devices, "tp")      # off the disk first (disk tensors cannot be cast in place); split under tp
    if t.dtype == dtypes.uint16:           # bfloat16 carried as its bits (see _bits): keep it, or widen exactly to float32
      t = t.contiguous().realize().bitcast(dtypes.bfloat16) if dtype in (None, dtypes.bfloat16) else (t.cast(dtypes.uint32) << 16).bitcast(dtypes.float32)
    if dtype is not None: t = t.cast(dtype)
    *parents, leaf = name.split(".")
    obj = model
    for part in parents: obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    setattr(obj, leaf, t.contiguous().realize())
    seen.add(name)
    _drop_pages(files)
  if missing := sorted(set(want) - seen): raise CheckpointError(f"{source} lacks {len(missing)} weight(s) the config needs, e.g. '{missing[0]}'")
  model.freqs = place("freqs", model.freqs, devices, "tp").realize()
  return model

def _bits(t: Tensor) -> Tensor:
  """bfloat16 weights travel as raw uint16 bits until _build: copies, permutations and concatenations then compile
  as integer kernels, which every backend has (Debian 12's clang 14 cannot compile CPU kernels that touch __bf16)."""
  return t.bitcast(dtypes.uint16) if t.dtype == dtypes.bfloat16 else t

def _safetensors(path: pathlib.Path) -> dict[str, Tensor]:
  """Lazy views into a .safetensors file on disk, after checking that the header's offsets lie inside the file."""
  if not path.is_file(): raise CheckpointError(f"{path} is missing")
  disk, data_start, header = safe_load_metadata(path)
  end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
  if data_start + end > disk.shape[0]: raise CheckpointError(f"{path} is truncated: its header needs {data_start + end} bytes, the file has {disk.shape[0]}")
  return {k: _bits(t) for k, t in safe_load(disk).items()}

def _beside(*candidates: pathlib.Path) -> Callable[[], Tokenizer] | None:
  """The first tokenizer file that exists among the candidates, loaded when called."""
  for c in candidates:
    if c.is_file(): return lambda: load_tokenizer(c)
  return None

# ----- our own format: config.json (ModelArgs) + model.safetensors (Meta names) + tokenizer.model or tokenizer.gguf -----

def _read_ours(path: pathlib.Path, device) -> Reader:
  args = ModelArgs.from_dict(json.loads((path / "config.json").read_text()))
  return args, _safetensors(path / "model.safetensors").items(), _beside(path / "tokenizer.model", path / "tokenizer.gguf"), [path / "model.safetensors"]

def save(model: Transformer, path, tokenizer: Tokenizer | None = None) -> None:
  """Write `model` (and its tokenizer, under tokenizer.file_name) as our own format directory, atomically: built beside
  `path`, then swapped in. An existing directory (train.py's out/, which also holds training state) keeps its other
  files."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir(): raise CheckpointError(f"{path} exists and is not a directory")
  tmp = staging_dir(path)
  (tmp / "config.json").write_text(json.dumps(model.args.to_dict(), indent=2) + "\n")
  safe_save(learned(model), str(tmp / "model.safetensors"))
  if tokenizer is not None: tokenizer.save(tmp / tokenizer.file_name)
  publish_dir(tmp, path)

# ----- Karpathy's llama2.c .bin: float32 arrays, each weight kind stacked across layers -----
# legacy (version 0): 7 int32 header; version 1: 256-byte header starting with the magic "ak42" (layouts in
# llama2.c export.py, summarised in shared/fixtures/README.md)
_LLAMA2C_MAGIC = 0x616B3432

def _llama2c_header(path: pathlib.Path) -> tuple[int, tuple[int, ...], bool, int] | None:
  """(version, (dim, hidden, layers, heads, kv_heads, vocab, seq_len), shared classifier, weights offset), or None
  when the start of the file is not a plausible llama2.c header."""
  with open(path, "rb") as f: head = f.read(256)
  if len(head) >= 8 and struct.unpack("<I", head[:4])[0] == _LLAMA2C_MAGIC:
    version = struct.unpack("<i", head[4:8])[0]
    if version != 1: raise CheckpointError(f"{path} is a llama2.c version-{version} export; only the float32 legacy and version-1 layouts are supported")
    if len(head) < 256: raise CheckpointError(f"{path} is truncated inside its llama2.c header")
    return 1, struct.unpack("<7i", head[8:36]), head[36] == 1, 256
  if len(head) < 28: return None
  dim, hidden, layers, heads, kv_heads, vocab, seq = cfg = struct.unpack("<7i", head[:28])
  plausible = 0 < heads <= dim < 1 << 17 and 0 < kv_heads <= heads and 0 < hidden < 1 << 20 and 0 < layers < 1 << 12 \
              and 0 < abs(vocab) < 1 << 24 and 0 < seq < 1 << 24 and dim % heads == 0
  # a negative vocab_size says an untied classifier follows the weights
  return (0, (dim, hidden, layers, heads, kv_heads, abs(vocab), seq), vocab > 0, 28) if plausible else None

def _read_llama2c(path: pathlib.Path, device) -> Reader:
  version, (dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq), shared, offset = _llama2c_header(path)
  args = ModelArgs(dim=dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads, vocab_size=vocab, hidden_dim=hidden,
                   norm_eps=1e-5, max_seq_len=seq, tie_embeddings=shared)    # llama2.c's model.py: eps 1e-5, theta 1e4
  kv = n_kv_heads * args.head_dim
  kinds = {"tok_embeddings": (vocab, dim), "attention_norm": (dim,), "wq": (dim, dim), "wk": (kv, dim), "wv": (kv, dim),
           "wo": (dim, dim), "ffn_norm": (dim,), "w1": (hidden, dim), "w2": (dim, hidden), "w3": (hidden, dim), "norm": (dim,),
           "freq_cis": (2, seq, args.head_dim // 2), "output": (vocab, dim)}
  names = {"tok_embeddings": "tok_embeddings.weight", "norm": "norm.weight", "output": "output.weight",
           "attention_norm": "layers.{}.attention_norm.weight", "ffn_norm": "layers.{}.ffn_norm.weight",
           **{w: f"layers.{{}}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")},
           **{w: f"layers.{{}}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}}
  order = ["tok_embeddings", "attention_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3", "norm", "freq_cis"] if version == 0 else \
          ["attention_norm", "ffn_norm", "norm", "tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
  if not shared: order.append("output")
  layout = []                                     # (kind, byte offset of layer 0, bytes per layer)
  for kind in order:
    per = 4 * math.prod(kinds[kind])
    layout.append((kind, offset, per))
    offset += per * (n_layers if "{}" in names.get(kind, "") else 1)
  disk = Tensor(path)
  if offset != disk.shape[0]:
    raise CheckpointError(f"{path} has {disk.shape[0]} bytes but its llama2.c header describes {offset} (truncated or not a llama2.c checkpoint)")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for kind, start, per in layout:
      if kind == "freq_cis": continue             # the legacy RoPE table; we compute our own
      for i in range(n_layers if "{}" in names[kind] else 1):
        yield names[kind].format(i), disk[start + i * per:start + (i + 1) * per].bitcast(dtypes.float32).reshape(kinds[kind])
  return args, weights(), _beside(path.parent / "tokenizer.model", path.parent / "tokenizer.bin"), [path]

# ----- Meta's release: params.json + consolidated.NN.pth, one per model-parallel rank -----
# fairscale split each matrix across ranks as our tensor parallel does (parallel.TP_SPLIT_AXIS: column-parallel
# layers by output rows, row-parallel wo and w2 by input columns), except the embedding, split by columns (dim);
# norms are replicated on every rank.
META_SPLIT_AXIS = {k: v for k, v in TP_SPLIT_AXIS.items() if k != "cache_kv"} | {"tok_embeddings": 1}

def _read_meta(path: pathlib.Path, device) -> Reader:
  params = json.loads((path / "params.json").read_text())
  if not (shards := sorted(path.glob("consolidated.*.pth"))): raise CheckpointError(f"{path} has params.json but no consolidated.NN.pth files")
  if params.get("use_scaled_rope"): raise CheckpointError(f"{path} uses Llama 3.1's scaled RoPE, which this model does not implement")
  states = []
  for s in shards:     # torch_load gives lazy views into each zip: no data is read until a tensor is realised
    if not zipfile.is_zipfile(s): raise CheckpointError(f"{s} is not a PyTorch zip checkpoint (truncated, or saved by torch older than 1.6)")
    states.append({k: _bits(v) for k, v in torch_load(s).items() if k != "rope.freqs"})    # Meta's saved RoPE table: ours is computed
    if set(states[-1]) != set(states[0]): raise CheckpointError(f"{s} holds different tensors from {shards[0]}")
  first = states[0]
  args = ModelArgs(dim=params["dim"], n_layers=params["n_layers"], n_heads=params["n_heads"], n_kv_heads=params.get("n_kv_heads"),
                   vocab_size=first["tok_embeddings.weight"].shape[0],      # params.json says -1 in the LLaMA 1 release
                   hidden_dim=first["layers.0.feed_forward.w1.weight"].shape[0] * len(states),
                   norm_eps=params.get("norm_eps", 1e-6), rope_theta=params.get("rope_theta", 10000.0),
                   max_seq_len=params.get("max_seq_len", 2048), tie_embeddings="output.weight" not in first)
  def weights() -> Iterator[tuple[str, Tensor]]:
    for name in first:
      kind = name.split(".")[-2]
      if len(states) == 1 or kind not in META_SPLIT_AXIS: yield name, first[name]
      else: yield name, Tensor.cat(*(s[name].to(device) for s in states), dim=META_SPLIT_AXIS[kind])
  return args, weights(), _beside(path / "tokenizer.model", path.parent / "tokenizer.model"), shards   # Meta ships it one level up

# ----- Hugging Face transformers: config.json + model.safetensors or shards listed in model.safetensors.index.json -----
_HF_LAYER_NAMES = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
                   "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
                   "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}
_HF_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight", "lm_head.weight": "output.weight"}

def _unpermute_rotate_half(w: Tensor, heads: int) -> Tensor:
  """HF's conversion script reorders each head's q/k rows so its rotate-half RoPE equals Meta's interleaved pairs:
  row (h, 2i+j) of Meta goes to row (h, j·head_dim/2 + i) of HF. This puts them back."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

def _read_hf(path: pathlib.Path, device) -> Reader:
  cfg = json.loads((path / "config.json").read_text())
  if cfg.get("model_type") != "llama": raise CheckpointError(f"{path} holds a '{cfg.get('model_type')}' model, not a llama one")
  if cfg.get("rope_scaling"): raise CheckpointError(f"{path} uses RoPE scaling {cfg['rope_scaling']}, which this model does not implement")
  if cfg.get("attention_bias") or cfg.get("mlp_bias"): raise CheckpointError(f"{path} has biases in its linear layers; LLaMA has none")
  args = ModelArgs(dim=cfg["hidden_size"], n_layers=cfg["num_hidden_layers"], n_heads=cfg["num_attention_heads"],
                   n_kv_heads=cfg.get("num_key_value_heads"), vocab_size=cfg["vocab_size"], hidden_dim=cfg["intermediate_size"],
                   norm_eps=cfg.get("rms_norm_eps", 1e-6), rope_theta=cfg.get("rope_theta", 10000.0),
                   max_seq_len=cfg.get("max_position_embeddings", 2048), tie_embeddings=cfg.get("tie_word_embeddings", False))
  if cfg.get("head_dim", args.head_dim) != args.head_dim: raise CheckpointError(f"{path} has head_dim {cfg['head_dim']} != hidden_size / heads")
  if (index := path / "model.safetensors.index.json").is_file():
    files = [path / f for f in dict.fromkeys(json.loads(index.read_text())["weight_map"].values())]
  elif (path / "model.safetensors").is_file(): files = [path / "model.safetensors"]
  else: raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json (PyTorch .bin files are not read)")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for f in files:
      for hf_name, t in _safetensors(f).items():
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and args.tie_embeddings): continue
        if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name):
          name = f"layers.{m[1]}.{_HF_LAYER_NAMES.get(m[2], m[2])}.weight"
        else: name = _HF_NAMES.get(hf_name, hf_name)
        if name.endswith(("wq.weight", "wk.weight")):
          t = _unpermute_rotate_half(t.to(device), args.n_heads if name.endswith("wq.weight") else args.n_kv_heads)
        yield name, t
  return args, weights(), _beside(path / "tokenizer.model"), files

# ----- GGUF (llama.cpp): metadata key/values, tensor infos, aligned tensor data -----
_GGUF_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output", "attn_norm": "attention_norm",
               "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv", "attn_output": "attention.wo",
               "ffn_norm": "ffn_norm", "ffn_gate": "feed_forward.w1", "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}

def _read_gguf(path: pathlib.Path, device) -> Reader:
  # only the header is parsed here (gguf.read_header checks it against the file's size); each tensor's bytes are read
  # and dequantised by tinygrad one at a time, where gguf_load would first copy the whole file into memory
  try: header = gguf.read_header(path)
  except gguf.GGUFError as e: raise CheckpointError(f"{path} {e}") from None
  kv, disk = header.metadata, Tensor(path)
  if (arch := kv.get("general.architecture")) != "llama": raise CheckpointError(f"{path} holds a '{arch}' model, not a llama one")
  if kv.get("split.count", 1) > 1: raise CheckpointError(f"{path} is one part of a split GGUF; merge the parts with llama.cpp's gguf-split first")
  if kv.get("llama.rope.scaling.type", "none") != "none" or any(t.name == "rope_freqs.weight" for t in header.tensors):
    raise CheckpointError(f"{path} uses RoPE scaling, which this model does not implement")
  dims = {t.name: t.shape for t in header.tensors}
  if len(dims.get("token_embd.weight", ())) != 2: raise CheckpointError(f"{path} has no 2-D token_embd.weight tensor")
  n_heads = kv["llama.attention.head_count"]
  f32 = lambda x: float(str(np.float32(x)))   # GGUF stores float32: 1e-5 reads back as 9.9999997e-06; recover the decimal
  args = ModelArgs(dim=kv["llama.embedding_length"], n_layers=kv["llama.block_count"], n_heads=n_heads,
                   n_kv_heads=kv.get("llama.attention.head_count_kv", n_heads), vocab_size=dims["token_embd.weight"][1],
                   hidden_dim=kv["llama.feed_forward_length"], norm_eps=f32(kv.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
                   rope_theta=f32(kv.get("llama.rope.freq_base", 10000.0)), max_seq_len=kv.get("llama.context_length", 2048),
                   tie_embeddings="output.weight" not in dims)
  if kv.get("llama.rope.dimension_count", args.head_dim) != args.head_dim: raise CheckpointError(f"{path} applies RoPE to only part of each head")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for t in header.tensors:
      # llama.cpp's llama converter already reordered q/k rows for adjacent-pair ("NORM") RoPE: Meta's order, nothing to undo
      parts = t.name.split(".")
      name = ".".join(["layers", parts[1], _GGUF_NAMES.get(parts[2], parts[2]), *parts[3:]] if parts[0] == "blk" and len(parts) > 2 else
                      [_GGUF_NAMES.get(parts[0], parts[0]), *parts[1:]])
      data = disk[t.start:t.start + t.nbytes].to(device)
      yield name, _bits(ggml_data_to_tensor(data, math.prod(t.shape), t.ggml_type)).reshape(*reversed(t.shape))
  return args, weights(), (lambda: tokenizer_from_gguf(kv)) if "tokenizer.ggml.model" in kv else None, [path]

# ----- the entry point -----

_READERS: dict[str, Callable[[pathlib.Path, object], Reader]] = {"our own": _read_ours, "llama2.c": _read_llama2c, "Meta": _read_meta,
                                                                  "Hugging Face": _read_hf, "GGUF": _read_gguf}

def _sniff(path: pathlib.Path) -> str:
  if not path.exists(): raise CheckpointError(f"{path} does not exist")
  if path.is_dir():
    if (path / "config.json").is_file():
      return "our own" if "n_layers" in json.loads((path / "config.json").read_text()) else "Hugging Face"
    if (path / "params.json").is_file(): return "Meta"
    raise CheckpointError(f"{path} is a directory without config.json or params.json, so it is no checkpoint load() knows")
  with open(path, "rb") as f: magic = f.read(4)
  if magic == b"GGUF": return "GGUF"
  if _llama2c_header(path) is not None: return "llama2.c"
  raise CheckpointError(f"{path} is not a checkpoint load() knows (GGUF, llama2.c .bin, or a Meta, Hugging Face or own-format directory)")

def load(path, tokenizer=None, dtype=None, device=None) -> tuple[Transformer, Tokenizer | None]:
  """Open a checkpoint in any of the five formats: (model, tokenizer or None). `tokenizer` is a tokenizer file that
  overrides or adds one; `dtype` (a tinygrad dtype or its name) casts every weight. By default what is stored is kept:
  float16 and bfloat16 stay half precision (CPU kernels in bfloat16 need a clang newer than Debian 12's 14: pass
  dtype="float32" there), quantised GGUF tensors dequantise to float32. `device` defaults to tinygrad's default; a
  tuple of devices loads the model tensor-parallel (§2.4), each tensor split as it is read, so no device ever holds
  the whole model."""
  path = pathlib.Path(path)
  devices = tuple(device) if isinstance(device, (tuple, list)) else (device or Device.DEFAULT,)
  if isinstance(dtype, str): dtype = getattr(dtypes, dtype)
  fmt = None
  try:
    fmt = _sniff(path)
    args, weights, make_tokenizer, files = _READERS[fmt](path, devices[0])
    model = _build(args, weights, files, dtype, devices, path)
  except (CheckpointError, ParallelError): raise
  except Exception as e:   # whatever a damaged file trips deep inside a parser becomes one sentence naming the file
    raise CheckpointError(f"{path} could not be read as a checkpoint{f' in {fmt} format' if fmt else ''} ({type(e).__name__}: {e})") from e
  if tokenizer is not None: make_tokenizer = _beside(pathlib.Path(tokenizer))
  if tokenizer is not None and make_tokenizer is None: raise CheckpointError(f"tokenizer file {tokenizer} does not exist")
  try: return model, make_tokenizer() if make_tokenizer else None
  except (ValueError, OSError) as e: raise CheckpointError(f"the tokenizer for {path} could not be loaded: {e}") from e

