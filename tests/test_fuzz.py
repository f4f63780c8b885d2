"""Corrupt checkpoints (issue 9; tokenizer files: test_fuzz_tokenizers.py): one small valid file of each of the five
formats, broken the ways downloads break: truncated at any byte, bytes flipped in the header region, header
fields set to absurd values, shards missing or extra, an index naming files that are not there. Every case either
loads or raises CheckpointError (TokenizerError) in one sentence naming the file, found by the reader's own checks
(never load()'s last-resort wrapper), without a hang and without allocating far beyond the file's size."""
import io, itertools, json, math, pathlib, pickle, re, shutil, struct, zipfile
import pytest
from hypothesis import strategies as st
from tinygrad import Tensor, dtypes
import checkpoint, gguf, llama
import reference as ref
from fuzzing import (ABSURD, JSON_ABSURD, assert_one_line, binary_fields, cli, files_of, flip, fuzzed, poke, set_field,
                     set_json, truncate)
from writers import (TensorRef, Storage, TorchPickler, model_from, small_args, write_gguf, write_hf, write_llama2c,
                     write_meta)

ARGS = small_args(n_layers=1)      # one config for every format: the few cases that load reuse the same kernels
FORMATS = ["own", "llama2c-v0", "llama2c-v1", "meta", "hf", "gguf"]

# ***** the valid originals and where their headers are *****

def safetensors_header(path: pathlib.Path) -> tuple[dict, bytes]:
  raw = path.read_bytes()
  n = struct.unpack("<Q", raw[:8])[0]
  return json.loads(raw[8:8 + n]), raw[8 + n:]

def write_safetensors_header(path: pathlib.Path, header: dict, data: bytes):
  j = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(j)) + j + data)

def torch_zip_payloads(path: pathlib.Path) -> list[tuple[int, int]]:
  """The byte ranges of a torch zip's storages (the weights); everything else is its structure."""
  raw, out = path.read_bytes(), []
  with zipfile.ZipFile(path) as z:
    for i in z.infolist():
      if "/data/" in i.filename:
        start = i.header_offset + 30 + sum(struct.unpack("<HH", raw[i.header_offset + 26:i.header_offset + 30]))
        out.append((start, start + i.file_size))
  return out

def header_ranges(path: pathlib.Path) -> list[tuple[int, int]]:
  """The byte ranges of a checkpoint file that are header, not weight data."""
  size = path.stat().st_size
  if path.suffix == ".json": return [(0, size)]
  if path.suffix == ".safetensors": return [(0, 8 + struct.unpack("<Q", path.read_bytes()[:8])[0])]
  if path.suffix == ".bin": return [(0, 256 if path.read_bytes()[:4] == struct.pack("<I", 0x616B3432) else 28)]
  if path.suffix == ".gguf": return [(0, min(t.start for t in gguf.read_header(path).tensors))]
  assert path.suffix == ".pth"
  edges = [0, *itertools.chain.from_iterable(torch_zip_payloads(path)), size]
  return [(a, b) for a, b in zip(edges[::2], edges[1::2]) if b > a]

def weight_ranges(path: pathlib.Path) -> list[tuple[int, int]]:
  """The byte ranges of a checkpoint file that hold weights."""
  if path.suffix == ".json": return []
  if path.suffix == ".pth": return torch_zip_payloads(path)
  return [(header_ranges(path)[0][1], path.stat().st_size)]

@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> dict[str, pathlib.Path]:
  root, w = tmp_path_factory.mktemp("originals"), ref.random_weights(ARGS, seed=1)
  checkpoint.save(model_from(w, ARGS), root / "own")
  write_llama2c(root / "v0.bin", w, ARGS, 0)
  write_llama2c(root / "v1.bin", w, ARGS, 1)
  write_meta(root / "meta", w, ARGS, 2)
  write_hf(root / "hf", w, ARGS, 2)
  write_gguf(root / "m.gguf", w, ARGS, {"token_embd": 8, "attn_q": 3, "ffn_down": 8})   # Q8_0 and Q4_1 blocks
  return {
    "own": root / "own", "llama2c-v0": root / "v0.bin", "llama2c-v1": root / "v1.bin", "meta": root / "meta",
    "hf": root / "hf", "gguf": root / "m.gguf"
  }

