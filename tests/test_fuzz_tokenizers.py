"""Corrupt tokenizer files (issue 9): each tokenizer kind, truncated, flipped or given absurd header fields, loads
or raises TokenizerError in one sentence naming the file, without a hang or a huge allocation; data.py says so in
one line."""
import pathlib, shutil
import pytest
from hypothesis import strategies as st
import gguf
import tokenizer as tk
from fuzzing import ABSURD, assert_one_line, binary_fields, cli, flip, fuzzed, set_field, truncate

TOKENIZERS = ["gguf-llama", "gguf-gpt2", "sentencepiece", "llama2c"]

@pytest.fixture(scope="module")
def tokenizer_originals(fixtures, tmp_path_factory) -> dict[str, pathlib.Path]:
  root = tmp_path_factory.mktemp("tokenizers")
  pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>"
                                       for b in range(256)] + ["\u2581" + c for c in "abcdefghijklmnopqrstuvwxyz"
                                                               ] + ["\u2581the", "he", "th"]
  llama_kv = {
    "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
    "tokenizer.ggml.scores": [float(-i) for i in range(len(pieces))],
    "tokenizer.ggml.token_type": [2, 3, 3] + [6] * 256 + [1] * 29, "tokenizer.ggml.bos_token_id": 1,
    "tokenizer.ggml.eos_token_id": 2
  }
  tokens = ["<|endoftext|>", *(chr(c) for c in range(ord("a"), ord("z") + 1)), "Ġ", "Ġt", "he", "Ġthe"]
  gpt2_kv = {
    "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "smollm", "tokenizer.ggml.tokens": tokens,
    "tokenizer.ggml.token_type": [3] + [1] * 31, "tokenizer.ggml.merges": ["Ġ t", "h e",
                                                                           "Ġt he"], "tokenizer.ggml.bos_token_id": 0,
    "tokenizer.ggml.eos_token_id": 0, "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"
  }
  (root / "llama.gguf").write_bytes(gguf.pack(llama_kv))
  (root / "gpt2.gguf").write_bytes(gguf.pack(gpt2_kv))
  shutil.copy(fixtures / "stories260K" / "tok512.model", root / "tok512.model")
  shutil.copy(fixtures / "stories260K" / "tok512.bin", root / "tok512.bin")
  return dict(zip(TOKENIZERS, [root / "llama.gguf", root / "gpt2.gguf", root / "tok512.model", root / "tok512.bin"]))

def load_tok(path):
  tok = tk.load_tokenizer(path)
  tok.decode(tok.encode("the cat", bos=True))   # what it returns works

@fuzzed("kind", TOKENIZERS)
def test_corrupt_tokenizer_loads_or_one_sentence(tokenizer_originals, sandbox, watch, kind, data):
  f = sandbox(tokenizer_originals[kind])
  how = data.draw(st.sampled_from(["truncate", "flip", "field"] if f.suffix == ".gguf" else ["truncate", "flip"]))
  if how == "truncate": truncate(f, data.draw(st.integers(0, f.stat().st_size - 1)))
  elif how == "flip":
    for at in data.draw(st.lists(st.integers(0, f.stat().st_size - 1), min_size=1, max_size=3)):
      flip(f, at, data.draw(st.integers(1, 255)))
  else: set_field(f, data.draw(st.sampled_from(list(binary_fields(f)))), data.draw(st.sampled_from(ABSURD)))
  # (no truncation check: a tokenizer.bin cut between two records, a protobuf between two fields, a GGUF in its final
  # padding are all well-formed files)
  watch(load_tok, f, tk.TokenizerError)

@fuzzed("kind", ["gguf-llama", "gguf-gpt2"], cases=60)
def test_gguf_vocabulary_of_wrong_types(tokenizer_originals, sandbox, watch, kind, data):
  """Well-formed GGUF whose tokenizer values have the wrong type, length or range: TokenizerError, nothing else."""
  f = sandbox(tokenizer_originals[kind])
  kv = gguf.read_header(f).metadata
  key = data.draw(st.sampled_from(sorted(kv)))
  kv[key] = data.draw(
    st.sampled_from([-1, 0, 10**6, 2.5, True, "x", [], [1, 2], ["a"], [0.5] * len(kv["tokenizer.ggml.tokens"])]))
  f.write_bytes(gguf.pack(kv))
  msg = watch(load_tok, f, tk.TokenizerError)
  assert msg is None or "is not a usable tokenizer: " in msg, msg

def test_data_cli_with_a_corrupt_tokenizer(tokenizer_originals, sandbox, tmp_path):
  tok = sandbox(tokenizer_originals["llama2c"])
  truncate(tok, 1000)
  (tmp_path / "corpus.txt").write_text("the cat sat on the mat\n" * 50)
  assert_one_line(cli("data.py", tmp_path / "corpus.txt", "--tokenizer", tok, "--out", tmp_path / "data"), "data.py",
                  "is truncated inside")
