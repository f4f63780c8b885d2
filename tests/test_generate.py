"""generate.py: golden output, on-device sampling properties, JIT decode vs plain forward, no recompilation,
streaming, chat formats, and the command line's handling of bad input."""
import io, re, subprocess, sys, pathlib
import numpy as np, pytest
from hypothesis import given, settings, assume, strategies as st
from tinygrad import Tensor, TinyJit
import llama, generate as G
import checkpoint, kernels
import decode, chat, gguf
from common import one_line_error
from engine import compiled_kernels

ROOT = pathlib.Path(__file__).resolve().parent.parent
V, ROWS = 10, 256   # sampling tests: a 10-token vocabulary, 256 independent draws per call

def cli(*args, stdin: str = "", cwd=ROOT, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "generate.py"), *map(str, args)], input=stdin, capture_output=True,
                        text=True, cwd=cwd, timeout=timeout)

@pytest.fixture(scope="module")
def stories(s260):
  return checkpoint.load(s260[0], tokenizer=s260[1])

# ***** golden *****

def test_golden_stories260k(fixtures, s260):
  """llama2.c's reference text: greedy, empty prompt (BOS only), 200 tokens."""
  ref = re.search(r"```text\n(.*?)```", (fixtures / "README.md").read_text(), re.S).group(1)
  r = cli(s260[0], "--tokenizer", s260[1], "-p", "", "-n", 200, "-t", 0)
  assert r.returncode == 0, r.stderr
  assert r.stdout == ref
  assert "200 new tokens (-n)" in r.stderr and "decode" in r.stderr and "time to first token" in r.stderr

# ***** sampling: properties against numpy, on small random logits *****

_samplers: dict = {}
_rng = decode.Rng(0)
def draw(logits: np.ndarray, s: decode.Sampling) -> np.ndarray:
  """ROWS independent draws from one distribution, through one compiled sampler per filter combination."""
  key = (s.temperature == 0, bool(s.top_k), s.top_p < 1)
  if key not in _samplers:
    _samplers[key] = TinyJit(lambda x, k, s=s: decode.sample(x, k, s, _rng.uniform(ROWS, V)).realize())
  rows = Tensor(np.broadcast_to(logits.astype(np.float32), (ROWS, V)).copy()).realize()
  return _samplers[key](rows, s.knobs()).numpy()[:, 0]

def softmax(logits: np.ndarray, t: float) -> np.ndarray:
  z = logits.astype(np.float64) / t
  e = np.exp(z - z.max())
  return e / e.sum()


logit_vectors = st.lists(st.floats(-4, 4, allow_nan=False).map(lambda x: round(x, 2)), min_size=V, max_size=V).map(
  np.array)

@settings(max_examples=25)
@given(logits=logit_vectors, p=st.floats(0.05, 1.0), t=st.floats(0.3, 2.0))
def test_top_p_stays_in_nucleus(logits, p, t):
  """Every pick lies in the smallest set of most probable tokens whose mass reaches p (tokens tied with its
  least probable member included); numpy in float64 with a 1e-4 margin for float32 rounding."""
  probs = softmax(logits, t)
  order = np.sort(probs)[::-1]
  tau = order[np.searchsorted(np.cumsum(order), min(p + 1e-4, 1.0) - 1e-9)]   # least probable member, lenient
  picks = draw(logits, decode.Sampling(t, p, 0))
  assert np.all(probs[picks] >= tau - 1e-7), (picks, probs, tau)
  # and the nucleus is not shrunk: the most probable token is always in it, and a token is only picked
  # when the mass strictly above it is below p (Meta: excluded iff cumulative mass before it > p)
  above = np.array([probs[probs > probs[i]].sum() for i in picks])
  assert np.all(above <= p + 1e-4)

@settings(max_examples=20)
@given(logits=logit_vectors, k=st.integers(1, V - 1), t=st.floats(0.3, 2.0))
def test_top_k_stays_in_k_largest(logits, k, t):
  probs = softmax(logits, t)
  kth = np.sort(probs)[::-1][k - 1]
  picks = draw(logits, decode.Sampling(t, 1.0, k))
  assert np.all(probs[picks] >= kth * (1 - 1e-5)), (picks, probs, k)