def load_model(path): return checkpoint.load(path)

def test_the_watch_catches_what_it_is_for(originals, watch):
  """The checks themselves: a loader that allocates far beyond the file, or raises from load()'s last resort, fails."""
  small = originals["llama2c-v1"]
  with pytest.raises(AssertionError, match="the process grew"): watch(lambda p: bytearray(256 << 20), small)
  with pytest.raises(AssertionError, match="bytes of tensors"):
    watch(lambda p: Tensor.zeros(10**8).contiguous().realize(), small)
  with pytest.raises(AssertionError, match="last resort caught"):
    watch(lambda p: checkpoint.load(p, dtype=dtypes.int32, device=object()), small)

def rezip(f: pathlib.Path, replace: dict[str, bytes | None]):
  """Rewrite a zip with some entries replaced (None: removed), CRCs recomputed: what reaches the record checks."""
  with zipfile.ZipFile(f) as z: entries = {i.filename: z.read(i) for i in z.infolist()}
  with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as z:
    for name, data in {**entries, **replace}.items():
      if data is not None: z.writestr(name, data)

class OddTensorRef(TensorRef):
  """A tensor record with a chosen storage offset and strides."""

  def __init__(self, storage: Storage, shape: tuple, offset: int, stride: tuple):
    super().__init__(storage, shape)
    self.offset, self.stride = offset, stride
  def __reduce__(self):
    fn, (storage, _, shape, _, *rest) = super().__reduce__()
    return fn, (storage, self.offset, shape, self.stride, *rest)

def pickled(state) -> bytes:
  buf = io.BytesIO()
  TorchPickler(buf, protocol=2).dump(state)
  return buf.getvalue()

TORCH_STORAGE = {dtypes.float32: "FloatStorage", dtypes.float16: "HalfStorage"}

def record_mutation(shard: pathlib.Path, tensor: int, what: str, value: int):
  """Replace data.pkl by one whose `tensor`-th record has an absurd shape, storage size, offset, stride or storage
  key."""
  state = {}
  for i, (name, t) in enumerate(checkpoint.read_torch_zip(shard).items()):   # write_torch_zip keys storage i by str(i)
    storage, shape = Storage(str(i), TORCH_STORAGE[t.dtype], math.prod(t.shape)), t.shape
    offset, stride = 0, tuple(math.prod(shape[d + 1:]) for d in range(len(shape)))
    if i == tensor:
      if what == "shape": shape = (value,) + shape[1:]
      if what == "numel": storage.numel = value
      if what == "offset": offset = value
      if what == "stride": stride = (value,) + stride[1:]
      if what == "key": storage.key = str(value)
    state[name] = OddTensorRef(storage, shape, offset, stride)
  rezip(shard, {"archive/data.pkl": pickled(state)})

def set_entry(f: pathlib.Path, tensor: str, field: str, value):
  """Set one field of a safetensors header entry."""
  header, data = safetensors_header(f)
  header[tensor][field] = value
  write_safetensors_header(f, header, data)

def field_mutations(ck: pathlib.Path) -> list[tuple]:
  """(function value -> None that sets one header field of the copy `ck`, the absurd values to try) for every field."""
  out = []
  for f in files_of(ck):
    if f.suffix == ".json":
      obj = json.loads(f.read_text())
      keys = [("weight_map", k)
              for k in obj["weight_map"]] + [("weight_map",)] if "weight_map" in obj else [(k,) for k in obj]
      out += [(lambda v, f=f, k=k: set_json(f, k, v), JSON_ABSURD) for k in keys]
    elif f.suffix == ".safetensors":
      out.append((lambda v, f=f: poke(f, 0, "Q", v), ABSURD))      # the header's length
      out += [(lambda v, f=f, n=n, field=field: set_entry(f, n, field, v if field == "dtype" else [v, v]), JSON_ABSURD)
              for n in safetensors_header(f)[0] for field in ("shape", "data_offsets", "dtype")]
    elif f.suffix == ".pth":
      out += [(lambda v, f=f, t=t, what=what: record_mutation(f, t, what, v), ABSURD) for t in (0, 3)
              for what in ("shape", "numel", "offset", "stride", "key")]
    elif f.suffix in (".bin", ".gguf"):
      out += [(lambda v, f=f, n=n: set_field(f, n, v), ABSURD) for n in binary_fields(f)]
  return out

