# Checkpoints in and out: load() opens the five common LLaMA formats (our own, Meta's release, Hugging Face, GGUF,
# llama2.c), told apart by what is at the path; save() writes our own. Each reader parses its headers with plain file
# reads and checks every name, type, shape and offset against the file before any tensor exists; it returns (Meta name,
# lazy tensor) pairs that build() checks against the config, then realises on the device a layer's worth at a time, so
# loading needs about the model's own size in memory (plus one layer), never a second full copy.
from __future__ import annotations
import dataclasses, json, math, pathlib, re, struct
from typing import Callable, Iterable, Iterator
import numpy as np
from tinygrad import Device, Tensor, dtypes
from tinygrad.nn.state import safe_save
import gguf, quant
from engine import drop_file_pages
from files import publish_dir, recover_dir, staging_dir
from llama import ModelArgs, Transformer, layer_shapes, learned, weight_shapes
from parallel import TP_SPLIT_AXIS, ParallelError, check_parallel, place
from tensorfiles import CheckpointError, one_line, read_safetensors, read_torch_zip
from tokenizer import Tokenizer, TokenizerError, load_tokenizer, tokenizer_from_gguf

# what a format reader hands back: the config, the weights under Meta's names, how to make the tokenizer (or None),
# and the files the weights are read from
Weights = Iterable[tuple[str, Tensor]]
Reader = tuple[ModelArgs, Weights, Callable[[], object] | None, list[pathlib.Path]]

# ----- checked reading of configs: JSON files, GGUF metadata -----

def _json(path: pathlib.Path) -> dict:
  """The JSON object in `path`, or CheckpointError saying what is wrong with the file."""
  if not path.is_file(): raise CheckpointError(f"{path} is missing")
  # JSONDecodeError and UnicodeDecodeError are ValueErrors; deep nesting recurses
  try: cfg = json.loads(path.read_bytes())
  except (ValueError, RecursionError) as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from None
  if not isinstance(cfg, dict): raise CheckpointError(f"{path} holds a JSON {type(cfg).__name__}, not an object")
  return cfg

_REQUIRED = object()
_KINDS = {"int": ("a positive integer", lambda v: type(v) is int and v > 0),
          "float": ("a positive finite number", lambda v: type(v) in (int, float) and math.isfinite(v) and v > 0),
          "bool": ("true or false", lambda v: type(v) is bool), "str": ("a string", lambda v: type(v) is str)}

def _get(cfg: dict, key: str, kind: str, source, default=_REQUIRED):
  """cfg[key], checked to be of `kind` (a key of _KINDS); `default` when it is absent or null."""
  if (v := cfg.get(key)) is None and default is _REQUIRED: raise CheckpointError(f"{source} lacks the setting '{key}'")
  if v is None: return default
  what, ok = _KINDS[kind]
  if not ok(v): raise CheckpointError(f"{source} gives '{key}' the value {v!r:.60}, not {what}")
  return v

def _model_args(source, nbytes: int, **kw) -> ModelArgs:
  """ModelArgs from checked settings, refused unless the weight files (nbytes in all) can hold that many parameters
  (at least half a byte each, as in 4-bit GGUF) and its RoPE table is not larger than the checkpoint: a corrupt
  count must not make Transformer() allocate far beyond the file's size."""
  try: args = ModelArgs(**kw)
  except ValueError as e: raise CheckpointError(f"{source} has an inconsistent config: {e}") from None
  if (params := args.num_params()) > 2 * nbytes:
    raise CheckpointError(f"{source} describes a model of {params:,} parameters, "
                          f"more than its {nbytes:,} bytes of weights can hold")
  if (table := 8 * args.max_seq_len * args.head_dim) > max(nbytes, 1 << 26):  # float32 cos/sin for 2·max_seq_len rows
    raise CheckpointError(f"{source} claims a context of {args.max_seq_len:,} tokens, "
                          f"whose RoPE table ({table:,} bytes) would be larger than the checkpoint")
  return args

def _file_bytes(files: list[pathlib.Path]) -> int: return sum(f.stat().st_size for f in files)

