"""data.py's datasets section: the §2.1 tokenizer it trains, the corpus pipeline (train.bin / val.bin / meta.json)
and get_batch."""
import functools, http.server, json, pathlib, subprocess, sys, threading
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
import data
import tokenizer as tk

REPO = pathlib.Path(__file__).resolve().parent.parent

@pytest.fixture(scope="module")
def tok(shakespeare): return tk.load_tokenizer(shakespeare / "tokenizer.model")

@pytest.fixture(scope="module")
def numbers_tok(tmp_path_factory):
  """A tokenizer trained on text full of numbers: without split_digits BPE would learn multi-digit pieces."""
  rng = np.random.default_rng(0)
  lines = [
    f"item {rng.integers(0, 10**6)} costs {rng.integers(0, 1000)}.{rng.integers(10, 99)} "
    f"in year 19{rng.integers(10, 99)}"
    for _ in range(3000)
  ]
  return tk.load_tokenizer(data.train_tokenizer(["\n".join(lines)], 300, tmp_path_factory.mktemp("num") / "num"))

# ***** tokenizer (§2.1) *****

# U+2581 '▁' is sentencepiece's own marker for a space, so that one character comes back as ' ' (so it does with
# Llama's tokenizer); every other character, including unseen ones, control bytes and NUL, survives
@settings(max_examples=200)
@given(st.text(st.characters(blacklist_categories=("Cs",),
                             blacklist_characters="\u2581"))) # Cs: lone surrogates are not text
def test_round_trip_unicode(tok, s):
  assert tok.decode(tok.encode(s)) == s

@settings(max_examples=100)
@given(st.integers(0, 10**30), st.sampled_from(["", "x", "item ", "year 19"]))
def test_digits_always_split(numbers_tok, n, prefix):
  ids = numbers_tok.encode(f"{prefix}{n} apples")
  digit_tokens = [numbers_tok.decode([i]).strip() for i in ids if any(c.isdigit() for c in numbers_tok.decode([i]))]
  assert all(len(t) == 1 for t in digit_tokens), digit_tokens    # no piece holds two digits or a digit and a letter
  assert "".join(digit_tokens) == "".join(c for c in f"{prefix}{n}" if c.isdigit())
  # the corpus was full of numbers, so the digits are pieces of their own, not byte fallbacks
  assert any(numbers_tok.types[i] == tk.NORMAL for i in ids if numbers_tok.decode([i]).strip().isdigit())

@settings(max_examples=50)
@given(st.text(st.characters(min_codepoint=0x3400, max_codepoint=0x4DBF), min_size=1,
               max_size=8)) # CJK, absent from Shakespeare
def test_unknown_characters_fall_back_to_bytes(tok, s):
  ids = tok.encode(s)
  body = [i for i in ids if tok.types[i] == tk.BYTE]
  assert bytes(tok.pieces[i][0] for i in body) == s.encode()       # every UTF-8 byte spelled by a byte token
  assert 0 not in ids                                               # never <unk>
  assert tok.decode(ids) == s

def test_too_small_vocabulary_is_a_clear_error(tmp_path):
  with pytest.raises(data.DataError, match="sentencepiece"):
    data.train_tokenizer(["just a few words here"], 100, tmp_path / "t")   # below 256 bytes + specials

# ***** the corpus pipeline *****

def test_dataset_files(shakespeare, fixtures, tok):
  meta = json.loads((shakespeare / "meta.json").read_text())
  train, val = data.load_split(shakespeare, "train"), data.load_split(shakespeare, "val")
  assert meta["dtype"] == "uint16" and train.dtype == np.uint16 and meta["vocab_size"] == 512
  assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
  assert len(val) == int(0.1 * (len(train) + len(val)))
  # one document: BOS first, nowhere else, and the two splits decode back to the exact file
  both = np.concatenate([train, val]).tolist()
  assert both[0] == tok.bos_id and both.count(tok.bos_id) == 1
  assert tok.decode(both[1:]) == (fixtures / "tinyshakespeare.txt").read_text()