def file_mutations(ck: pathlib.Path) -> list:
  """Shard-level damage to the copy `ck` of a Meta or Hugging Face directory: one missing, one extra, one renamed."""
  shards = sorted(p for p in ck.iterdir() if p.suffix in (".pth", ".safetensors"))
  extra = "consolidated.02.pth" if shards[0].suffix == ".pth" else "model-00003-of-00002.safetensors"
  away = "consolidated.07.pth" if shards[0].suffix == ".pth" else "model-00009-of-00002.safetensors"
  return [*(lambda s=s: s.unlink() for s in shards), *(lambda s=s: shutil.copy(s, ck / extra) for s in shards),
          *(lambda s=s: s.rename(ck / away) for s in shards)]

@st.composite
def damage(draw, ck: pathlib.Path) -> str:
  """Apply one kind of damage to the copy `ck`, drawn so that hypothesis shrinks a failure to the simplest damage."""
  files = files_of(ck)
  shards = ["files"] if ck.is_dir() and not (ck / "model.safetensors").exists() else []
  kind = draw(
    st.sampled_from(["truncate", "flip", "field", *shards, *(["pickle"] if (ck / "params.json").exists() else [])]))
  if kind == "truncate":
    f = draw(st.sampled_from([f for f in files if f.stat().st_size]))
    truncate(f, draw(st.integers(0, f.stat().st_size - 1)))
    if f.suffix == ".json": kind = "truncate json"           # its trailing newline may go without harm
  elif kind == "flip":
    regions = [(f, a, b) for f in files for a, b in header_ranges(f)]   # of the intact copy, before any flip
    for _ in range(draw(st.integers(1, 3))):
      f, a, b = draw(st.sampled_from(regions))
      flip(f, draw(st.integers(a, b - 1)), draw(st.integers(1, 255)))
  elif kind == "field":
    mutate, values = draw(st.sampled_from(field_mutations(ck)))
    mutate(draw(st.sampled_from(values)))
  elif kind == "pickle":   # a garbled data.pkl under a valid CRC: what reaches the unpickler
    shard = draw(st.sampled_from([f for f in files if f.suffix == ".pth"]))
    with zipfile.ZipFile(shard) as z: pkl = bytearray(z.read("archive/data.pkl"))
    for at in draw(st.lists(st.integers(0, len(pkl) - 1), min_size=1, max_size=3)): pkl[at] ^= draw(st.integers(1, 255))
    rezip(shard, {"archive/data.pkl": bytes(pkl)})
  else: draw(st.sampled_from(file_mutations(ck)))()
  return kind

@fuzzed("fmt", FORMATS)
def test_corrupt_checkpoint_loads_or_one_sentence(originals, sandbox, watch, fmt, data):
  ck = sandbox(originals[fmt])
  kind = data.draw(damage(ck))
  msg = watch(load_model, ck)
  # a truncated weight file is always refused: every format's header says how long its data is
  if kind == "truncate": assert msg is not None

@fuzzed("fmt", FORMATS, cases=2)
def test_flip_in_weight_data_still_loads(originals, sandbox, watch, fmt, data):
  """A flipped bit inside weight data cannot be told from a real weight: the checkpoint loads."""
  ck = sandbox(originals[fmt])
  f = data.draw(st.sampled_from([f for f in files_of(ck) if weight_ranges(f)]))
  a, b = data.draw(st.sampled_from(weight_ranges(f)))
  flip(f, data.draw(st.integers(a, b - 1)), data.draw(st.integers(1, 255)))
  assert watch(load_model, ck) is None

