"""Tokenizers (data.py): golden ids from the real Llama 2 / tok512 / SmolLM2 vocabularies, agreement between the
sentencepiece library and our own encoders of the same vocabulary, and round-trip and streaming properties."""
import pathlib
import pytest
from hypothesis import given, settings, strategies as st
import gguf
import tokenizer as tk

SENTENCES = [
  "Once upon a time", "Hello, world!", "  two leading spaces and\ttabs\n\nnew lines ", "The year 2023: 3.14159",
  "naïve café, Ünïcödé, 日本語のテキスト, emoji 🦙🙂", "", "x", " ", "a  b   c", "Lily's mom said, \"let's go\"."
]
# sentencepiece escapes ' ' as '▁' (U+2581), so a literal '▁' in the input cannot come back: leave it out of drawn text
TEXT = st.text(st.characters(blacklist_characters="\u2581", blacklist_categories=("Cs",)), max_size=40)

def normalized(tok, text: str) -> str:
  """The text as the sentencepiece library sees it: tok512.model collapses runs of spaces (remove_extra_whitespaces),
  Llama 2's normalizer is the identity. `normalize` adds the dummy prefix '▁', which decoding drops again."""
  return tok.sp.normalize(text).replace("\u2581", " ").removeprefix(" ")

@pytest.fixture(scope="module")
def llama2(fixtures): return tk.load_tokenizer(fixtures / "llama2-tokenizer.model")

@pytest.fixture(scope="module")
def llama2_bin(fixtures): return tk.load_tokenizer(fixtures / "llama2-tokenizer.bin")

@pytest.fixture(scope="module")
def tok512(fixtures): return tk.load_tokenizer(fixtures / "stories260K" / "tok512.model")

@pytest.fixture(scope="module")
def tok512_bin(fixtures): return tk.load_tokenizer(fixtures / "stories260K" / "tok512.bin")

def test_llama2_golden_ids(llama2, llama2_bin):
  assert llama2.encode("Once upon a time") == [9038, 2501, 263, 931]
  assert llama2_bin.encode("Once upon a time", bos=True, eos=True) == [1, 9038, 2501, 263, 931, 2]
  assert (llama2.vocab_size, llama2.bos_id, llama2.eos_id) == (32000, 1, 2) == (llama2_bin.vocab_size,
                                                                                llama2_bin.bos_id, llama2_bin.eos_id)

def test_tok512_golden_ids(tok512, tok512_bin):
  assert tok512.encode("Once upon a time") == tok512_bin.encode("Once upon a time") == [403, 407, 261, 378]
  assert tok512.vocab_size == tok512_bin.vocab_size == 512

@pytest.mark.parametrize("pair", [("llama2", "llama2_bin"), ("tok512", "tok512_bin")])
def test_bin_encodes_like_model(pair, request, fixtures):
  """Our best-score merge encoder on llama2.c's export agrees with the sentencepiece library on the original model
  (llama2.c has no normalizer, so it gets the text the library normalises to)."""
  model, binary = (request.getfixturevalue(n) for n in pair)
  lines = (fixtures / "tinyshakespeare.txt").read_text().split("\n")[:400]
  for s in SENTENCES + lines: assert binary.encode(normalized(model, s)) == model.encode(s), s

@pytest.mark.parametrize("name", ["llama2", "tok512"])
def test_decode_matches_sentencepiece(name, request):
  tok = request.getfixturevalue(name)
  for s in SENTENCES:
    ids = tok.encode(s, bos=True)
    assert tok.decode(ids) == tok.sp.decode(ids) == normalized(tok, s)

@pytest.mark.parametrize("name", ["llama2", "llama2_bin", "tok512", "tok512_bin"])
@settings(max_examples=40)
@given(text=TEXT)
def test_sentencepiece_round_trip(name, request, text):
  """Any unicode text survives encode -> decode (byte fallback spells characters the vocabulary lacks)."""
  tok = request.getfixturevalue(name)
  assert tok.decode(tok.encode(text, bos=True)) == (normalized(tok, text) if hasattr(tok, "sp") else text)

