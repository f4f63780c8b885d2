# Corpus preparation (LLaMA §2.1): train the paper's tokenizer on a corpus, encode the corpus once into flat token
# files (train.bin / val.bin) read back through numpy memmaps, and draw training batches from them.
# A corpus is a list of documents: text files (given, found in directories, or downloaded from URLs) or, for the
# default corpus, the Python standard library's own docs and source. Documents are read as a stream of byte chunks
# cut at line ends, encoded by worker processes and appended to one token file on disk, so memory holds a few chunks
# at a time, never the corpus. A file longer than one chunk is encoded chunk by chunk, each continuing where the
# last one ended, so the tokens are the same as if the document had been encoded whole (see _encode_chunk).
# Chat datasets (--chat) hold conversations rendered with the model's chat template, a loss mask beside the tokens
# (only the assistant's tokens are learned) and where each conversation starts; batches take one per row, padded.
from __future__ import annotations
import argparse, ast, collections, contextlib, hashlib, io, json, multiprocessing, os, pathlib, random, shutil, sys
import sysconfig
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import urllib.error, urllib.parse, urllib.request
from dataclasses import dataclass
from typing import Iterable, Iterator
import numpy as np
import sentencepiece as spm
from tinygrad.helpers import tqdm
try: from pydoc_data.topics import topics as PYDOC_TOPICS   # help()'s reference text; some distributions drop it
except ImportError: PYDOC_TOPICS = {}
import chat
from cli import one_line_errors
from files import atomic_write, new_dir
from progress import phase
from tokenizer import Tokenizer, load_tokenizer

class DataError(ValueError):
  """Corpus or dataset input that cannot be used; the message is one line for the user."""

CHUNK_BYTES = 1 << 20                  # unit of work of an encoding worker
VAL_FRACTION = 0.1                     # the last 10% of the token stream is the validation split (as nanoGPT)
IGNORE = -100                          # a target the loss skips (sparse_categorical_crossentropy's ignore_index)
DOWNLOAD_CACHE = pathlib.Path.home() / ".cache" / "llama-tinygrad" / "downloads"
Document = pathlib.Path | tuple[str, str]      # a file, or (name, text) for text that is not a file of its own

def default_corpus() -> list[Document]:
  """English prose that every Python installation has on disk: the reference documentation that `help()` shows
  (pydoc topics) and the standard library's docstrings, one document per module (its tests, codec tables and
  third-party packages left out). Prose rather than source code, so that a small model's first sample reads as
  English; about 1.8 MB of text on CPython 3.11."""
  stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
  skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "encodings", "pydoc_data", "__pycache__"}
  files = sorted(p for p in stdlib.rglob("*.py") if p.is_file() and not skip & set(p.relative_to(stdlib).parts[:-1]))
  modules = [(f"docstrings:{f.relative_to(stdlib)}", text) for f in tqdm(files, desc="reading docstrings", unit="file")
             if (text := docstrings(f))]
  return [(f"pydoc:{k}", v) for k, v in sorted(PYDOC_TOPICS.items())] + modules

def docstrings(path: pathlib.Path, min_chars: int = 80) -> str:
  """The module's, classes' and functions' docstrings of a Python file, in file order, without doctest examples
  (paragraphs with `>>>`) and without one-liners shorter than min_chars; "" for a file that does not parse."""
  try: tree = ast.parse(path.read_bytes())
  except (SyntaxError, ValueError): return ""
  kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
  nodes = (n for n in ast.walk(tree) if isinstance(n, kinds))
  paragraphs = [p for n in nodes if (d := ast.get_docstring(n)) and len(d) >= min_chars for p in d.split("\n\n")]
  return "\n\n".join(p for p in paragraphs if ">>>" not in p)

def _is_text(path: pathlib.Path) -> bool:
  with open(path, "rb") as f: return b"\0" not in f.read(4096)