def test_shape_table_matches_the_model():
  """The names and shapes a checkpoint is checked against before anything is allocated are the model's own."""
  for args in (ARGS, small_args(tie_embeddings=True,
                                n_kv_heads=4), small_args(n_layers=3, hidden_dim=None, multiple_of=16)):
    assert llama.weight_shapes(args) == {
      k: v.shape
      for k, v in llama.learned(llama.Transformer(args, init=False)).items()
    }

# ***** each kind of damage, its own reason *****

class Foreign:
  def __reduce__(self): return (shutil.rmtree, ("/nonexistent",))   # what a hostile or garbled pickle could name

HF_SHARD, HF_INDEX = "model-00001-of-00002.safetensors", "model.safetensors.index.json"
REASONS = [ # (format, damage to the copy, what the error must say)
  ("own", lambda ck: truncate(ck / "model.safetensors", 30000),
   "model.safetensors is truncated: .* ends at data offset"),
  ("own", lambda ck: poke(ck / "model.safetensors", 0, "Q", 2**63), "header claims 9,223,372,036,854,775,808 bytes"),
  ("own", lambda ck: set_entry(ck / "model.safetensors", "norm.weight", "dtype", "I32"),
   "stores 'norm.weight' as 'I32', not one of the float types"),
  ("own", lambda ck: set_entry(ck / "model.safetensors", "norm.weight", "shape", [10**6, 10**6]),
   r"shape \(1000000, 1000000\) needs 4,000,000,000,000"),
  ("own", lambda ck: set_entry(ck / "model.safetensors", "norm.weight", "data_offsets", [-8, 120]),
   "malformed safetensors entry for 'norm.weight'"),
  ("own", lambda ck: set_entry(
    ck / "model.safetensors", "layers.0.ffn_norm.weight", "data_offsets",
    safetensors_header(ck / "model.safetensors")[0]["layers.0.attention_norm.weight"]["data_offsets"]),
   "overlapping or corrupt offsets"),
  ("own", lambda ck: set_json(ck / "config.json",
                              ("n_layers",), 10**9), "describes a model of .* parameters, more than its .* bytes"),
  ("own", lambda ck: set_json(ck / "config.json",
                              ("max_seq_len",), 10**9), "claims a context of 1,000,000,000 tokens, whose RoPE table"),
  ("own", lambda ck: set_json(ck / "config.json",
                              ("dim",), "32"), "config.json gives 'dim' the value '32', not a positive integer"),
  ("own", lambda ck: set_json(ck / "config.json",
                              ("n_experts",), 8), r"config.json has unknown settings \['n_experts'\]"),
  ("own", lambda ck: (ck / "config.json").write_text('{"dim": 32,'), "config.json is not valid JSON"),
  ("own", lambda ck: (ck / "config.json").write_text("[" * 100000), "config.json is not valid JSON"),
  ("own", lambda ck: (ck / "model.safetensors").unlink(), "model.safetensors is missing"),
  ("llama2c-v1", lambda ck: truncate(ck, 30000), "30,000 bytes but its llama2.c header describes .* .truncated"),
  ("llama2c-v1", lambda ck: set_field(ck, "version", 2), "is a llama2.c version-2 export"),
  ("llama2c-v1", lambda ck: set_field(ck, "dim", 2**31 - 1), "corrupt llama2.c version-1 header"),
  ("llama2c-v1", lambda ck: set_field(ck, "padding", 7), "corrupt llama2.c version-1 header"),
  ("llama2c-v1", lambda ck: set_field(ck, "seq_len", 2**23), "claims a context of 8,388,608 tokens"),
  ("llama2c-v1", lambda ck: set_field(ck, "n_kv_heads", 3),
   "inconsistent config: n_heads 4 is not a multiple of n_kv_heads 3"),
  ("llama2c-v1", lambda ck: set_field(ck, "magic", 0x12345678), "is not a checkpoint load.. knows"),
  ("llama2c-v0", lambda ck: set_field(ck, "n_layers", 10**6), "is not a checkpoint load.. knows"),
  ("llama2c-v0", lambda ck: set_field(ck, "seq_len", 2**20),
   "48,540 bytes but its llama2.c header describes 33,601,948 .truncated, or a corrupt header"),
  ("meta", lambda ck: (ck / "consolidated.01.pth").unlink(),
   r"'tok_embeddings.weight' has shape \(64, 16\) but the config implies \(64, 32\)"),
  ("meta", lambda ck:
   (ck / "consolidated.00.pth").unlink(), "has 1 consolidated.*.pth files but not consolidated.00.pth"),
  ("meta", lambda ck: shutil.copy(ck / "consolidated.01.pth", ck / "consolidated.02.pth"),
   "has shape .* but the config implies"),
  ("meta", lambda ck: truncate(ck / "consolidated.01.pth", 5000),
   "consolidated.01.pth is not a usable PyTorch zip checkpoint: .* .truncated or damaged"),
  ("meta",
   lambda ck: rezip(ck / "consolidated.00.pth", {"archive/data.pkl": pickle.dumps({"x": Foreign()}, protocol=2)}),
   "names shutil.rmtree, which a state dict"),
  ("meta", lambda ck: rezip(ck / "consolidated.00.pth", {"archive/data.pkl": b"\x80\x02}q\x00(X\x01\x00\x00\x00a"}),
   "data.pkl cannot be unpickled"),
  ("meta", lambda ck: rezip(ck / "consolidated.00.pth", {"archive/data.pkl": pickle.dumps([1, 2], protocol=2)}),
   "data.pkl holds no dict of tensors"),
  ("meta",
   lambda ck: rezip(ck / "consolidated.00.pth", {"archive/data.pkl": b"\x80\x05\x96" + struct.pack("<Q", 2**40)}),
   "BYTEARRAY8"),
  ("meta", lambda ck: record_mutation(ck / "consolidated.00.pth", 0, "numel", 7),
   "holds 4,096 bytes, not the 28 its record says"),
  ("meta", lambda ck: record_mutation(ck / "consolidated.00.pth", 0, "key", 99),
   "refers to the storage 'archive/data/99', which the zip lacks"),
  ("meta", lambda ck: record_mutation(ck / "consolidated.00.pth", 0, "offset", 10**12),
   "reaches past the end of its storage"),
  ("meta", lambda ck: record_mutation(ck / "consolidated.00.pth", 0, "shape", 10**12),
   "reaches past the end of its storage"),
  ("meta", lambda ck: record_mutation(ck / "consolidated.00.pth", 0, "stride", 5), "is not stored contiguously"),
  ("meta", lambda ck: flip(ck / "consolidated.00.pth", 60, 1), "Bad CRC-32 for file 'archive/data.pkl'"),
  ("meta", lambda ck: set_json(ck / "params.json",
                               ("n_heads",), 0), "params.json gives 'n_heads' the value 0, not a positive integer"),
  ("meta", lambda ck: set_json(ck / "params.json", ("use_scaled_rope",), True), "scaled RoPE"),
  ("hf", lambda ck: (ck / HF_SHARD).unlink(), f"lists the shard {HF_SHARD}, which is missing"),
  ("hf", lambda ck: set_json(ck / HF_INDEX, ("weight_map", "model.norm.weight"), "../model.safetensors"),
   "names '../model.safetensors', which is not a file beside it"),
  ("hf", lambda ck: set_json(ck / HF_INDEX, ("weight_map",), ["model.norm.weight"]),
   "has no weight_map of tensor names to file names"),
  ("hf", lambda ck: set_json(ck / HF_INDEX, ("weight_map", "model.norm.weight"), "model-00002-of-00002.safetensors"),
   "does not hold the tensors .* lists for it"),
  ("hf", lambda ck: set_json(ck / "config.json",
                             ("model_type",), "mistral"), "holds a 'mistral' model, not a llama one"),
  ("hf", lambda ck: set_json(ck / "config.json", ("model_type",), None), "config.json names no model_type"),
  ("hf", lambda ck: set_json(ck / "config.json", ("vocab_size",), 10**12), "describes a model of .* parameters"),
  ("hf", lambda ck: set_json(ck / "config.json",
                             ("hidden_size",), None), "config.json lacks the setting 'hidden_size'"),
  ("hf", lambda ck: set_json(ck / "config.json",
                             ("rope_scaling",), {"type": "linear", "factor": 2.0}), "uses RoPE scaling"),
  ("hf", lambda ck: set_entry(ck / HF_SHARD, "model.norm.weight", "dtype", "F8_E4M3"), "not one of the float types"),
  ("gguf", lambda ck: poke(ck, 0, "I", 0x58554747), "is not a checkpoint load.. knows"),
  ("gguf", lambda ck: set_field(ck, "version", 9), "is GGUF version 9; only versions 2 and 3"),
  ("gguf", lambda ck: set_field(ck, "n_tensors", 2**63),
   "claims .* and 9,223,372,036,854,775,808 tensors, more than the file holds"),
  ("gguf", lambda ck: set_field(ck, "general.architecture.length", 2**40),
   "claims a 1,099,511,627,776-byte string for metadata key 0"),
  ("gguf", lambda ck: set_field(ck, "general.architecture.type", 99),
   "unknown metadata value type 99 for 'general.architecture'"),
  ("gguf", lambda ck: set_field(ck, "token_embd.weight.n_dims", 7), "gives tensor 'token_embd.weight' 7 dimensions"),
  ("gguf", lambda ck: set_field(ck, "token_embd.weight.dim0", 10**12),
   "places tensor 'token_embd.weight' .* outside the file"),
  ("gguf", lambda ck: set_field(ck, "token_embd.weight.type", 99), "stores tensor 'token_embd.weight' as ggml type 99"),
  ("gguf", lambda ck: set_field(ck, "blk.0.attn_q.weight.offset", 1),
   "at offset 1, not a multiple of the alignment 32"),
  ("gguf", lambda ck: set_field(ck, "blk.0.attn_k.weight.offset", 0), "inside the tensor before it"),
  ("gguf", lambda ck: ck.write_bytes(ck.read_bytes().replace(b"llama.block_count", b"llama.block_cOunt")),
   "lacks the setting 'llama.block_count'"),
  ("gguf", lambda ck: truncate(ck, 15000), r"outside the file's 15,000 bytes \(truncated\?\)"),
]