@pytest.mark.parametrize("name", ["llama2", "llama2_bin", "tok512", "tok512_bin"])
@settings(max_examples=30)
@given(text=TEXT, junk=st.lists(st.integers(3, 258), max_size=4))
def test_stream_decoder_matches_decode(name, request, text, junk):
  """Streaming pieces one id at a time gives exactly decode(ids), also when byte tokens leave a broken UTF-8 tail."""
  tok = request.getfixturevalue(name)
  ids = tok.encode(text, bos=True) + junk
  dec = tok.decoder()
  streamed, tail = "".join(dec.add(i) for i in ids), dec.flush()
  assert streamed + tail == tok.decode(ids)
  if not junk: assert tail == ""                    # complete text: nothing is held back at the end

def test_stream_decoder_holds_back_partial_utf8(tok512):
  ids = tok512.encode("🦙")                          # not in a 512 vocabulary: 4 byte-fallback tokens after '▁'
  assert len(ids) == 5
  dec = tok512.decoder()
  assert [dec.add(i) for i in ids] == ["", "", "", "", "🦙"]

def test_stream_decoder_leading_spaces(llama2):
  """Only the dummy-prefix space at the very start disappears; the spaces between words stay."""
  dec = llama2.decoder()
  assert [dec.add(i) for i in [1, 9038, 2501, 263, 931]] == ["", "Once", " upon", " a", " time"]
  assert llama2.decode(llama2.encode(" x")) == " x"

def test_save_round_trip(llama2, tmp_path):
  llama2.save(tmp_path / "tokenizer.model")
  again = tk.load_tokenizer(tmp_path / "tokenizer.model")
  assert again.encode(SENTENCES[4]) == llama2.encode(SENTENCES[4])

def test_bad_files(tmp_path, fixtures):
  """Missing, unknown and truncated tokenizer files give one clear TokenizerError naming the file and the reason."""
  with pytest.raises(tk.TokenizerError, match="not found"): tk.load_tokenizer(tmp_path / "missing.model")
  (tmp_path / "junk.model").write_bytes(b"\x00\x01garbage" * 10)
  with pytest.raises(tk.TokenizerError, match="neither"): tk.load_tokenizer(tmp_path / "junk.model")
  (tmp_path / "empty.model").write_bytes(b"")
  with pytest.raises(tk.TokenizerError, match="is empty"): tk.load_tokenizer(tmp_path / "empty.model")
  reasons = {
    "stories260K/tok512.bin": "truncated inside the record of token 214 .read as a llama2.c tokenizer.bin",
    "stories260K/tok512.model": "not a valid sentencepiece .model",
    "smollm2-135m-instruct-q4_1.gguf": "claims 49,152 array elements .* bytes left .truncated"
  }
  for name, reason in reasons.items():
    cut = tmp_path / pathlib.Path(name).name
    cut.write_bytes((fixtures / name).read_bytes()[:3000])
    with pytest.raises(tk.TokenizerError, match=reason) as e: tk.load_tokenizer(cut)
    assert str(e.value).startswith(str(cut)) and "\n" not in str(e.value)

# ***** GGUF vocabularies *****

@pytest.fixture(scope="module")
def smollm_kv(fixtures):
  return gguf.read_header(fixtures / "smollm2-135m-instruct-q4_1.gguf").metadata   # reads the header alone

@pytest.fixture(scope="module")
def smollm(smollm_kv): return tk.tokenizer_from_gguf(smollm_kv)

def test_smollm_known_ids(smollm, smollm_kv):
  """Ids read straight from the file's token list: whole words exist as tokens ('Ġ' is GPT-2's byte for ' '), every
  digit is its own token, and ChatML markers are single special tokens."""
  tokens = smollm_kv["tokenizer.ggml.tokens"]
  idx = lambda *ts: [tokens.index(t) for t in ts]
  assert smollm.encode("Once upon a time") == idx("Once", "Ġupon", "Ġa", "Ġtime")
  assert smollm.encode("Hello, world!") == idx("Hello", ",", "Ġworld", "!")
  assert smollm.encode("in 2024") == idx("in", "Ġ", "2", "0", "2", "4")
  assert smollm.encode("a\n\n b") == idx("a", "ĊĊ", "Ġb")
  chat = "<|im_start|>user\nHi<|im_end|>"
  assert smollm.encode(chat, special=True) == [1] + idx("user", "Ċ", "Hi") + [2]
  # by default the markers are plain text: a user cannot type a control token into a prompt
  plain = smollm.encode(chat)
  assert 1 not in plain and 2 not in plain and smollm.decode(plain) == chat == smollm.decode(
    smollm.encode(chat, special=True))
  assert (smollm.bos_id, smollm.eos_id, smollm.vocab_size, smollm.add_bos) == (1, 2, 49152, False)
  assert smollm.special_tokens["<|im_start|>"] == 1 and smollm.chat_template.startswith("{% for message in messages %}")