@settings(max_examples=15)
@given(logits=logit_vectors)
def test_low_temperature_is_argmax(logits):
  top2 = np.sort(logits)[-2:]
  assume(top2[1] - top2[0] >= 0.05)            # a clear winner: at t = 1e-3 the runner-up has weight e^-50
  assert np.all(draw(logits, decode.Sampling(1e-3, 0.9, 0)) == logits.argmax())
  assert np.all(draw(logits, decode.Sampling(0.0)) == logits.argmax())

def test_sampling_frequencies_match_softmax():
  """Without filters the exponential race draws from softmax(logits / t): frequencies over 8 calls agree."""
  logits, t = np.linspace(-1.5, 1.5, V), 0.8
  counts = np.bincount(np.concatenate([draw(logits, decode.Sampling(t, 1.0, 0)) for _ in range(8)]), minlength=V)
  assert np.abs(counts / counts.sum() - softmax(logits, t)).max() < 0.03

def test_top_p_mass_one_token():
  """A dominant token with mass > p is the whole nucleus, whatever the rest."""
  logits = np.zeros(V); logits[3] = 5.0      # p(3) ≈ 0.94
  assert np.all(draw(logits, decode.Sampling(1.0, 0.9, 0)) == 3)

def test_sampling_rejects_bad_values():
  for bad in (decode.Sampling(-0.1), decode.Sampling(1.0, 0.0), decode.Sampling(1.0, 1.5), decode.Sampling(
      1.0, 0.9, -1)):
    with pytest.raises(ValueError): bad.check()

# ***** the decoding loop on real weights *****

CTX = 128   # one context size (so one cache shape) for every decoding test: kernels compile once

def run_gen(model, ids, n, sampling, seed=None, ctx=CTX):
  gen = decode.Generator(model, ctx, sampling, seed)
  out = decode.generate(gen, ids, n, None, decode.Stats())
  model.drop_cache()
  return gen, out

def test_jit_decode_equals_plain_forward(stories):
  """Greedy tokens from chunked prefill + JIT decode are the argmax of one plain (cache-free) forward of the
  same sequence, position by position; the prompt spans two prefill chunks (chunk 32)."""
  model, tok = stories
  prompt = tok.encode(
    "Once upon a time, there was a little dog named Max. Max liked to run and play with his ball all day long in the "
    "big green park.",
    bos=True)
  assert len(prompt) > 32
  _, out = run_gen(model, prompt, 24, decode.Sampling(0.0))
  seq = prompt + out
  plain = model(Tensor([seq[:-1]]), 0)[0].argmax(-1).numpy()
  assert plain[len(prompt) - 1:].tolist() == out

def test_no_recompilation_as_position_advances(stories):
  model, tok = stories
  gen = decode.Generator(model, CTX, decode.Sampling(0.8, 0.9, 0), seed=0)
  gen.feed(tok.encode("Lily", bos=True))
  for _ in range(3): gen.next()                 # first call compiles, second captures the JIT
  gen.feed([gen.pending.item()] + tok.encode(" and the cat"))   # a second prefill at another position
  compiled = compiled_kernels()
  for _ in range(40): gen.next()
  gen.feed([gen.pending.item()] + tok.encode(" went home"))
  model.drop_cache()
  assert gen.decode_step.captured is not None and gen.pos > 50
  assert compiled_kernels() == compiled

def test_same_seed_same_text(stories):
  model, tok = stories
  ids = tok.encode("Once upon a time", bos=True)
  a = run_gen(model, ids, 40, decode.Sampling(1.0, 0.95, 0), seed=7)[1]
  b = run_gen(model, ids, 40, decode.Sampling(1.0, 0.95, 0), seed=7)[1]
  c = run_gen(model, ids, 40, decode.Sampling(1.0, 0.95, 0), seed=8)[1]
  assert a == b and a != c

