# Tokenizers behind one interface (§2.1: sentencepiece BPE with byte fallback): the sentencepiece library for `.model`
# files, a best-score merge encoder for sentencepiece-style vocabularies without the library (llama2.c `tokenizer.bin`,
# GGUF 'llama'), and byte-level BPE with ranked merges (GGUF 'gpt2', e.g. SmolLM2). Every tokenizer maps an id to the
# raw bytes it stands for; decoding joins those bytes and reads them as UTF-8.
import codecs, functools, heapq, math, pathlib, re, struct, unicodedata
import sentencepiece as spm
import gguf
from files import atomic_write

class TokenizerError(ValueError):
  """A tokenizer file that is missing, corrupt or of a kind load_tokenizer does not know; the message is one
  sentence."""

UNK_SURFACE = " \u2047 ".encode()           # what sentencepiece prints for <unk>: " ⁇ "
# token types as GGUF (and sentencepiece's ModelProto) number them
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")

class StreamDecoder:
  """Text of a growing id sequence, one id at a time: `add(id)` returns only the newly completed text.
  Incomplete UTF-8 (a character split over several byte-fallback tokens) is held back until it completes;
  the dummy-prefix space is dropped only from the first piece of the whole text, like sentencepiece does.
  `flush()` returns what is still held back at the end (a replacement character for a truncated sequence)."""
  def __init__(self, tok: "Tokenizer"):
    self.tok, self.at_start, self.utf8 = tok, True, codecs.getincrementaldecoder("utf-8")("replace")

  def add(self, tid: int) -> str:
    b = self.tok._piece(tid)
    if self.at_start and b:
      self.at_start = False
      if self.tok._strippable(tid) and b[:1] == b" ": b = b[1:]
    return self.utf8.decode(b)

  def flush(self) -> str: return self.utf8.decode(b"", final=True)

class Tokenizer:
  """The interface every tokenizer implements: encode, decode, decoder() for streaming, bos_id/eos_id, vocab_size,
  special_tokens, chat_template, add_bos, save. Subclasses set the fields below and `_encode` (one fragment of text
  without special tokens). pieces[id] is the UTF-8 bytes of the token (control tokens: empty); strip_prefix says the
  encoder prepends a dummy space (sentencepiece's add_dummy_prefix) that decoding must drop again at the very start."""
  bos_id: int
  eos_id: int
  add_bos: bool = True                      # does this model expect BOS in front of a prompt (GGUF add_bos_token)
  special_tokens: dict[str, int]
  chat_template: str | None = None
  pieces: list[bytes]
  types: list[int]                          # NORMAL, CONTROL, BYTE, ... per id
  strip_prefix: bool

  @property
  def vocab_size(self) -> int: return len(self.pieces)

  def _encode(self, text: str, at_start: bool) -> list[int]: raise NotImplementedError

  def encode(self, text: str, bos: bool = False, eos: bool = False, special: bool = False) -> list[int]:
    """Token ids of `text`. special=True matches the special tokens written in the text (e.g. '<|im_start|>', '</s>')
    as whole strings, as a rendered chat template needs; it is off by default so that text from users or from a
    corpus can never inject a control token."""
    ids, pos = [], 0
    for frag, tid in (self._split_special(text) if special else [(text, None)]):
      ids += [tid] if tid is not None else self._encode(frag, pos == 0)
      pos += len(frag)
    return [self.bos_id] * bos + ids + [self.eos_id] * eos

  def _piece(self, tid: int) -> bytes:
    if not 0 <= tid < len(self.pieces):
      raise ValueError(f"token id {tid} is outside the vocabulary of {len(self.pieces)}")
    return self.pieces[tid]

  # sentencepiece strips the leading space of a normal piece only; a byte token or <unk> first keeps its space
  def _strippable(self, tid: int) -> bool: return self.strip_prefix and self.types[tid] in (NORMAL, USER_DEFINED)

  def decode(self, ids: list[int]) -> str:
    parts = [self._piece(t) for t in ids]
    first = next((k for k, p in enumerate(parts) if p), None)
    if first is not None and self._strippable(ids[first]) and parts[first][:1] == b" ": parts[first] = parts[first][1:]
    return b"".join(parts).decode("utf-8", "replace")

  def decoder(self) -> StreamDecoder: return StreamDecoder(self)

  gguf_kv: dict | None = None               # the tokenizer.* metadata of the GGUF file it came from

  @property
  def file_name(self) -> str:
    """The name it is saved under in a checkpoint directory: a vocabulary from a GGUF file stays GGUF metadata (with
    its chat template and BOS rule), the others are sentencepiece `.model` files."""
    return "tokenizer.gguf" if self.gguf_kv is not None else "tokenizer.model"

  def save(self, path) -> None:
    """Write a file that load_tokenizer() reads back as this tokenizer (see file_name)."""
    if self.gguf_kv is None: raise TokenizerError(f"{type(self).__name__} cannot be saved")
    atomic_write(path, gguf.pack(self.gguf_kv))

  @functools.cached_property
  def _special_re(self) -> re.Pattern:   # longest first, so '<|im_start|>' wins over any shorter special it contains
    return re.compile("|".join(re.escape(s) for s in sorted(self.special_tokens, key=len, reverse=True)) or "(?!)")

  def _split_special(self, text: str):
    """Yield (text fragment, None) and (special token text, id): special tokens are matched as whole strings first."""
    pos = 0
    for m in self._special_re.finditer(text):
      if m.start() > pos: yield text[pos:m.start()], None
      yield m.group(), self.special_tokens[m.group()]
      pos = m.end()
    if pos < len(text): yield text[pos:], None