# SmolLM2's vocabulary cannot spell the bytes 0x04 0x06 0x13 0x14 0x16 0x1d or the UTF-8 lead bytes 0xF1 0xF2
SMOL_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x04\x06\x13\x14\x16\x1d")
                    .filter(lambda c: not 0x40000 <= ord(c) < 0xC0000), max_size=40)

@settings(max_examples=60)
@given(text=SMOL_TEXT)
def test_smollm_round_trip(smollm, text):
  assert smollm.decode(smollm.encode(text)) == text

def test_smollm_drops_unspellable_bytes(smollm):
  """A byte the vocabulary lacks vanishes (as in llama.cpp / HF), it does not become <|endoftext|> (id 0); of U+40000
  only the lead byte 0xF1 goes, its three continuation bytes stay and decode as replacement characters."""
  ids = smollm.encode("a\x04b \U00040000c")
  assert 0 not in ids and smollm.decode(ids) == "ab " + "\ufffd" * 3 + "c"

@settings(max_examples=60)
@given(text=st.text(st.characters(blacklist_categories=("Cs", "Cn")), max_size=40))
def test_pretokenizer_matches_unicode_regex(smollm, text):
  """Our re-only word splitter (unicodedata classes) against the exact \\p{L}/\\p{N} patterns of the `regex` package:
  SmolLM cuts out every digit, then applies GPT-2's regex. Characters this Python's Unicode tables do not know yet
  (category Cn, e.g. U+18D80) are left out: that is the documented approximation."""
  regex = pytest.importorskip("regex")
  gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
  expect = [w for chunk in regex.split(r"(\p{N})", text) if chunk for w in gpt2.findall(chunk)]
  assert smollm._split_words(text) == expect

@settings(max_examples=30)
@given(text=SMOL_TEXT, junk=st.lists(st.integers(0, 49151), max_size=4))
def test_smollm_stream_decoder(smollm, text, junk):
  ids = smollm.encode(text) + junk
  dec = smollm.decoder()
  streamed, tail = "".join(dec.add(i) for i in ids), dec.flush()
  assert streamed + tail == smollm.decode(ids)
  if not junk: assert tail == ""

def test_gpt2_add_space_prefix(smollm_kv):
  """add_space_prefix=true puts one space in front of the text and decoding takes it away again."""
  tok = tk.tokenizer_from_gguf(
    {**smollm_kv, "tokenizer.ggml.add_space_prefix": True, "tokenizer.ggml.add_bos_token": True})
  tokens = smollm_kv["tokenizer.ggml.tokens"]
  assert tok.encode("Hello world") == [tokens.index("ĠHello"), tokens.index("Ġworld")] and tok.add_bos
  assert tok.encode("") == [] and tok.encode("", bos=True) == [1]
  dec = tok.decoder()
  assert tok.decode(tok.encode("Hello world")) == "".join(dec.add(i)
                                                          for i in tok.encode("Hello world")) == "Hello world"

def test_load_tokenizer_reads_gguf(fixtures, smollm):
  tok = tk.load_tokenizer(fixtures / "smollm2-135m-instruct-q4_1.gguf")
  assert tok.encode(SENTENCES[4]) == smollm.encode(SENTENCES[4])

def gguf_kv_from_sentencepiece(sp) -> dict:
  """GGUF 'llama' metadata as llama.cpp's converter writes it from a sentencepiece model: pieces, scores, types."""
  typ = lambda i: 2 if sp.is_unknown(i) else 3 if sp.is_control(i) else 6 if sp.is_byte(i) else 5 if sp.is_unused(
    i) else 1
  n = sp.vocab_size()
  return {
    "tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
    "tokenizer.ggml.scores": [sp.get_score(i) for i in range(n)],
    "tokenizer.ggml.token_type": [typ(i) for i in range(n)], "tokenizer.ggml.bos_token_id": sp.bos_id(),
    "tokenizer.ggml.eos_token_id": sp.eos_id(), "tokenizer.ggml.unknown_token_id": sp.unk_id()
  }

@pytest.fixture(scope="module")
def llama2_gguf(llama2): return tk.tokenizer_from_gguf(gguf_kv_from_sentencepiece(llama2.sp))