def _build(args: ModelArgs, weights: Weights, files: list[pathlib.Path], dtype, devices: tuple,
           src: pathlib.Path, compact: bool) -> Transformer:
  # every name and shape is checked on the lazy views first: a broken checkpoint is refused before anything is read
  pairs = list(weights)
  if len(layer_shapes(args)) * args.n_layers > len(pairs):   # before a name table as long as n_layers is made
    raise CheckpointError(f"{src} holds {len(pairs)} tensors, too few for the {args.n_layers} layers its config names")
  want, seen = weight_shapes(args), set()
  for name, t in pairs:
    if name not in want:
      raise CheckpointError(f"{src} holds a tensor {name!r:.80} that this LLaMA configuration does not have")
    if name in seen: raise CheckpointError(f"{src} holds the tensor {name!r:.80} twice")
    if tuple(t.shape) != want[name]:
      raise CheckpointError(f"{src}: {name!r:.80} has shape {tuple(t.shape)} but the config implies {want[name]}")
    seen.add(name)
  if missing := sorted(set(want) - seen):
    raise CheckpointError(f"{src} lacks {len(missing)} weight(s) the config needs, e.g. '{missing[0]}'")
  check_parallel(args, len(devices), "tp")
  model = Transformer(args, init=False)
  pending: list[Tensor] = []   # realised a layer's worth at a time: one schedule each, not one per tensor
  for i in range(len(pairs)):               # a quantised matrix: its layer becomes its compact twin, or dequantised
    (name, t), pairs[i] = pairs[i], None   # let go of each source view once it is realised
    *parents, layer, leaf = name.split(".")
    obj = model
    for part in parents: obj = obj[int(part)] if part.isdigit() else getattr(obj, part)
    if isinstance(t, quant.Packed) and compact and len(devices) == 1 and t.ggml_type in quant.FORMATS and t.ndim == 2:
      setattr(obj, layer, q := t.module(devices[0], dtype, embedding=layer == "tok_embeddings"))
      pending += q.parts.values()
    else:
      if isinstance(t, quant.Packed): t = _bits(t.dequantised(devices[0]))
      t = place(name, t, devices, "tp")      # off the disk first (disk tensors cannot be cast in place); split under tp
      if t.dtype == dtypes.uint16:           # bfloat16 carried as its bits (see _bits): keep it, or widen exactly
        if dtype in (None, dtypes.bfloat16): t = t.contiguous().realize().bitcast(dtypes.bfloat16)
        else: t = (t.cast(dtypes.uint32) << 16).bitcast(dtypes.float32)
      if dtype is not None: t = t.cast(dtype)
      setattr(getattr(obj, layer), leaf, t := t.contiguous())
      pending.append(t)
    if len(pending) >= len(layer_shapes(args)) or i == len(pairs) - 1:
      Tensor.realize(*pending)
      pending.clear()
      for f in files: drop_file_pages(str(f.resolve()))
  model.freqs = place("freqs", model.freqs, devices, "tp").realize()
  return model

def _bits(t: Tensor) -> Tensor:
  """bfloat16 weights travel as raw uint16 bits until _build: copies, permutations and concatenations then compile
  as integer kernels, which every backend has (Debian 12's clang 14 cannot compile CPU kernels that touch __bf16)."""
  return t.bitcast(dtypes.uint16) if t.dtype == dtypes.bfloat16 else t

def _safetensors(fn: pathlib.Path) -> dict[str, Tensor]: return {k: _bits(t) for k, t in read_safetensors(fn).items()}

def _beside(*candidates: pathlib.Path) -> Callable[[], Tokenizer] | None:
  """The first tokenizer file that exists among the candidates, loaded when called."""
  return next(((lambda c=c: load_tokenizer(c)) for c in candidates if c.is_file()), None)

# ----- our own format: config.json (ModelArgs) + model.safetensors (Meta names) + tokenizer.model or .gguf -----
def _read_ours(path: pathlib.Path, device) -> Reader:
  cfg, src, weights = _json(path / "config.json"), path / "config.json", path / "model.safetensors"
  fields = dataclasses.fields(ModelArgs)
  if extra := sorted(set(cfg) - {f.name for f in fields}): raise CheckpointError(f"{src} has unknown settings {extra}")
  # each setting checked against its ModelArgs annotation ('int | None' is an optional positive int)
  kw = {f.name: _get(cfg, f.name, f.type.split(" ")[0], src, f.default) for f in fields}
  tensors, args = _safetensors(weights), _model_args(path, _file_bytes([weights]), **kw)
  return args, tensors.items(), _beside(path / "tokenizer.model", path / "tokenizer.gguf"), [weights]