class SentencePieceTokenizer(Tokenizer):
  """A sentencepiece `.model` (§2.1: BPE with byte fallback), encoded by the sentencepiece library itself."""
  def __init__(self, proto: bytes):
    self.proto, self.sp = proto, spm.SentencePieceProcessor(model_proto=proto)
    sp, n = self.sp, self.sp.vocab_size()
    # add_dummy_prefix is not exposed by the library: its normaliser shows it as a leading '▁'
    self.bos_id, self.eos_id, self.strip_prefix = sp.bos_id(), sp.eos_id(), sp.normalize("a").startswith("\u2581")
    # the library says -1 for a model without <s> or </s> (or with a damaged one): LLaMA's prompts need both
    if not (0 <= self.bos_id < n and 0 <= self.eos_id < n):
      raise TokenizerError(f"has no usable BOS/EOS pieces (ids {self.bos_id}, {self.eos_id} of {n})")
    self.types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else BYTE if sp.is_byte(i) else
                  UNUSED if sp.is_unused(i) else NORMAL for i in range(n)]
    self.pieces = [_piece_bytes(sp.id_to_piece(i).replace("\u2581", " "), t) for i, t in enumerate(self.types)]
    self.special_tokens = {sp.id_to_piece(i): i for i, t in enumerate(self.types) if t in (UNKNOWN, CONTROL)}

  # the library puts its dummy prefix in front of every fragment, also after a special token (like HF's legacy Llama)
  def _encode(self, text: str, at_start: bool) -> list[int]: return self.sp.encode(text)

  def save(self, path) -> None: atomic_write(path, self.proto)

def _piece_bytes(piece: str, typ: int) -> bytes:
  """The bytes a token decodes to (piece with spaces already as ' ')."""
  if typ == BYTE and (m := _BYTE_PIECE.fullmatch(piece)): return bytes([int(m.group(1), 16)])
  if typ == UNKNOWN: return UNK_SURFACE
  if typ in (CONTROL, UNUSED): return b""
  return piece.encode()