def test_streaming_equals_decode(stories, capsys):
  """What plain mode prints, token by token, is decode() of prompt and continuation (multi-byte text included)."""
  model, tok = stories
  gen = decode.Generator(model, CTX, decode.Sampling(1.2, 0.98, 0), seed=3)
  ids = tok.encode("Lily saw a 🐱 and said «héllo»", bos=True)
  args = G.parse_args(["-n", "60"])
  stats, new = G.run_plain(gen, tok, args, ids)
  model.drop_cache()
  assert capsys.readouterr().out == tok.decode(ids + new) + "\n"
  assert stats.new_tokens == len(new) and stats.prompt_tokens == len(ids)

def test_context_limit_stops(stories):
  model, tok = stories
  prompt = [1] + [403, 407, 261, 378] * 27
  gen, out = run_gen(model, prompt, 100, decode.Sampling(0.0))
  # 109 prompt tokens and the first 19 new ones fill the 128 positions; the 20th is predicted from a full cache
  assert gen.pos == CTX and len(out) == CTX - len(prompt) + 1

# ***** chat formats *****

def test_chat_format_detection_and_rendering():
  class Tok:   # just enough of the tokenizer interface: one id per character, specials by name
    bos_id, eos_id, special_tokens = 1, 2, {"<|im_start|>": 1, "<|im_end|>": 2}
    chat_template = "{{'<|im_start|>system\nYou are Bob<|im_end|>\n'}}{{'<|im_start|>' + message['role'] + '\n'}}"
    def encode(self, s): return [ord(c) for c in s]
  tok = Tok()
  fmt = chat.chat_format(tok)
  assert (fmt.name, fmt.default_system) == ("chatml", "You are Bob")
  text = lambda ids: "".join({1: "<|im_start|>", 2: "<|im_end|>"}.get(i) or chr(i) for i in ids)
  assert text(chat.encode_pieces(tok, fmt.turn("Hi", None, True))) == \
    "<|im_start|>system\nYou are Bob<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
  assert text(chat.encode_pieces(tok, fmt.turn("<|im_end|>", None,
                                               False))).count("<|im_end|>") == 2 # user text stays text
  tok.chat_template = ("{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
                       "{% endif %}")
  fmt = chat.chat_format(tok)
  assert fmt.name == "llama2"
  # Meta's chat_completion: BOS "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
  assert chat.encode_pieces(tok, fmt.turn(" Hi ", "Be brief",
                                          True)) == [1] + tok.encode("[INST] <<SYS>>\nBe brief\n<</SYS>>\n\nHi [/INST]")
  tok.chat_template = "{{ '<start_of_turn>user' }}"
  with pytest.raises(ValueError): chat.chat_format(tok)

def test_chatml_matches_smollm2_template(fixtures):
  """Our ChatML rendering of a two-turn conversation equals the GGUF's own Jinja template rendered by jinja2."""
  jinja2 = pytest.importorskip("jinja2")
  kv = gguf.read_header(fixtures / "smollm2-135m-instruct-q4_1.gguf").metadata
  class Tok:
    bos_id, eos_id, special_tokens, chat_template = 1, 2, {"<|im_start|>": 1,
                                                           "<|im_end|>": 2}, kv["tokenizer.chat_template"]
    def encode(self, s): return [ord(c) + 10 for c in s]
  tok, msgs = Tok(), [("user", "Hi there"), ("assistant", "Hello!"), ("user", "Bye")]
  fmt = chat.chat_format(tok)
  ids = chat.encode_pieces(tok, fmt.turn("Hi there", None, True)) + tok.encode("Hello!") + [tok.eos_id] + \
        chat.encode_pieces(tok, fmt.after_eos() + fmt.turn("Bye", None, False))
  ours = "".join({1: "<|im_start|>", 2: "<|im_end|>"}.get(i) or chr(i - 10) for i in ids)
  ref = jinja2.Template(tok.chat_template).render(messages=[{"role": r, "content": c} for r, c in msgs],
                                                  add_generation_prompt=True)
  assert ours == ref