def save(model: Transformer, path, tokenizer: Tokenizer | None = None) -> None:
  """Write `model` (and its tokenizer, under tokenizer.file_name) as our own format directory, atomically: built beside
  `path`, then swapped in. An existing directory (train.py's out/, which also holds training state) keeps its other
  files."""
  path = pathlib.Path(path)
  if path.exists() and not path.is_dir(): raise CheckpointError(f"{path} exists and is not a directory")
  if any(dtypes.is_int(t.dtype) for t in learned(model).values()):
    raise CheckpointError("a compact (quantised) model cannot be saved: load it with compact=False")
  tmp = staging_dir(path)
  (tmp / "config.json").write_text(json.dumps(model.args.to_dict(), indent=2) + "\n")
  safe_save(learned(model), str(tmp / "model.safetensors"))
  if tokenizer is not None: tokenizer.save(tmp / tokenizer.file_name)
  publish_dir(tmp, path)

# ----- Karpathy's llama2.c .bin: float32 arrays, each weight kind stacked across layers -----
# legacy (version 0): 7 int32 header; version 1: 256-byte header starting with the magic "ak42" (layouts in
# llama2.c export.py, summarised in shared/fixtures/README.md)
_LLAMA2C_MAGIC = 0x616B3432

def _llama2c_plausible(dim: int, hidden: int, layers: int, heads: int, kv_heads: int, vocab: int, seq: int) -> bool:
  return 0 < heads <= dim < 1 << 17 and 0 < kv_heads <= heads and 0 < hidden < 1 << 20 and 0 < layers < 1 << 12 \
         and 0 < vocab < 1 << 24 and 0 < seq < 1 << 24 and dim % heads == 0 and dim // heads % 2 == 0

def _llama2c_header(path: pathlib.Path) -> tuple[int, tuple[int, ...], bool, int] | None:
  """(version, (dim, hidden, layers, heads, kv_heads, vocab, seq_len), shared classifier, weights offset), or None
  when the start of the file is not a plausible llama2.c header (the legacy layout has no magic to go by)."""
  with open(path, "rb") as f: head = f.read(256)
  if len(head) >= 8 and struct.unpack("<I", head[:4])[0] == _LLAMA2C_MAGIC:
    if (version := struct.unpack("<i", head[4:8])[0]) != 1:
      raise CheckpointError(f"{path} is a llama2.c version-{version} export; "
                            "only the float32 legacy and version-1 layouts are supported")
    if len(head) < 256: raise CheckpointError(f"{path} is truncated inside its llama2.c header")
    cfg, shared = struct.unpack("<7i", head[8:36]), head[36]
    if not _llama2c_plausible(*cfg) or shared > 1 or any(head[37:]):   # export.py pads the header with zeros
      raise CheckpointError(f"{path} has a corrupt llama2.c version-1 header (dim, hidden, layers, heads, kv_heads, "
                            f"vocab, seq_len = {cfg}, shared classifier byte {shared})")
    return 1, cfg, shared == 1, 256
  if len(head) < 28: return None
  dim, hidden, layers, heads, kv_heads, vocab, seq = struct.unpack("<7i", head[:28])
  cfg = (dim, hidden, layers, heads, kv_heads, abs(vocab), seq)
  # a negative vocab_size says an untied classifier follows the weights
  return (0, cfg, vocab > 0, 28) if _llama2c_plausible(*cfg) else None