class ScoredVocabTokenizer(Tokenizer):
  """A sentencepiece-style vocabulary (pieces, scores, types) without the library: llama2.c `tokenizer.bin` and
  GGUF 'llama' vocabularies. Encoding is sentencepiece's BPE: start from single characters, repeatedly merge the
  adjacent pair whose concatenation is the highest-scoring piece (leftmost on ties), then spell pieces that are not
  in the vocabulary as byte tokens <0xNN> (byte fallback) or <unk>."""
  def __init__(self, pieces: list[str], scores: list[float], types: list[int], bos_id: int, eos_id: int,
               unk_id: int = 0, add_prefix: bool = True, add_bos: bool = True, chat_template: str | None = None):
    if not len(pieces) == len(scores) == len(types):
      raise TokenizerError("tokenizer pieces, scores and token types differ in length")
    self.texts, self.scores, self.types = pieces, scores, types
    self.bos_id, self.eos_id, self.unk_id, self.strip_prefix = bos_id, eos_id, unk_id, add_prefix
    self.add_bos, self.chat_template = add_bos, chat_template
    self.pieces = [_piece_bytes(p, t) for p, t in zip(pieces, types)]
    self.merge_ids: dict[str, int] = {}
    for i, (p, t) in enumerate(zip(pieces, types)):
      if t in (NORMAL, USER_DEFINED): self.merge_ids.setdefault(p, i)
    self.byte_ids = {self.pieces[i][0]: i for i, t in enumerate(types) if t == BYTE and len(self.pieces[i]) == 1}
    self.special_tokens = {p: i for i, (p, t) in enumerate(zip(pieces, types)) if t in (UNKNOWN, CONTROL, USER_DEFINED)}

  def save(self, path) -> None:
    """A GGUF vocabulary as GGUF metadata; otherwise (llama2.c `tokenizer.bin`) the vocabulary as a sentencepiece BPE
    `.model` (sentencepiece_model.proto: pieces with score and type, TrainerSpec, NormalizerSpec), so a llama2.c or
    GGUF vocabulary can travel in our own checkpoint format."""
    if self.gguf_kv is not None: return super().save(path)
    sp_text = [t.replace(" ", "\u2581") for t in self.texts]
    pieces = b"".join(_pb(1, _pb(1, t) + _pb(2, float(s)) + _pb(3, ty))
                      for t, s, ty in zip(sp_text, self.scores, self.types))
    # model_type BPE, vocab_size, byte_fallback; unk/bos/eos ids and their pieces
    trainer = (_pb(3, 2) + _pb(4, len(sp_text)) + _pb(35, bool(self.byte_ids)) +
               _pb(40, self.unk_id) + _pb(41, self.bos_id) + _pb(42, self.eos_id) +
               _pb(45, sp_text[self.unk_id]) + _pb(46, sp_text[self.bos_id]) + _pb(47, sp_text[self.eos_id]))
    # identity normaliser that keeps every space, the dummy prefix as this vocabulary had it
    normalizer = _pb(1, "identity") + _pb(3, self.strip_prefix) + _pb(4, False) + _pb(5, True)
    proto = pieces + _pb(2, trainer) + _pb(3, normalizer)
    try: spm.SentencePieceProcessor(model_proto=proto)
    except Exception as e:
      raise TokenizerError(f"this vocabulary cannot be written as a sentencepiece model: {e}") from None
    atomic_write(path, proto)

  def _merge(self, text: str) -> list[int]:
    sym, n = list(text), len(text)
    nxt, prv, heap = list(range(1, n + 1)), list(range(-1, n - 1)), []
    def push(i: int, j: int):
      if (tid := self.merge_ids.get(sym[i] + sym[j])) is not None:
        heapq.heappush(heap, (-self.scores[tid], i, j, len(sym[i]) + len(sym[j])))
    for i in range(n - 1): push(i, i + 1)
    while heap:
      _, i, j, size = heapq.heappop(heap)
      if not sym[i] or not sym[j] or nxt[i] != j or len(sym[i]) + len(sym[j]) != size: continue   # stale: merged since
      sym[i], sym[j], nxt[i] = sym[i] + sym[j], "", nxt[j]
      if nxt[i] < n:
        prv[nxt[i]] = i
        push(i, nxt[i])
      if prv[i] >= 0: push(prv[i], i)
    out = []
    for s in sym:
      if not s: continue
      if (tid := self.merge_ids.get(s)) is not None: out.append(tid)
      elif self.byte_ids: out.extend(self.byte_ids.get(b, self.unk_id) for b in s.encode())
      else: out.append(self.unk_id)
    return out

  # the dummy prefix goes in front of the whole text only, not after every special token, so decode can undo it
  def _encode(self, text: str, at_start: bool) -> list[int]:
    return self._merge((" " if self.strip_prefix and at_start and text else "") + text)

def _pb(field: int, value) -> bytes:
  """One protobuf field (all sentencepiece's ModelProto needs): str/bytes length-delimited, float as fixed32,
  bool/non-negative int as varint."""
  def varint(n: int) -> bytes:
    out = bytearray()
    while True:
      out.append((n & 0x7F) | (0x80 if n >> 7 else 0))
      if not (n := n >> 7): return bytes(out)
  if isinstance(value, str): value = value.encode()
  if isinstance(value, bytes): return varint(field << 3 | 2) + varint(len(value)) + value
  if isinstance(value, float): return varint(field << 3 | 5) + struct.pack("<f", value)
  assert value >= 0, "negative varints are not needed here"
  return varint(field << 3) + varint(int(value))