def test_gguf_llama_vocab_encodes_like_sentencepiece(llama2, llama2_gguf, fixtures):
  tok = llama2_gguf
  lines = (fixtures / "tinyshakespeare.txt").read_text().split("\n")[:200]
  for s in SENTENCES + lines:
    assert tok.encode(s) == llama2.encode(s), s
    assert tok.decode(tok.encode(s, bos=True)) == s
  # control tokens written in the text are matched only when asked (llama.cpp's parse_special); no dummy prefix
  # after a special token, so decoding gives the text back without the (empty) control tokens
  ids = tok.encode("<s>Hi</s>", special=True)
  assert (ids[0], ids[-1], tok.decode(ids)) == (1, 2, "Hi")
  assert 1 not in tok.encode("<s>Hi") and tok.encode("<s>Hi") == llama2.encode("<s>Hi")

@settings(max_examples=30)
@given(text=TEXT)
def test_gguf_llama_vocab_round_trip(llama2_gguf, text):
  tok = llama2_gguf
  ids = tok.encode(text, bos=True)
  dec = tok.decoder()
  assert tok.decode(ids) == "".join(dec.add(i) for i in ids) == text

def test_gguf_errors():
  with pytest.raises(tk.TokenizerError, match="no tokenizer.ggml.tokens"): tk.tokenizer_from_gguf({})
  with pytest.raises(tk.TokenizerError, match="unsupported GGUF tokenizer model"):
    tk.tokenizer_from_gguf({"tokenizer.ggml.model": "rwkv", "tokenizer.ggml.tokens": ["a"]})
  with pytest.raises(tk.TokenizerError, match="pre-tokenizer"):
    tk.tokenizer_from_gguf(
      {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "no-such", "tokenizer.ggml.tokens": ["a", "b", "c"]})
  # values of the wrong type or outside the vocabulary, each named
  llama = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>", "a"]}
  for key, value, reason in [("ggml.bos_token_id", 4, "bos_token_id is 4, not a token id in the vocabulary"),
                             ("ggml.unknown_token_id", -1, "unknown_token_id is -1"),
                             ("ggml.scores", [0.0], "scores is .*one number per token"),
                             ("ggml.token_type", ["1"] * 4, "token_type is .*one integer per token"),
                             ("ggml.add_bos_token", 1, "add_bos_token is 1, not true or false"),
                             ("chat_template", 7, "chat_template is 7, not a string")]:
    with pytest.raises(tk.TokenizerError, match=reason): tk.tokenizer_from_gguf({**llama, f"tokenizer.{key}": value})
  with pytest.raises(tk.TokenizerError, match="merges is .*not an array of strings"):
    tk.tokenizer_from_gguf(
      {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": ["a", "b", "c"], "tokenizer.ggml.merges": [1, 2]})

@pytest.mark.parametrize("pair", [("llama2", "llama2_bin"), ("tok512", "tok512_bin")])
def test_scored_vocab_saves_as_sentencepiece_model(pair, request, tmp_path):
  """A llama2.c vocabulary written as a sentencepiece .model (what checkpoint.save stores) is read by the library and
  encodes like our encoder and like the original model."""
  model, binary = (request.getfixturevalue(n) for n in pair)
  binary.save(tmp_path / "tokenizer.model")
  again = tk.load_tokenizer(tmp_path / "tokenizer.model")
  assert isinstance(again, tk.SentencePieceTokenizer)
  assert (again.bos_id, again.eos_id, again.vocab_size, again.special_tokens) == (1, 2, binary.vocab_size,
                                                                                  model.special_tokens)
  for s in SENTENCES: assert again.encode(s) == binary.encode(s), s
  assert again.encode("Once upon a time") == model.encode("Once upon a time")

def test_scored_vocab_partial_byte_table():
  """A vocabulary whose byte tokens do not cover every byte spells the missing ones as <unk>, it does not crash."""
  pieces = ["<unk>", "<s>", "</s>", "<0x41>", "\u2581", "\u2581a"]
  tok = tk.tokenizer_from_gguf({"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
                                  "tokenizer.ggml.scores": [0.0] * 6, "tokenizer.ggml.token_type": [2, 3, 3, 6, 1, 1]})
  assert tok.encode("a AB") == [5, 4, 3, 0]
  assert tok.decode(tok.encode("a AB")) == "a A \u2047 "