def _read_llama2c(path: pathlib.Path, device) -> Reader:
  version, (dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq), shared, offset = _llama2c_header(path)
  args = _model_args(path, size := path.stat().st_size, dim=dim, n_layers=n_layers, n_heads=n_heads,
                     n_kv_heads=n_kv_heads, vocab_size=vocab, hidden_dim=hidden, norm_eps=1e-5, max_seq_len=seq,
                     tie_embeddings=shared)    # llama2.c's model.py: eps 1e-5, theta 1e4
  names = {"tok_embeddings": "tok_embeddings.weight", "norm": "norm.weight", "output": "output.weight",
           "attention_norm": "layers.{}.attention_norm.weight", "ffn_norm": "layers.{}.ffn_norm.weight",
           **{w: f"layers.{{}}.attention.{w}.weight" for w in ("wq", "wk", "wv", "wo")},
           **{w: f"layers.{{}}.feed_forward.{w}.weight" for w in ("w1", "w2", "w3")}}
  order = ("tok_embeddings attention_norm wq wk wv wo ffn_norm w1 w2 w3 norm freq_cis" if version == 0 else
           "attention_norm ffn_norm norm tok_embeddings wq wk wv wo w1 w2 w3").split()
  if not shared: order.append("output")
  shapes, layout = weight_shapes(args), []       # (Meta name pattern, shape, byte offset of layer 0, bytes per layer)
  for kind in order:                              # freq_cis: the legacy RoPE table, skipped (ours is computed)
    shape = (2, seq, args.head_dim // 2) if kind == "freq_cis" else shapes[names[kind].format(0)]
    layout.append((names.get(kind), shape, offset, per := 4 * math.prod(shape)))
    offset += per * (n_layers if "{}" in names.get(kind, "") else 1)
  if offset != size:
    why = "truncated, or a corrupt header" if size < offset else "a corrupt header, or not a llama2.c checkpoint"
    raise CheckpointError(f"{path} has {size:,} bytes but its llama2.c header describes {offset:,} ({why})")
  disk = Tensor(path)
  weights = [(name.format(i), disk[start + i * per:start + (i + 1) * per].bitcast(dtypes.float32).reshape(shape))
             for name, shape, start, per in layout if name is not None for i in range(n_layers if "{}" in name else 1)]
  return args, weights, _beside(path.parent / "tokenizer.model", path.parent / "tokenizer.bin"), [path]

# ----- Meta's release: params.json + consolidated.NN.pth, one per model-parallel rank -----
# fairscale split each matrix across ranks as our tensor parallel does (parallel.TP_SPLIT_AXIS: column-parallel
# layers by output rows, row-parallel wo and w2 by input columns), except the embedding, split by columns (dim);
# norms are replicated on every rank.
META_SPLIT_AXIS = {k: v for k, v in TP_SPLIT_AXIS.items() if k != "cache_kv"} | {"tok_embeddings": 1}

def _read_meta(path: pathlib.Path, device) -> Reader:
  params, src = _json(path / "params.json"), path / "params.json"
  get = lambda key, kind, *default: _get(params, key, kind, src, *default)
  if not (shards := sorted(path.glob("consolidated.*.pth"))):
    raise CheckpointError(f"{path} has params.json but no consolidated.NN.pth files")
  if missing := [r for r in range(len(shards)) if path / f"consolidated.{r:02d}.pth" not in shards]:
    raise CheckpointError(f"{path} has {len(shards)} consolidated.*.pth files "
                          f"but not consolidated.{missing[0]:02d}.pth (an incomplete download?)")
  if get("use_scaled_rope", "bool", False):
    raise CheckpointError(f"{path} uses Llama 3.1's scaled RoPE, which this model does not implement")
  states = []
  for s in shards:     # lazy views into each zip: no weight is read until a tensor is realised
    # all but rope.freqs, Meta's saved RoPE table: ours is computed
    states.append({k: _bits(v) for k, v in read_torch_zip(s).items() if k != "rope.freqs"})
    if set(states[-1]) != set(states[0]): raise CheckpointError(f"{s} holds different tensors from {shards[0]}")
    if bad := next((k for k, v in states[-1].items() if v.shape != states[0][k].shape), None):
      raise CheckpointError(f"{s} gives {bad!r:.80} the shape {states[-1][bad].shape}, "
                            f"{shards[0].name} gives it {states[0][bad].shape}")
  first = states[0]
  for k in ("tok_embeddings.weight", "layers.0.feed_forward.w1.weight"):
    if first.get(k) is None or first[k].ndim != 2: raise CheckpointError(f"{shards[0]} has no 2-D tensor '{k}'")
  args = _model_args(path, _file_bytes(shards), dim=get("dim", "int"), n_layers=get("n_layers", "int"),
                     n_heads=get("n_heads", "int"), n_kv_heads=get("n_kv_heads", "int", None),
                     vocab_size=first["tok_embeddings.weight"].shape[0],   # params.json says -1 in the LLaMA 1 release
                     hidden_dim=first["layers.0.feed_forward.w1.weight"].shape[0] * len(states),
                     norm_eps=get("norm_eps", "float", 1e-6), rope_theta=get("rope_theta", "float", 10000.0),
                     max_seq_len=get("max_seq_len", "int", 2048), tie_embeddings="output.weight" not in first)
  def merged(name: str) -> Tensor:
    axis = META_SPLIT_AXIS.get(name.split(".")[-2] if "." in name else name)
    # a tensor too flat to split on its axis is left as it is, for _build to refuse by its shape
    if len(states) == 1 or axis is None or first[name].ndim <= axis: return first[name]
    return Tensor.cat(*(s[name].to(device) for s in states), dim=axis)
  tokenizer = _beside(path / "tokenizer.model", path.parent / "tokenizer.model")   # Meta ships it one level up
  return args, [(name, merged(name)) for name in first], tokenizer, shards

# ----- Hugging Face transformers: config.json + model.safetensors or shards in model.safetensors.index.json -----
_HF_LAYER_NAMES = {**{f"self_attn.{x}_proj": f"attention.w{x}" for x in "qkvo"}, "mlp.gate_proj": "feed_forward.w1",
                   "mlp.down_proj": "feed_forward.w2", "mlp.up_proj": "feed_forward.w3",
                   "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm"}
_HF_NAMES = {"model.embed_tokens.weight": "tok_embeddings.weight", "model.norm.weight": "norm.weight",
             "lm_head.weight": "output.weight"}

def _unpermute_rotate_half(w: Tensor, heads: int) -> Tensor:
  """HF's conversion script reorders each head's q/k rows so its rotate-half RoPE equals Meta's interleaved pairs:
  row (h, 2i+j) of Meta goes to row (h, j·head_dim/2 + i) of HF. This puts them back."""
  return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).transpose(1, 2).reshape(w.shape)