@pytest.mark.parametrize("fmt,damage,reason", REASONS)
def test_each_damage_its_reason(originals, sandbox, watch, fmt, damage, reason):
  ck = sandbox(originals[fmt])
  damage(ck)
  msg = watch(load_model, ck)
  assert msg is not None and re.search(reason, msg), msg

def test_gguf_with_string_head_count(tmp_path, watch):
  write_gguf(tmp_path / "m.gguf", ref.random_weights(ARGS, seed=2), ARGS, {}, {"llama.attention.head_count": "4"})
  assert "gives 'llama.attention.head_count' the value '4', not a positive integer" in watch(
    load_model, tmp_path / "m.gguf")

def test_extra_hf_shard_outside_the_index_is_ignored(originals, sandbox, watch):
  ck = sandbox(originals["hf"])
  shutil.copy(ck / HF_SHARD, ck / "model-00003-of-00002.safetensors")
  assert watch(load_model, ck) is None

def test_generate_cli_on_a_corrupt_checkpoint(originals, sandbox):
  ck = sandbox(originals["gguf"])
  set_field(ck, "blk.0.attn_k.weight.offset", 0)
  assert_one_line(cli("generate.py", ck, "-n", "2"), "generate.py", "inside the tensor before it")


def test_train_cli_resume_from_a_corrupt_checkpoint(originals, sandbox, tmp_path):
  out = sandbox(originals["own"])
  (out / "train_state.json").write_text(
    json.dumps({"step": 1, "config": {"dtype": "float32", "model": ARGS.to_dict(), "data": "none"}}))
  truncate(out / "model.safetensors", 20000)
  assert_one_line(cli("train.py", "--resume", "--out", out), "train.py", "model.safetensors is truncated")