# ***** command line *****

BAD_INPUTS = [  # (arguments after the model and its tokenizer, what the error names)
  (["-t", "-1"], "temperature"), (["--top-p", "0"], "top-p"), (["--top-p", "1.5"], "top-p"), (["-n", "-3"], "-n"),
  (["-p", "Once upon a time " * 8, "--max-context", "16"], "too long"), (["--max-context", "100000"], "--max-context")]

def test_cli_bad_inputs(s260, tmp_path, capsys, monkeypatch):
  """Each bad input: exit 1, one line on stderr that names it (generate.main in this process, as the CLI runs it)."""
  m, t = map(str, s260)
  for args, message in [([str(tmp_path / "nope.bin")], "nope.bin"), ([m, "--tokenizer", str(tmp_path / "none.model")],
                        "none.model")] + [([m, "--tokenizer", t, *a], msg) for a, msg in BAD_INPUTS]:
    code = G.main(args)
    assert one_line_error(code, *capsys.readouterr(), message, "generate.py"), (args, message)
  monkeypatch.chdir(tmp_path)                  # no MODEL and no out/ here: say how to get a checkpoint
  assert one_line_error(G.main([]), *capsys.readouterr(), "train.py", "generate.py")

def test_cli_tensor_parallel_two_devices(fixtures, s260):
  """--devices: stories260K loaded split over two virtual CPU devices (tensor parallel, tensor by tensor) prints
  llama2.c's greedy text, the same the one-device run prints (test_golden_stories260k)."""
  ref = re.search(r"```text\n(.*?)```", (fixtures / "README.md").read_text(), re.S).group(1)
  r = cli(s260[0], "--tokenizer", s260[1], "-p", "", "-n", 40, "-t", 0, "--devices", "CPU:0,CPU:1")
  assert r.returncode == 0, r.stderr
  assert len(r.stdout) > 100 and ref.startswith(r.stdout.rstrip("\n"))
  assert "split over 2 devices (tensor parallel)" in r.stderr and "40 new tokens (-n)" in r.stderr
  r = cli(s260[0], "--tokenizer", s260[1], "--devices", "CPU:0,CPU:1,CPU:2")
  assert one_line_error(r.returncode, r.stdout, r.stderr, "n_heads (8) to be divisible by 3", "generate.py")

def test_cli_chat_two_turns(fixtures, capsys, monkeypatch, tmp_path):
  """SmolLM2-135M-Instruct answers two piped turns through its ChatML template, reusing the cache: the second answer
  is the greedy answer to the whole conversation as the model's own Jinja template renders it, prefilled afresh (by
  the steps the launch kept in --cache-dir, restored into an empty cache: no second compile of SmolLM2)."""
  jinja2 = pytest.importorskip("jinja2")
  path, questions = fixtures / "smollm2-135m-instruct-q4_1.gguf", ["What is the capital of France?", "What is 2 + 2?"]
  monkeypatch.setattr(sys, "stdin", io.StringIO("".join(q + "\n" for q in questions)))   # piped: not a terminal
  code = G.main([str(path), "--chat", "-t", "0", "-n", "48", "--max-context", "256", "--cache-dir", str(tmp_path)])
  out, err = capsys.readouterr()
  assert code == 0, err
  lines = [a for a in out.strip().split("\n") if a.strip()]
  assert lines[0::2] == [f"> {q}" for q in questions], out   # piped turns are marked in the transcript
  answers = lines[1::2]
  assert len(answers) == 2 and "Paris" in answers[0], out
  assert err.count("[end of sequence (EOS)]") == 2 and "prompt" in err
  [kept] = tmp_path.glob("*.jit")
  gen, tok, _, _ = G.restore(kept, decode.Sampling(0.0), None)
  msgs = [{"role": "user", "content": questions[0]}, {"role": "assistant", "content": answers[0]},
          {"role": "user", "content": questions[1]}]
  ids = tok.encode(jinja2.Template(tok.chat_template).render(messages=msgs, add_generation_prompt=True), special=True)
  assert tok.decode(decode.generate(gen, ids, 48, tok.eos_id, decode.Stats())).strip() == answers[1]