def _hf_files(path: pathlib.Path) -> dict[pathlib.Path, dict[str, Tensor]]:
  """Every safetensors file of a Hugging Face directory with its tensors, the shards checked against the index."""
  if not (index := path / "model.safetensors.index.json").is_file():
    if not (path / "model.safetensors").is_file():
      raise CheckpointError(f"{path} has neither model.safetensors nor model.safetensors.index.json "
                            "(PyTorch .bin files are not read)")
    return {path / "model.safetensors": _safetensors(path / "model.safetensors")}
  weight_map = _json(index).get("weight_map")
  if not (isinstance(weight_map, dict) and all(isinstance(f, str) for f in weight_map.values())):
    raise CheckpointError(f"{index} has no weight_map of tensor names to file names")
  for name in (names := list(dict.fromkeys(weight_map.values()))):
    if pathlib.Path(name).name != name or name in ("", ".", ".."):
      raise CheckpointError(f"{index} names {name!r:.80}, which is not a file beside it")
    if not (path / name).is_file():
      raise CheckpointError(f"{index} lists the shard {name}, which is missing (an incomplete download?)")
  files = {path / name: _safetensors(path / name) for name in names}
  for f in files:
    if set(files[f]) != (listed := {k for k, v in weight_map.items() if v == f.name}):
      odd = sorted(set(files[f]) ^ listed)[0]
      raise CheckpointError(f"{f} does not hold the tensors {index.name} lists for it (e.g. {odd!r:.80})")
  return files