def _download(url: str) -> pathlib.Path:
  """Fetch url once into the download cache; later runs (and offline ones) reuse the cached copy."""
  name = pathlib.PurePosixPath(urllib.parse.urlparse(url).path).name or "index.txt"
  dest = DOWNLOAD_CACHE / hashlib.sha256(url.encode()).hexdigest()[:16] / name
  if dest.is_file(): return dest
  dest.parent.mkdir(parents=True, exist_ok=True)
  tmp = dest.with_name(dest.name + ".part")
  try:
    with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f: shutil.copyfileobj(r, f)
  except (urllib.error.URLError, OSError, ValueError) as e:
    tmp.unlink(missing_ok=True)
    raise DataError(
      f"cannot download {url} ({getattr(e, 'reason', e)}); offline? fetch it by hand and pass the file") from None
  os.replace(tmp, dest)
  return dest

def corpus_documents(inputs: Iterable[str]) -> list[Document]:
  """Documents named by INPUT arguments: files, directories (every non-hidden text file below, in path order) and
  URLs. A missing path or a directory without text is an error."""
  docs: list[Document] = []
  for item in inputs:
    if urllib.parse.urlparse(item).scheme in ("http", "https"): docs.append(_download(item)); continue
    p = pathlib.Path(item)
    if p.is_file(): docs.append(p)
    elif p.is_dir():
      found = [
        f for f in sorted(p.rglob("*"))
        if f.is_file() and not any(s.startswith(".") for s in f.relative_to(p).parts) and _is_text(f)
      ]
      if not found: raise DataError(f"directory {p} holds no text files")
      docs += found
    else: raise DataError(f"input {item} is neither a file, a directory nor an http(s) URL")
  return docs

def _size(doc: Document) -> int: return len(doc[1].encode()) if isinstance(doc, tuple) else doc.stat().st_size

def doc_chunks(doc: Document, size: int = CHUNK_BYTES) -> Iterator[bytes]:
  """The document's bytes in pieces of about `size`, each ending at a line end (or, in a line longer than `size`,
  between two UTF-8 characters), so no worker ever sees half a character."""
  with (io.BytesIO(doc[1].encode()) if isinstance(doc, tuple) else open(doc, "rb")) as f:
    carry = b""
    while block := f.read(size):
      block = carry + block
      cut = block.rfind(b"\n") + 1
      if cut == 0:   # no line end: cut before the last character, which may be incomplete
        cut = len(block)
        while cut > 0 and block[cut - 1] & 0xC0 == 0x80: cut -= 1   # back off continuation bytes...
        if cut > 0 and block[cut - 1] >= 0xC0: cut -= 1               # ...and the lead byte of that character
      if cut: yield block[:cut]
      carry = block[cut:]
    if carry: yield carry

def _lines(docs: list[Document]) -> Iterator[str]:
  for doc in docs:
    for chunk in doc_chunks(doc):
      yield from (line for line in chunk.decode("utf-8", "replace").split("\n") if line.strip())

def train_tokenizer(text_iter_or_files, vocab_size: int, out_prefix) -> str:
  """Train a sentencepiece tokenizer as §2.1 describes LLaMA's: byte-pair encoding, "we split all numbers into
  individual digits, and fallback to bytes to decompose unknown UTF-8 characters", no text normalisation (the
  identity rule, spaces kept as they are, Llama's trainer settings). Input: an iterable of str (text, split into
  lines as sentencepiece reads files) or of os.PathLike (files). Writes out_prefix + '.model' atomically and
  returns that path. The vocabulary limit is soft: a corpus too small for vocab_size gets a smaller vocabulary."""
  items = [text_iter_or_files] if isinstance(text_iter_or_files, (str, os.PathLike)) else text_iter_or_files
  def sentences() -> Iterator[str]:   # lazily: sentencepiece samples at most input_sentence_size lines from the stream
    for it in items:
      if isinstance(it, os.PathLike): yield from _lines([pathlib.Path(it)])
      else: yield from (line for line in it.split("\n") if line.strip())
  model = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
      sentence_iterator=sentences(), model_writer=model, vocab_size=vocab_size, model_type="bpe",
      split_digits=True, byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
      add_dummy_prefix=True, allow_whitespace_only_pieces=True, character_coverage=0.99995, max_sentence_length=4192,
      input_sentence_size=2_000_000, shuffle_input_sentence=True, hard_vocab_limit=False,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=os.cpu_count() or 1, minloglevel=2)
  except RuntimeError as e:
    raise DataError(
      f"sentencepiece could not train a {vocab_size}-token tokenizer: {str(e).strip().splitlines()[-1]}") from None
  path = str(out_prefix) + ".model"
  atomic_write(path, model.getvalue())
  return path