def test_bos_at_each_document_and_chunking(tmp_path, tok, shakespeare):
  docs = {f"d{i}.txt": f"Document {i}: " + "é漢 line of text\n" * (i * 40 + 1) for i in range(5)}
  corpus = tmp_path / "corpus"
  (corpus / "sub").mkdir(parents=True)
  for name, text in docs.items(): (corpus / ("sub" if name == "d3.txt" else "") / name).write_text(text)
  (corpus / "binary.dat").write_bytes(b"\0\1\2")                                       # skipped: not text
  (corpus / ".hidden.txt").write_text("hidden")                                        # skipped: hidden
  out = tmp_path / "ds"
  meta = data.prepare([str(corpus)], out, tokenizer=shakespeare / "tokenizer.model", workers=1)
  assert meta["documents"] == 5
  both = np.concatenate([data.load_split(out, "train"), data.load_split(out, "val")]).tolist()
  starts = [k for k, t in enumerate(both) if t == tok.bos_id]
  assert len(starts) == 5 and starts[0] == 0
  texts = [tok.decode(both[s + 1:e]) for s, e in zip(starts, starts[1:] + [len(both)])]
  assert sorted(texts) == sorted(docs.values())

@settings(max_examples=60)
@given(st.text(min_size=0, max_size=300), st.integers(1, 40))
def test_chunks_cover_the_bytes_and_cut_between_characters(s, size):
  chunks = list(data.doc_chunks(("doc", s), size))
  assert b"".join(chunks) == s.encode()
  for c in chunks: c.decode("utf-8")     # raises if a chunk ends inside a character

def test_parallel_encoding_matches_serial(tmp_path, shakespeare, fixtures):
  text = (fixtures / "tinyshakespeare.txt").read_bytes()[:300_000]
  (tmp_path / "a.txt").write_bytes(text)
  (tmp_path / "b.txt").write_bytes(text[::-1].decode("utf-8", "ignore").encode())
  tokfile = shakespeare / "tokenizer.model"
  one = data.prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "one", tokenizer=tokfile, workers=1)
  two = data.prepare([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], tmp_path / "two", tokenizer=tokfile, workers=2)
  assert one == two
  for split in ("train", "val"):
    assert (tmp_path / "one" / f"{split}.bin").read_bytes() == (tmp_path / "two" / f"{split}.bin").read_bytes()

def test_a_script_without_a_main_guard_gets_an_error_not_a_hang(tmp_path, shakespeare, fixtures):
  """A plain script that calls data.prepare with worker processes at its top level (no `if __name__ == "__main__":`):
  the spawned workers import the script again; prepare ends with one DataError naming the guard, within a timeout,
  instead of waiting for the workers forever (as multiprocessing.Pool did)."""
  (tmp_path / "a.txt").write_bytes((fixtures / "tinyshakespeare.txt").read_bytes()[:100_000])
  tok = str(shakespeare / "tokenizer.model")
  (tmp_path / "plain.py").write_text(f"import sys\nsys.path.insert(0, {str(REPO)!r})\nimport data\n"
                                     f"data.prepare(['a.txt'], 'out', tokenizer={tok!r}, workers=2)\n")
  r = subprocess.run([sys.executable, "plain.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
  last = r.stderr.strip().splitlines()[-1]
  assert r.returncode != 0 and last.startswith("data.DataError") and '__name__ == "__main__"' in last, r.stderr[-2000:]

def test_default_corpus_is_the_stdlibs_english_prose():
  docs = data.default_corpus()
  names = [name for name, _ in docs]
  assert any(n.startswith("pydoc:") for n in names)   # the reference docs help() shows
  assert "docstrings:argparse.py" in names and len(names) > 300
  assert not any({"test", "tests", "site-packages"} & set(pathlib.Path(n.split(":", 1)[1]).parts) for n in names)
  argparse_doc = dict(docs)["docstrings:argparse.py"]
  assert argparse_doc.startswith("Command-line parsing library")
  assert "def " not in argparse_doc and ">>>" not in argparse_doc

def test_docstrings_are_taken_in_file_order_without_examples(tmp_path):
  src = tmp_path / "m.py"
  src.write_text('"""A module about the sea, long enough to be kept as a paragraph of English prose here."""\n'
                 'def f():\n  """Short."""\n'
                 'class C:\n  """The class docstring: several words that make a sentence of more than eighty'
                 ' characters.\n\n  >>> C()\n  C\n  """\n')
  assert data.docstrings(src) == (
    "A module about the sea, long enough to be kept as a paragraph of English prose here.\n\n"
    "The class docstring: several words that make a sentence of more than eighty characters.")
  (tmp_path / "bad.py").write_text("def (:\n")
  assert data.docstrings(tmp_path / "bad.py") == ""

def test_url_input_is_downloaded_once(tmp_path, monkeypatch, shakespeare):
  monkeypatch.setattr(data, "DOWNLOAD_CACHE", tmp_path / "cache")
  (tmp_path / "www").mkdir()
  (tmp_path / "www" / "page.txt").write_text("to be or not to be\n" * 50)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "www"))
  handler.log_message = lambda *a: None
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  url = f"http://127.0.0.1:{server.server_port}/page.txt"
  try: first = data.prepare([url], tmp_path / "a", tokenizer=shakespeare / "tokenizer.model", workers=1)
  finally: server.shutdown(); server.server_close()
  second = data.prepare([url], tmp_path / "b", tokenizer=shakespeare / "tokenizer.model",
                        workers=1) # server gone: cache
  assert first["train_tokens"] == second["train_tokens"] > 0