def _read_llama2c_tokenizer(data: bytes) -> ScoredVocabTokenizer:
  """llama2.c `tokenizer.bin`: uint32 max_token_length, then per id a float32 score, a uint32 length and the UTF-8
  piece with '▁' already turned into ' '. The file stores no types: llama2.c fixes unk=0, bos=1, eos=2 and byte tokens
  are the pieces spelled <0xNN>. TokenizerError (a phrase to follow the file name) where `data` stops being one."""
  if len(data) < 4: raise TokenizerError(f"is too short for a llama2.c tokenizer.bin ({len(data)} bytes)")
  (max_len,), pos, texts, scores = struct.unpack_from("<I", data), 4, [], []
  while pos < len(data):
    if pos + 8 > len(data): raise TokenizerError(f"is truncated inside the record of token {len(texts)}")
    score, n = struct.unpack_from("<fI", data, pos)
    if n > max_len:
      raise TokenizerError(f"gives token {len(texts)} {n:,} bytes, more than its max_token_length {max_len}")
    if pos + 8 + n > len(data): raise TokenizerError(f"is truncated inside token {len(texts)}")
    try: texts.append(data[pos + 8:pos + 8 + n].decode())
    except UnicodeDecodeError: raise TokenizerError(f"has a token {len(texts)} that is not UTF-8") from None
    scores.append(score)
    pos += 8 + n
  if len(texts) < 3: raise TokenizerError(f"holds {len(texts)} tokens, fewer than llama2.c's <unk>, <s>, </s>")
  types = [UNKNOWN if i == 0 else CONTROL if i in (1, 2) else BYTE if _BYTE_PIECE.fullmatch(t) else NORMAL
           for i, t in enumerate(texts)]
  texts[:3] = ["<unk>", "<s>", "</s>"]            # stored as "<unk>", "\n<s>\n", "\n</s>\n"
  return ScoredVocabTokenizer(texts, scores, types, bos_id=1, eos_id=2)

def load_tokenizer(path) -> Tokenizer:
  """A sentencepiece `.model`, a llama2.c `tokenizer.bin` or the vocabulary inside a GGUF file (a model, or the
  tokenizer.gguf of our checkpoints); TokenizerError, one sentence naming the file, for anything else."""
  path = pathlib.Path(path)
  if not path.is_file(): raise TokenizerError(f"tokenizer file not found: {path}")
  try:
    with open(path, "rb") as f: magic = f.read(4)
    data = path.read_bytes() if magic != b"GGUF" else b""   # a GGUF model is read by its header only
  except OSError as e: raise TokenizerError(f"tokenizer file {path} cannot be read: {e.strerror}") from None
  if magic == b"GGUF":
    try: kv = gguf.read_header(path).metadata
    except gguf.GGUFError as e: raise TokenizerError(f"{path} {e}") from None
    try: return tokenizer_from_gguf(kv)
    except TokenizerError as e: raise TokenizerError(f"{path} is not a usable tokenizer: {e}") from None
  if not data: raise TokenizerError(f"{path} is empty")
  try: return _read_llama2c_tokenizer(data)
  except TokenizerError as e: llama2c = e
  try: tok = SentencePieceTokenizer(data)
  except TokenizerError as e: raise TokenizerError(f"{path} {e}") from None
  except RuntimeError as e:   # the library's parse error, which may quote the file's bytes
    sp = " ".join(str(e).split())[:200]
  except UnicodeDecodeError: sp = "a damaged piece"   # a parse error whose message quotes bytes that are not UTF-8
  else:
    if tok.vocab_size: return tok
    sp = "it holds no vocabulary"                  # an empty ModelProto parses
  # say why it failed as what it looks like: a ModelProto starts with field 1 (its pieces), tag 0x0A; a tokenizer.bin
  # with a small max_token_length that its first token keeps to
  if data[:1] == b"\n": raise TokenizerError(f"{path} is not a valid sentencepiece .model ({sp})")
  if len(data) >= 12 and (max_len := struct.unpack_from("<I", data)[0]) < 1 << 10 and \
     struct.unpack_from("<I", data, 8)[0] <= max_len:
    raise TokenizerError(f"{path} {llama2c} (read as a llama2.c tokenizer.bin)")
  raise TokenizerError(f"{path} is neither a sentencepiece .model, a llama2.c tokenizer.bin nor a GGUF file")