def _read_hf(path: pathlib.Path, device) -> Reader:
  cfg, src = _json(path / "config.json"), path / "config.json"
  get = lambda key, kind, *default: _get(cfg, key, kind, src, *default)
  if (kind := cfg.get("model_type")) is None:   # a partial or hand-written config.json
    raise CheckpointError(f"{src} names no model_type (a llama checkpoint's says \"llama\")")
  if kind != "llama": raise CheckpointError(f"{path} holds a {kind!r:.40} model, not a llama one")
  if cfg.get("rope_scaling"):
    raise CheckpointError(f"{path} uses RoPE scaling {cfg['rope_scaling']!r:.80}, which this model does not implement")
  if cfg.get("attention_bias") or cfg.get("mlp_bias"):
    raise CheckpointError(f"{path} has biases in its linear layers; LLaMA has none")
  kw = dict(dim=get("hidden_size", "int"), n_layers=get("num_hidden_layers", "int"),
            n_heads=get("num_attention_heads", "int"), n_kv_heads=get("num_key_value_heads", "int", None),
            vocab_size=get("vocab_size", "int"), hidden_dim=get("intermediate_size", "int"),
            norm_eps=get("rms_norm_eps", "float", 1e-6), rope_theta=get("rope_theta", "float", 10000.0),
            max_seq_len=get("max_position_embeddings", "int", 2048),
            tie_embeddings=get("tie_word_embeddings", "bool", False))
  files = _hf_files(path)
  args = _model_args(path, _file_bytes(list(files)), **kw)
  if get("head_dim", "int", args.head_dim) != args.head_dim:
    raise CheckpointError(f"{path} has head_dim {cfg['head_dim']} != hidden_size / heads")
  def weights() -> Iterator[tuple[str, Tensor]]:
    for tensors in files.values():
      for hf_name, t in tensors.items():
        if hf_name.endswith("rotary_emb.inv_freq") or (hf_name == "lm_head.weight" and args.tie_embeddings): continue
        if m := re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", hf_name):
          name = f"layers.{m[1]}.{_HF_LAYER_NAMES.get(m[2], m[2])}.weight"
        else: name = _HF_NAMES.get(hf_name, hf_name)
        heads = args.n_heads if name.endswith("wq.weight") else args.n_kv_heads
        # a q/k matrix of the wrong shape is left as it is, for _build to refuse
        if name.endswith(("wq.weight", "wk.weight")) and t.ndim == 2 and t.shape[0] % (2 * heads) == 0:
          t = _unpermute_rotate_half(t.to(device), heads)
        yield name, t
  return args, weights(), _beside(path / "tokenizer.model"), list(files)

# ----- GGUF (llama.cpp): metadata key/values, tensor infos, aligned tensor data -----
_GGUF_NAMES = {"token_embd": "tok_embeddings", "output_norm": "norm", "output": "output", "attn_norm": "attention_norm",
               "attn_q": "attention.wq", "attn_k": "attention.wk", "attn_v": "attention.wv",
               "attn_output": "attention.wo", "ffn_norm": "ffn_norm", "ffn_gate": "feed_forward.w1",
               "ffn_down": "feed_forward.w2", "ffn_up": "feed_forward.w3"}

def _read_gguf(path: pathlib.Path, device) -> Reader:
  # only the header is parsed here (gguf.read_header checks it against the file's size); each tensor's bytes are read
  # one at a time, where gguf_load would first copy the whole file into memory: kept compact (quant.py) or dequantised
  try: header = gguf.read_header(path)
  except gguf.GGUFError as e: raise CheckpointError(f"{path} {e}") from None
  kv = header.metadata
  get = lambda key, kind, *default: _get(kv, key, kind, path, *default)
  if (arch := kv.get("general.architecture")) != "llama":
    raise CheckpointError(f"{path} holds a {arch!r:.40} model, not a llama one")
  if get("split.count", "int", 1) > 1:
    raise CheckpointError(f"{path} is one part of a split GGUF; merge the parts with llama.cpp's gguf-split first")
  dims = {t.name: t.shape for t in header.tensors}
  if get("llama.rope.scaling.type", "str", "none") != "none" or "rope_freqs.weight" in dims:
    raise CheckpointError(f"{path} uses RoPE scaling, which this model does not implement")
  if len(dims.get("token_embd.weight", ())) != 2: raise CheckpointError(f"{path} has no 2-D token_embd.weight tensor")
  n_heads = get("llama.attention.head_count", "int")
  f32 = lambda x: float(str(np.float32(x)))  # GGUF holds float32: 1e-5 reads back as 9.9999997e-06; recover the decimal
  args = _model_args(path, header.file_size, dim=get("llama.embedding_length", "int"),
                     n_layers=get("llama.block_count", "int"), n_heads=n_heads,
                     n_kv_heads=get("llama.attention.head_count_kv", "int", n_heads),
                     vocab_size=dims["token_embd.weight"][1], hidden_dim=get("llama.feed_forward_length", "int"),
                     norm_eps=f32(get("llama.attention.layer_norm_rms_epsilon", "float", 1e-5)),
                     rope_theta=f32(get("llama.rope.freq_base", "float", 10000.0)),
                     max_seq_len=get("llama.context_length", "int", 2048), tie_embeddings="output.weight" not in dims)
  if get("llama.rope.dimension_count", "int", args.head_dim) != args.head_dim:
    raise CheckpointError(f"{path} applies RoPE to only part of each head")
  disk = Tensor(path)
  def weights() -> Iterator[tuple[str, Tensor]]:
    for t in header.tensors:
      # llama.cpp's llama converter reordered q/k rows for adjacent-pair ("NORM") RoPE: Meta's order, nothing to undo
      parts = t.name.split(".")
      name = ".".join(["layers", parts[1], _GGUF_NAMES.get(parts[2], parts[2]), *parts[3:]]
                      if parts[0] == "blk" and len(parts) > 2 else [_GGUF_NAMES.get(parts[0], parts[0]), *parts[1:]])
      data, shape = disk[t.start:t.start + t.nbytes], tuple(reversed(t.shape))
      yield name, quant.Packed(data, t.ggml_type, shape)   # read by _build, compact or as floats
  return args, weights(), (lambda: tokenizer_from_gguf(kv)) if "tokenizer.ggml.model" in kv else None, [path]