_worker_tok: Tokenizer | None = None
def _init_worker(tokenizer_path: str):
  global _worker_tok
  _worker_tok = load_tokenizer(tokenizer_path)

def _encode_chunk(job: tuple[bytes, bool, bool, str]) -> tuple[np.ndarray, int]:
  """Tokens of one chunk. A chunk that continues a document after a line end must not get the dummy-prefix space
  sentencepiece puts at the start of a text: it is encoded behind a "\n" whose tokens are then dropped. That is
  exact when no piece joins a newline to what follows (true of every tokenizer trained here, which learns from
  lines); when the "\n" tokens do not come out unchanged, the chunk is encoded on its own."""
  data, bos, after_newline, dtype = job
  text, tok = data.decode("utf-8", "replace"), _worker_tok
  if after_newline:
    nl, joined = tok.encode("\n"), tok.encode("\n" + text)
    if joined[:len(nl)] == nl: return np.array(joined[len(nl):], dtype=dtype), len(data)
  return np.array(tok.encode(text, bos=bos and tok.add_bos), dtype=dtype), len(data)   # add_bos: GGUF's BOS rule

def _encode_corpus(docs: list[Document], tokenizer_path: str, dtype: str, dest: pathlib.Path, workers: int) -> int:
  """Encode every document (BOS at the start of each, where the tokenizer wants one) into dest, in document order;
  returns the token count. At most a few chunks per worker are in flight, so the input is not read far ahead. A
  worker that dies (as one does when the script that called prepare() runs it again on import) ends it with a
  DataError rather than a pool that waits for it forever."""
  def jobs() -> Iterator[tuple[bytes, bool, bool, str]]:
    for doc in docs:
      prev = b""
      for k, chunk in enumerate(doc_chunks(doc)):
        yield chunk, k == 0, prev.endswith(b"\n"), dtype
        prev = chunk
  n = 0
  with contextlib.ExitStack() as stack:
    f = stack.enter_context(open(dest, "wb"))
    bar = stack.enter_context(tqdm(desc="encoding", total=sum(_size(d) for d in docs), unit="B", unit_scale=True,
                                   rate=10))
    def write(ids: np.ndarray, nbytes: int):
      nonlocal n
      f.write(ids.tobytes())
      n += len(ids)
      bar.update(nbytes)
    if workers <= 1:
      _init_worker(tokenizer_path)
      for job in jobs(): write(*_encode_chunk(job))
      return n
    pool = stack.enter_context(ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"), _init_worker,
                                                   (tokenizer_path,)))
    pending: collections.deque = collections.deque()
    try:
      for job in jobs():
        pending.append(pool.submit(_encode_chunk, job))
        if len(pending) >= 4 * workers: write(*pending.popleft().result())
      while pending: write(*pending.popleft().result())
    except BrokenProcessPool:
      raise DataError("an encoding worker process died; a script that calls data.prepare must do so under "
                      "`if __name__ == \"__main__\":`, as the workers import it again") from None
  return n