@functools.cache
def _unicode_classes() -> tuple[str, str, str]:
  """Bodies of the character classes \\p{L} (letters), \\p{N} (numbers) and \\s (Unicode White_Space) for Python's re,
  which has no \\p{..}: runs of code points by unicodedata category. Approximation: categories come from this
  Python's Unicode version, which may lag the tables of the tokenizer library a vocabulary was made with."""
  runs: dict[str, list[tuple[int, int]]] = {"L": [], "N": []}
  for cp in range(0x110000):
    if (c := unicodedata.category(chr(cp))[0]) in runs:
      r = runs[c]
      if r and r[-1][1] == cp - 1: r[-1] = (r[-1][0], cp)
      else: r.append((cp, cp))
  body = lambda rs: "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in rs)
  # not \\x1c-\\x1f like re's \\s
  white = "\\t\\n\\x0b\\x0c\\r \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
  return body(runs["L"]), body(runs["N"]), white

@functools.cache
def _pretokenizer(pre: str) -> tuple[re.Pattern | None, re.Pattern]:
  """(digit splitter or None, word regex) for a GGUF `tokenizer.ggml.pre` name, as the Hugging Face tokenizers
  define them."""
  L, N, W = _unicode_classes()
  gpt2 = f"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{W}{L}{N}]+|[{W}]+(?![^{W}])|[{W}]+"
  llama3 = (f"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n{L}{N}]?[{L}]+|[{N}]{{1,3}}| ?[^{W}{L}{N}]+[\\r\\n]*|[{W}]*[\\r\\n]+"
            f"|[{W}]+(?![^{W}])|[{W}]+")
  if pre in ("gpt2", "mpt", "olmo", "jais"): return None, re.compile(gpt2)
  # StarCoder-style vocabularies (SmolLM among them) first cut every digit out on its own, then apply GPT-2's regex
  if pre in ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"):
    return re.compile(f"([{N}])"), re.compile(gpt2)
  if pre in ("llama-bpe", "llama3", "llama-v3"): return None, re.compile(llama3)
  raise TokenizerError(f"unsupported GGUF pre-tokenizer {pre!r} for a gpt2 vocabulary")