def test_download_failure_is_one_clear_error(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "DOWNLOAD_CACHE", tmp_path / "cache")
  with pytest.raises(data.DataError, match="cannot download http://127.0.0.1:9/x.txt"):
    data.prepare(["http://127.0.0.1:9/x.txt"], tmp_path / "out")

def not_a_tokenizer(p: pathlib.Path) -> list[str]:
  (p / "notes.txt").write_text("some text to encode\n" * 20)
  return [str(p / "notes.txt"), "--tokenizer", str(REPO / "README.md")]

@pytest.mark.parametrize("make_input, message", [
  (lambda p: [str(p / "missing.txt")], "neither a file"),
  (lambda p: (p / "empty").mkdir() or [str(p / "empty")], "no text files"),
  (not_a_tokenizer, "README.md"),
])
def test_cli_bad_input(tmp_path, make_input, message):
  """One line on stderr, a non-zero exit, and no --out directory left behind (not even an empty one)."""
  r = subprocess.run([sys.executable, str(REPO / "data.py"), *make_input(tmp_path), "--out", str(tmp_path / "o" / "d")],
                     capture_output=True, text=True, cwd=tmp_path)
  assert r.returncode != 0 and message in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
  assert not (tmp_path / "o").exists()

def test_read_meta_errors(tmp_path):
  with pytest.raises(data.DataError, match="does not exist"): data.read_meta(tmp_path / "nope")
  with pytest.raises(data.DataError, match="meta.json missing"): data.read_meta(tmp_path)

# ***** batches *****

@settings(max_examples=50)
@given(st.integers(1, 8), st.integers(1, 64), st.integers(0, 100), st.integers(0, 2**31))
def test_get_batch_windows(batch, seq, extra, seed):
  tokens = np.arange(seq + 1 + extra, dtype=np.uint16)     # a token's value is its position
  x, y = data.get_batch(tokens, batch, seq, np.random.default_rng(seed))
  assert x.shape == y.shape == (batch, seq) and x.dtype == np.int32
  assert (x >= 0).all() and (y < len(tokens)).all()                    # inside the data
  assert (np.diff(x, axis=1) == 1).all()                               # consecutive tokens
  assert (y == x + 1).all()                                            # targets are the inputs shifted by one
  x2, y2 = data.get_batch(tokens, batch, seq, np.random.default_rng(seed))
  assert (x == x2).all() and (y == y2).all()                           # same seed, same batch

def test_get_batch_covers_the_data_and_refuses_short_data():
  tokens = np.arange(100, dtype=np.uint16)
  rng = np.random.default_rng(0)
  starts = {int(data.get_batch(tokens, 1, 10, rng)[0][0, 0]) for _ in range(2000)}
  assert starts == set(range(90))                                      # every window start, up to the last full one
  assert not (data.get_batch(tokens, 4, 10, np.random.default_rng(1))[0] == data.get_batch(
    tokens, 4, 10, np.random.default_rng(2))[0]).all()
  with pytest.raises(data.DataError, match="longer than the data"): data.get_batch(tokens, 1, 100, rng)