def prepare(inputs: list[str], out="data", vocab_size: int = 2048, tokenizer=None, workers: int | None = None) -> dict:
  """Turn a corpus into a token dataset in `out`: tokenizer.model (trained here, or the given tokenizer, saved as
  Tokenizer.file_name says),
  train.bin and val.bin (uint16 tokens when the vocabulary fits, else uint32), and meta.json, written last, so a
  directory with meta.json is complete. No inputs: the default corpus. Returns the meta dict."""
  if sys.modules["__main__"].__name__ == "__mp_main__":   # a worker process importing a script without that guard
    raise DataError("data.prepare was called while a worker process imported the calling script: call it under "
                    "`if __name__ == \"__main__\":`")
  out = pathlib.Path(out)
  docs = corpus_documents(inputs) if inputs else default_corpus()
  if not docs: raise DataError("the corpus is empty")
  random.Random(0).shuffle(docs)   # the validation tail is then a sample of the documents, not the last directory
  with new_dir(out):
    if tokenizer is None:
      with phase(f"training a {vocab_size}-token tokenizer on {len(docs)} documents", after=0.0):
        tok_path = train_tokenizer(_lines(docs), vocab_size, out / "tokenizer")
    else: tok_path = keep_tokenizer(tokenizer, out)
    tok = load_tokenizer(tok_path)
    dtype = "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    tmp = out / ".tokens.tmp"
    n = _encode_corpus(docs, tok_path, dtype, tmp, workers or os.cpu_count() or 1)
    n_val = int(n * VAL_FRACTION)
    tail = np.memmap(tmp, dtype=dtype, mode="r")[n - n_val:]
    tail.tofile(out / ".val.tmp")
    del tail
    os.truncate(tmp, (n - n_val) * np.dtype(dtype).itemsize)
    os.replace(tmp, out / "train.bin")
    os.replace(out / ".val.tmp", out / "val.bin")
    meta = {
      "vocab_size": tok.vocab_size, "bos_id": tok.bos_id, "eos_id": tok.eos_id, "dtype": dtype,
      "tokenizer": pathlib.Path(tok_path).name, "train_tokens": n - n_val, "val_tokens": n_val, "documents": len(docs),
      "bytes": sum(_size(d) for d in docs),
      "source": list(inputs) or ["python standard library (pydoc topics + docstrings)"]
    }
    atomic_write(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta

def keep_tokenizer(tokenizer, out: pathlib.Path) -> str:
  """Save the tokenizer file `tokenizer` (any kind load_tokenizer reads) into the dataset directory `out` in the form a
  checkpoint carries (Tokenizer.file_name: a GGUF model leaves only its vocabulary); returns the saved path."""
  tok = load_tokenizer(tokenizer)
  tok_path = str(out / tok.file_name)
  if pathlib.Path(tokenizer).resolve() != pathlib.Path(tok_path).resolve(): tok.save(tok_path)
  return tok_path

# ***** chat data: conversations rendered as generate.py --chat feeds them, the loss on the assistant's tokens only ****

def conversations(doc: Document) -> Iterator[list[dict]]:
  """The conversations of a JSON-lines file, one per line: {"messages": [{"role": ..., "content": ...}, ...]}, an
  optional system message first, then user and assistant turns alternating, ending with the assistant's."""
  text = doc[1] if isinstance(doc, tuple) else doc.read_text(encoding="utf-8", errors="replace")
  name = doc[0] if isinstance(doc, tuple) else doc
  for n, line in enumerate(text.splitlines(), 1):
    if not line.strip(): continue
    try: obj = json.loads(line)
    except json.JSONDecodeError as e: raise DataError(f"{name} line {n} is not JSON ({e.msg})") from None
    msgs = obj.get("messages") if isinstance(obj, dict) else None
    if not isinstance(msgs, list) or not msgs or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and
                                                         isinstance(m.get("content"), str) for m in msgs):
      raise DataError(f'{name} line {n}: expected {{"messages": [{{"role": ..., "content": ...}}, ...]}}')
    roles = [m["role"] for m in msgs]
    turns = roles[1:] if roles[0] == "system" else roles
    if "assistant" not in turns:
      raise DataError(f"{name} line {n}: the conversation has no assistant turn, so nothing to learn")
    if len(turns) % 2 or turns != ["user", "assistant"] * (len(turns) // 2):
      raise DataError(f"{name} line {n}: after an optional system message, user and assistant turns must alternate, "
                      f"from the user's to the assistant's (roles here: {', '.join(roles)})")
    yield msgs

def prepare_chat(inputs: list[str], out="data", tokenizer=None) -> dict:
  """A chat dataset in `out` from JSON-lines files of conversations: the tokenizer (as prepare saves it), per split
  {split}.bin tokens, {split}_mask.bin (uint8 loss mask) and {split}_starts.bin (uint64 offset of each conversation,
  and the end), then meta.json. The conversations are shuffled; the last 10% (at least one) are the validation split."""
  if tokenizer is None:
    raise DataError("--chat needs --tokenizer: the model's, whose chat template renders the conversations")
  if not inputs: raise DataError("--chat needs INPUT files of JSON lines")
  out = pathlib.Path(out)
  with new_dir(out):
    tok_path = keep_tokenizer(tokenizer, out)
    tok = load_tokenizer(tok_path)
    fmt = chat.chat_format(tok)
    convs = [c for doc in corpus_documents(inputs) for c in conversations(doc)]
    if len(convs) < 2:
      raise DataError(f"--chat needs at least 2 conversations (one goes to the validation split), found {len(convs)}")
    random.Random(0).shuffle(convs)
    n_val, dtype = max(1, int(len(convs) * VAL_FRACTION)), "uint16" if tok.vocab_size <= 1 << 16 else "uint32"
    counts = {}
    for split, part in (("train", convs[:-n_val]), ("val", convs[-n_val:])):
      starts, files = [0], {k: out / f".{split}{k}.tmp" for k in ("", "_mask")}
      with open(files[""], "wb") as ft, open(files["_mask"], "wb") as fm:
        for msgs in tqdm(part, desc=f"rendering {split}", unit="conv"):
          ids, mask = chat.render_chat(tok, fmt, msgs)
          ft.write(np.array(ids, dtype=dtype).tobytes())
          fm.write(np.array(mask, dtype=np.uint8).tobytes())
          starts.append(starts[-1] + len(ids))
      np.array(starts, dtype=np.uint64).tofile(out / f".{split}_starts.tmp")
      for k in ("", "_mask", "_starts"): os.replace(out / f".{split}{k}.tmp", out / f"{split}{k}.bin")
      counts[split] = (len(part), starts[-1])
    meta = {
      "format": "chat", "chat_format": fmt.name, "vocab_size": tok.vocab_size, "bos_id": tok.bos_id,
      "eos_id": tok.eos_id, "dtype": dtype, "tokenizer": pathlib.Path(tok_path).name,
      "train_tokens": counts["train"][1], "val_tokens": counts["val"][1], "documents": len(convs),
      "train_documents": counts["train"][0], "val_documents": counts["val"][0], "source": list(inputs)
    }
    atomic_write(out / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())
    return meta

@dataclass
class ChatSplit:
  """One split of a chat dataset: tokens, their loss mask, and where each conversation starts (and the end)."""
  tokens: np.ndarray
  mask: np.ndarray
  starts: np.ndarray

  def __len__(self) -> int: return len(self.tokens)

  @property
  def lengths(self) -> np.ndarray: return np.diff(self.starts)

  def rows(self, batch_size: int, seq_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """batch_size random conversations, one per row: the first seq_len+1 tokens of each (a longer one is cut), padded
    after its end. Inputs are the first seq_len; a target is the next token where the mask says the assistant wrote
    it, else IGNORE (the user's and system's tokens, the template's, padding). Padding comes after the conversation,
    so causal attention keeps it from every real token."""
    w, m = np.zeros((batch_size, seq_len + 1), dtype=np.int32), np.zeros((batch_size, seq_len + 1), dtype=bool)
    for r, d in enumerate(rng.integers(0, len(self.starts) - 1, size=batch_size)):
      s = int(self.starts[d])
      e = min(int(self.starts[d + 1]), s + seq_len + 1)
      w[r, :e - s], m[r, :e - s] = self.tokens[s:e], self.mask[s:e]
    return w[:, :-1], np.where(m[:, 1:], w[:, 1:], IGNORE).astype(np.int32)

def read_meta(data_dir) -> dict:
  """meta.json of a prepared dataset; DataError naming the problem when the directory is missing or unprepared."""
  d = pathlib.Path(data_dir)
  if not d.is_dir():
    raise DataError(f"data directory {d} does not exist (make one with: python data.py INPUT --out {d})")
  if not (d / "meta.json").is_file():
    raise DataError(f"data directory {d} holds no dataset (meta.json missing; run: python data.py INPUT --out {d})")
  return json.loads((d / "meta.json").read_text())

def load_split(data_dir, split: str) -> np.memmap | ChatSplit:
  """The tokens of 'train' or 'val' as a read-only memmap (nothing is read until a batch touches it); for a chat
  dataset a ChatSplit of memmaps."""
  meta, d = read_meta(data_dir), pathlib.Path(data_dir)
  def memmap(name: str, dtype) -> np.memmap:
    if not (path := d / name).is_file() or path.stat().st_size == 0: raise DataError(f"{path} is missing or empty")
    return np.memmap(path, dtype=dtype, mode="r")
  tokens = memmap(f"{split}.bin", meta["dtype"])
  if meta.get("format") != "chat": return tokens
  chat = ChatSplit(tokens, memmap(f"{split}_mask.bin", np.uint8), memmap(f"{split}_starts.bin", np.uint64))
  if len(chat.mask) != len(tokens) or int(chat.starts[-1]) != len(tokens):
    raise DataError(f"{d}: the {split} files of the chat dataset disagree in length")
  return chat


def get_batch(tokens: np.ndarray | ChatSplit, batch_size: int, seq_len: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """batch_size random windows of seq_len+1 consecutive tokens (nanoGPT's get_batch): inputs are the first seq_len,
  targets the same window shifted by one; for chat data one conversation per row (ChatSplit.rows). The windows
  depend only on rng's state, so a seed fixes them."""
  if isinstance(tokens, ChatSplit): return tokens.rows(batch_size, seq_len, rng)
  if len(tokens) < seq_len + 1: raise DataError(f"seq-len {seq_len} is longer than the data ({len(tokens)} tokens)")
  starts = rng.integers(0, len(tokens) - seq_len, size=batch_size)
  w = np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int32)
  return w[:, :-1], w[:, 1:]

def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="Train a §2.1 tokenizer on a corpus and encode it into train.bin / val.bin.")
  p.add_argument(
    "inputs", nargs="*", metavar="INPUT",
    help="text files, directories of text files or URLs (default: the Python standard library's docs and source)")
  p.add_argument("--vocab-size", type=int, default=2048, help="tokenizer vocabulary when training one (default 2048)")
  p.add_argument("--out", default="data", help="dataset directory (default data/)")
  p.add_argument(
    "--tokenizer",
    help="reuse this tokenizer (.model, llama2.c tokenizer.bin, or a GGUF file's vocabulary) instead of training one")
  p.add_argument(
    "--chat", action="store_true", help='INPUTs are JSON lines {"messages": [{"role": "system"|"user"|"assistant", '
    '"content": ...}, ...]}, rendered with --tokenizer\'s chat template; the loss is on the assistant\'s tokens only')
  p.add_argument("--workers", type=int, default=None, help="encoding processes (default: one per CPU)")
  a = p.parse_args(argv)
  return one_line_errors("data.py", lambda: run(a))

def run(a: argparse.Namespace) -> int:
  meta = prepare_chat(a.inputs, a.out, a.tokenizer) if a.chat else prepare(a.inputs, a.out, a.vocab_size, a.tokenizer,
                                                                           a.workers)
  print(f"{a.out}: {meta['train_tokens']:,} train + {meta['val_tokens']:,} val tokens from {meta['documents']} "
        f"{'conversations' if a.chat else 'documents'}, vocab {meta['vocab_size']}")
  return 0

if __name__ == "__main__": sys.exit(main())