def _byte_chars() -> list[str]:
  """GPT-2's byte -> character table: printable Latin-1 bytes stand for themselves, the other 68 bytes are
  shifted to U+0100.. so every token is a printable string (' ' becomes 'Ġ', '\\n' becomes 'Ċ')."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
  moved = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(moved)) for b in range(256)]

class ByteBPETokenizer(Tokenizer):
  """Byte-level BPE (GPT-2 style, GGUF 'gpt2'): cut the text into words with the pre-tokenizer regex, spell each word's
  UTF-8 bytes as GPT-2 byte characters, then apply the ranked merges, lowest rank first. Special tokens (control and
  user-defined) written in the text are matched first when encode(special=True) asks, and decode to their text."""
  def __init__(self, tokens: list[str], types: list[int], merges: list[str], pre: str, bos_id: int, eos_id: int,
               add_prefix: bool = False, add_bos: bool = False, chat_template: str | None = None):
    self.digits, self.words = _pretokenizer(pre)
    self.types, self.bos_id, self.eos_id = types, bos_id, eos_id
    self.strip_prefix, self.add_bos, self.chat_template = add_prefix, add_bos, chat_template
    self.byte_char = _byte_chars()
    char_byte = {c: b for b, c in enumerate(self.byte_char)}
    self.vocab: dict[str, int] = {}
    for i, (t, ty) in enumerate(zip(tokens, types)):
      if ty in (NORMAL, BYTE): self.vocab.setdefault(t, i)
    self.special_tokens = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty in (CONTROL, USER_DEFINED)}
    self.pieces = [bytes(char_byte[c] for c in t) if ty in (NORMAL, BYTE) and all(c in char_byte for c in t) else
                   b"" if ty == UNUSED else t.encode() for t, ty in zip(tokens, types)]
    self.ranks: dict[tuple[str, str], int] = {}
    for r, m in enumerate(merges):
      a, sep, b = m.partition(" ")
      if not sep: raise TokenizerError(f"GGUF merge {r} ({m!r}) is not two tokens separated by a space")
      self.ranks.setdefault((a, b), r)
    self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_word)

  # pickled (generate.py keeps it with the compiled steps) without the memo of words: a cached bound method does not
  def __getstate__(self) -> dict: return {k: v for k, v in self.__dict__.items() if k != "_bpe"}
  def __setstate__(self, state: dict):
    self.__dict__.update(state)
    self._bpe = functools.lru_cache(maxsize=1 << 16)(self._bpe_word)

  def _bpe_word(self, word: str) -> tuple[int, ...]:
    parts = list(word)
    while len(parts) > 1:
      rank, k = min((self.ranks.get((parts[k], parts[k + 1]), math.inf), k) for k in range(len(parts) - 1))
      if rank == math.inf: break
      a, b, merged, k = parts[k], parts[k + 1], parts[:k], k
      while k < len(parts):                          # merge every occurrence of the pair, left to right
        if k + 1 < len(parts) and parts[k] == a and parts[k + 1] == b: merged.append(a + b); k += 2
        else: merged.append(parts[k]); k += 1
      parts = merged
    # a byte the vocabulary cannot spell is dropped, as llama.cpp and HF tokenizers do (SmolLM2 lacks e.g. 0x04 and
    # 0xF1, the lead byte of U+40000..U+7FFFF); an <unk> there would be '<|endoftext|>' in the middle of a prompt
    return tuple(self.vocab[q] for p in parts for q in ([p] if p in self.vocab else p) if q in self.vocab)

  def _split_words(self, text: str) -> list[str]:
    chunks = self.digits.split(text) if self.digits is not None else [text]
    return [w for c in chunks if c for w in self.words.findall(c)]

  def _encode(self, text: str, at_start: bool) -> list[int]:
    words = self._split_words((" " if self.strip_prefix and at_start and text else "") + text)
    return [tid for w in words for tid in self._bpe("".join(self.byte_char[b] for b in w.encode()))]

_GGUF_CHECKS = {
  "id": ("a token id", lambda v, n: type(v) is int and 0 <= v < n),
  "bool": ("true or false", lambda v, n: type(v) is bool), "str": ("a string", lambda v, n: type(v) is str),
  "strs": ("an array of strings", lambda v, n: isinstance(v, list) and all(type(x) is str for x in v)),
  "ints": ("one integer per token",
           lambda v, n: isinstance(v, list) and len(v) == n and all(type(x) is int for x in v)),
  "floats": ("one number per token",
             lambda v, n: isinstance(v, list) and len(v) == n and all(type(x) in (int, float) for x in v))}

def _gguf_get(kv: dict, key: str, kind: str, n: int, default):
  """kv['tokenizer.' + key] (or default), checked to be a `kind` of _GGUF_CHECKS for a vocabulary of n tokens."""
  if (v := kv.get(f"tokenizer.{key}", default)) is None and default is None: return None
  what, ok = _GGUF_CHECKS[kind]
  if not ok(v, n):
    raise TokenizerError(f"GGUF tokenizer.{key} is {v!r:.60}, not {what}{' in the vocabulary' if kind == 'id' else ''}")
  return v

def tokenizer_from_gguf(kv: dict) -> Tokenizer:
  """The tokenizer stored in GGUF metadata (`tokenizer.ggml.*`): 'llama' (sentencepiece pieces with scores) or
  'gpt2' (byte-level BPE with merges). Control tokens decode to nothing in 'llama' vocabularies (sentencepiece's way)
  and to their text in 'gpt2' ones (Hugging Face's way). Every value is checked: TokenizerError otherwise."""
  model, toks = kv.get("tokenizer.ggml.model"), kv.get("tokenizer.ggml.tokens")
  if not isinstance(toks, list) or not toks or not all(isinstance(t, str) for t in toks):
    raise TokenizerError("GGUF metadata has no tokenizer.ggml.tokens vocabulary")
  if model not in ("llama", "gpt2"):
    raise TokenizerError(f"unsupported GGUF tokenizer model {model!r:.40} (expected 'llama' or 'gpt2')")
  get = lambda key, kind, default: _gguf_get(kv, key, kind, len(toks), default)
  types = get("ggml.token_type", "ints", [NORMAL] * len(toks))
  common = dict(bos_id=get("ggml.bos_token_id", "id", 1), eos_id=get("ggml.eos_token_id", "id", 2),
                chat_template=get("chat_template", "str", None))
  if model == "llama":
    tok = ScoredVocabTokenizer([t.replace("\u2581", " ") for t in toks],
                               get("ggml.scores", "floats", [0.0] * len(toks)), types,
                               unk_id=get("ggml.unknown_token_id", "id", 0),
                               add_prefix=get("ggml.add_space_prefix", "bool", True),
                               add_bos=get("ggml.add_bos_token", "bool", True), **common)
  else:
    tok = ByteBPETokenizer(toks, types, get("ggml.merges", "strs", []), get("ggml.pre", "str", "gpt2"),
                           add_prefix=get("ggml.add_space_prefix", "bool", False),
                           add_bos=get("ggml.add_bos_token", "bool", False), **common)
  tok.gguf_kv = {k: v for k, v in kv.items() if k.startswith("tokenizer.")}
  return tok