# ----- the entry point -----
_READERS: dict[str, Callable[[pathlib.Path, object], Reader]] = {
  "our own": _read_ours, "llama2.c": _read_llama2c, "Meta": _read_meta, "Hugging Face": _read_hf, "GGUF": _read_gguf}

def _sniff(path: pathlib.Path) -> str:
  if not path.exists(): raise CheckpointError(f"{path} does not exist")
  if path.is_dir():
    if (cfg := path / "config.json").is_file(): return "our own" if "n_layers" in _json(cfg) else "Hugging Face"
    if (path / "params.json").is_file(): return "Meta"
    raise CheckpointError(f"{path} is a directory without config.json or params.json, "
                          "so it is no checkpoint load() knows")
  with open(path, "rb") as f: magic = f.read(4)
  if magic == b"GGUF": return "GGUF"
  if _llama2c_header(path) is not None: return "llama2.c"
  raise CheckpointError(f"{path} is not a checkpoint load() knows "
                        "(GGUF, llama2.c .bin, or a Meta, Hugging Face or own-format directory)")

def load(path, tokenizer=None, dtype=None, device=None, compact=False) -> tuple[Transformer, Tokenizer | None]:
  """Open a checkpoint in any of the five formats: (model, tokenizer or None). `tokenizer` is a tokenizer file that
  overrides or adds one; `dtype` (a tinygrad dtype or its name) casts every weight. By default what is stored is kept:
  float16 and bfloat16 stay half precision (a CPU needs a clang newer than Debian 12's 14 for bfloat16: pass
  dtype="float32"), quantised GGUF tensors dequantise to float32 (training needs that); compact=True (inference, one
  device) keeps GGUF's Q8_0, Q4_0, Q4_1, Q4_K and Q6_K matrices in their blocks, dequantised inside each product to
  `dtype` (default quant.compute_dtype). `device` defaults to tinygrad's; a tuple of devices loads the model
  tensor-parallel (§2.4), each tensor split as it is read, so no device ever holds the whole model."""
  path = pathlib.Path(path)
  if not path.exists(): recover_dir(path)   # a save killed between publish_dir's two renames: the previous checkpoint
  devices = tuple(device) if isinstance(device, (tuple, list)) else (device or Device.DEFAULT,)
  if isinstance(dtype, str): dtype = getattr(dtypes, dtype)
  fmt = None
  try:
    fmt = _sniff(path)
    args, weights, make_tokenizer, files = _READERS[fmt](path, devices[0])
    model = _build(args, weights, files, dtype, devices, path, compact)
  except (CheckpointError, ParallelError): raise
  except OSError as e:
    raise CheckpointError(f"{path} could not be read ({e.strerror or e}: {e.filename or path})") from None
  except Exception as e:   # a last resort (the readers check what they read): one sentence for a damage none foresaw
    where = f" in {fmt} format" if fmt else ""
    raise CheckpointError(f"{path} could not be read as a checkpoint{where} ({type(e).__name__}: {one_line(e)})") from e
  if tokenizer is not None and (make_tokenizer := _beside(pathlib.Path(tokenizer))) is None:
    raise CheckpointError(f"tokenizer file {tokenizer} does not exist")
  try: return model, make_tokenizer() if make_tokenizer else None
  except TokenizerError as e: raise CheckpointError(f"the tokenizer for {path} could not be loaded: {e}") from None