_keepers: dict = {}
@settings(max_examples=30)
@given(logits=st.lists(st.floats(-6, 6, allow_nan=False).map(lambda x: round(x, 1)), min_size=V, max_size=V).map(
  np.array),
       p=st.floats(0.05, 0.99),
       k=st.integers(1, V),
       fan=st.sampled_from([4, 16]))
def test_threshold_search_is_exact(logits, p, k, fan):
  """The sort-free threshold search keeps exactly the tokens at or above the k-th largest probability (top-k),
  and exactly the smallest nucleus reaching mass p plus ties (top-p), for both fan-outs; numpy on the same
  float32 probabilities, with near-boundary cases (within 1e-5 of p) left out."""
  probs = softmax(logits, 1.0).astype(np.float32)
  order = np.sort(probs)[::-1]
  csum = np.cumsum(order.astype(np.float64))
  n = int(np.searchsorted(csum, p))                 # the nucleus: order[:n+1]
  assume(np.abs(csum - p).min() > 1e-5)
  if fan not in _keepers:
    _keepers[fan] = TinyJit(lambda x, kk, pp: Tensor.stack(decode.keep_top(x, x.ones_like(), kk, fan),
                                                           decode.keep_top(x, x, pp, fan)).realize())
  top_k, top_p = _keepers[fan](Tensor(probs[None]).realize(), Tensor([float(k)]).realize(), Tensor(
    [p]).realize()).numpy()[:, 0]
  assert np.array_equal(top_k > 0, probs >= order[k - 1])
  assert np.array_equal(top_p > 0, probs >= order[n])

def test_no_model_uses_out_dir(s260, tmp_path):
  """Without MODEL, generate.py samples from the checkpoint train.py leaves in out/ (our own format)."""
  model, tok = checkpoint.load(s260[0], tokenizer=s260[1])
  checkpoint.save(model, tmp_path / "out", tokenizer=tok)
  r = cli("-p", "", "-n", 12, "-t", 0, cwd=tmp_path)
  assert r.returncode == 0, r.stderr
  assert r.stdout == "Once upon a time, there was a little girl\n"   # the golden text, cut at 12 tokens

def test_matvec_linears_keep_state_dict_and_tokens(s260, tmp_path):
  """Swapping every layer (min_size 0) for the 8-lane matvec keeps the learned tensors' names (a tied classifier stays
  tied, also in a saved checkpoint) and gives the tokens of the plain nn.Linear forward; a second call changes
  nothing."""
  model, tok = checkpoint.load(*s260)
  keys = set(llama.learned(model))
  prompt = tok.encode("Once upon a time", bos=True)
  plain = [int(t) for t in model(Tensor([prompt]), 0)[0].argmax(-1).numpy()]
  kernels.use_decode_kernels(model, min_size=0)
  a = model.layers[0].attention
  assert isinstance(a.wq, kernels.FusedPart) and isinstance(a.wo, kernels.MatVecLinear) and model.output is not None
  assert [p.weight.shape for p in (a.wq, a.wk, a.wv)] == [(64, 64), (32, 64),
                                                          (32, 64)] # stories260K: 8 heads, 4 kv-heads of 8
  wq, output = a.wq, model.output
  kernels.use_decode_kernels(model, min_size=0)
  assert a.wq is wq and model.output is output
  assert set(llama.learned(model)) == keys and "output.weight" not in keys
  checkpoint.save(model, tmp_path / "ck")
  saved, _ = checkpoint.load(tmp_path / "ck")
  assert saved.args.tie_embeddings and saved.output is None
  _, out = run_gen(model, prompt, 8, decode.Sampling(0.0))
  seq = prompt + out
  assert out[0] == plain[-1]
  assert [int(t) for t in model(Tensor([seq[:-1]]), 0)[0].argmax(-1).numpy()][len(prompt) - 1:] == out
