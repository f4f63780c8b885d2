"""train.py: the §2.3 optimiser pieces (schedule, decay groups, clipping), learning (overfit one batch, beat the
unigram entropy), exact resume (also after Ctrl-C), checkpoints that checkpoint.load / generate.py read, and the CLI.
Every run shares one tiny configuration, so the train step is compiled once per session."""
import contextlib, gc, io, json, math, os, pathlib, signal, subprocess, sys, threading, time
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from tinygrad import Context, Device, GlobalCounters, Tensor, dtypes
from tinygrad.nn.state import safe_load
import data, generate, llama, plots, train, training, optim, steps, runs
import checkpoint, parallel, words
import decode
from common import TINY, one_line_error

REPO = pathlib.Path(__file__).resolve().parent.parent

@pytest.fixture(scope="module")
def dataset(shakespeare) -> pathlib.Path: return shakespeare   # conftest: prepared once a session

def run(*argv) -> int: return train.main([str(a) for a in argv])

def losses(out: pathlib.Path, key="loss") -> list[float]: return [e[key] for e in runs.read_log(out) if key in e]

@pytest.fixture(scope="module")
def run60(dataset, tmp_path_factory) -> pathlib.Path:
  """An uninterrupted 60-step run of the tiny configuration."""
  out = tmp_path_factory.mktemp("run60")
  assert run(*TINY, "--data", dataset, "--out", out, "--max-steps", 60) == 0
  return out

# ***** §2.3 schedule, weight-decay groups, clipping *****

@settings(max_examples=100)
@given(st.floats(1e-5, 1.0), st.integers(1, 50), st.integers(0, 400), st.floats(0.0, 1.0))
def test_lr_schedule(peak, warmup, extra, ratio):
  a = training.TrainConfig(lr=peak, warmup_steps=warmup, lr_decay_steps=warmup + extra, min_lr_ratio=ratio)
  for k in range(warmup):
    assert math.isclose(optim.lr_at(k, a.lr, a.warmup_steps, a.lr_decay_steps, a.min_lr_ratio),
                        peak * (k + 1) / warmup) # linear warmup ...
  assert math.isclose(optim.lr_at(warmup - 1, a.lr, a.warmup_steps, a.lr_decay_steps, a.min_lr_ratio),
                      peak) # ... up to the peak
  after = [
    optim.lr_at(k, a.lr, a.warmup_steps, a.lr_decay_steps, a.min_lr_ratio)
    for k in range(warmup - 1, warmup + extra + 20)
  ]
  assert all(x >= y - 1e-12 for x, y in zip(after, after[1:]))                              # never rises after it
  assert all(ratio * peak - 1e-12 <= x <= peak + 1e-12 for x in after)
  for k in (max(warmup, warmup + extra - 1), warmup + extra, warmup + extra + 1000): # update number lr-decay-steps
    assert math.isclose(optim.lr_at(k, a.lr, a.warmup_steps, a.lr_decay_steps, a.min_lr_ratio),
                        ratio * peak,
                        rel_tol=1e-9,
                        abs_tol=1e-15) # and after: the floor
  if extra >= 2:   # cosine in between
    mid = optim.lr_at(warmup + extra // 2 - 1, a.lr, a.warmup_steps, a.lr_decay_steps, a.min_lr_ratio)
    assert math.isclose(mid, peak * (ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * (extra // 2) / extra))))

def test_weight_decay_only_on_matrices():
  Tensor.manual_seed(0)
  model = llama.Transformer(
    llama.ModelArgs(dim=32, n_layers=2, n_heads=2, n_kv_heads=1, vocab_size=64, multiple_of=32, max_seq_len=16))
  decay, keep = optim.param_groups(model)
  assert set(keep) == {"tok_embeddings.weight", "norm.weight"
                       } | {f"layers.{i}.{n}_norm.weight"
                            for i in range(2)
                            for n in ("attention", "ffn")}
  assert {k.rsplit(".", 2)[-2] for k in decay} == {"wq", "wk", "wv", "wo", "w1", "w2", "w3", "output"}
  opt, params = optim.make_optimizer(model, lr=0.1, weight_decay=0.5)
  before = {k: t.numpy().copy() for k, t in (decay | keep).items()}
  # zero gradients: Adam's step is 0, so only decoupled weight decay moves a tensor: p ← p·(1 − lr·wd)
  for p in params: p.grad = Tensor.zeros(*p.shape).contiguous()
  with Context(TRAINING=1): Tensor.realize(*opt.schedule_step())
  for k, t in decay.items(): np.testing.assert_allclose(t.numpy(), before[k] * (1 - 0.1 * 0.5), rtol=1e-6)
  for k, t in keep.items(): np.testing.assert_array_equal(t.numpy(), before[k])

@settings(max_examples=25)
@given(st.lists(st.tuples(st.integers(1, 5), st.integers(1, 5)), min_size=1, max_size=4), st.floats(1e-3, 1e3),
       st.floats(0.1, 5.0), st.integers(0, 1000))
def test_clipping_bounds_the_global_norm(shapes, scale, max_norm, seed):
  rng = np.random.default_rng(seed)
  grads = [rng.standard_normal(s).astype(np.float32) * scale for s in shapes]
  params = [Tensor.zeros(*s).contiguous() for s in shapes]
  for p, g in zip(params, grads): p.grad = Tensor(g)
  norm = optim.clip_grad_norm(params, max_norm).item()
  true = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
  assert math.isclose(norm, true, rel_tol=1e-4)                                  # the returned norm is before clipping
  clipped = [p.grad.numpy() for p in params]
  after = math.sqrt(sum(float((c.astype(np.float64) ** 2).sum()) for c in clipped))
  assert after <= max_norm * (1 + 1e-4)                                          # bounded ...
  k = min(1.0, max_norm / (true + 1e-6))
  for c, g in zip(clipped, grads):
    np.testing.assert_allclose(c, g * k, rtol=1e-4, atol=1e-6) # ... same direction, untouched below

# ***** learning *****

def test_overfits_one_batch(dataset):
  a = train.parse_args(TINY + ["--data", str(dataset), "--weight-decay", "0"])
  Tensor.manual_seed(1)
  model = llama.Transformer(training.model_args(a, 512))
  opt, params = optim.make_optimizer(model, a.lr, a.weight_decay)
  step = steps.make_train_step(model, opt, params, a.grad_clip)
  x, y = data.get_batch(data.load_split(dataset, "train"), 4, 32, np.random.default_rng(0))
  x, y = parallel.to_device(x[None], a.devices, a.parallel, batch_axis=1), parallel.to_device(y[None],
                                                                                              a.devices,
                                                                                              a.parallel,
                                                                                              batch_axis=1)
  lr = Tensor([3e-3], dtype=dtypes.float32).realize()
  with Context(USE_ATOMICS=1): hist = [step(x, y, lr)[0].item() for _ in range(250)]
  assert hist[0] > 5.5 and hist[-1] < 0.1, hist[::25]

def test_loss_falls_below_unigram_entropy(run60, dataset):
  tokens = data.load_split(dataset, "train")
  p = np.bincount(tokens, minlength=512) / len(tokens)
  entropy = -(p[p > 0] * np.log(p[p > 0])).sum()      # the loss of the best model that ignores context (≈ 5.0 nats)
  val = losses(run60, "val_loss")
  assert len(val) == 1 and val[0] < entropy - 0.1, (val, entropy)

# ***** resume *****

def test_resume_equals_uninterrupted(run60, dataset, tmp_path):
  assert run(*TINY, "--data", dataset, "--out", tmp_path, "--max-steps", 30, "--lr-decay-steps", 60) == 0
  assert json.loads((tmp_path / "train_state.json").read_text())["step"] == 30
  assert run(*TINY, "--data", dataset, "--out", tmp_path, "--max-steps", 60, "--resume") == 0
  assert losses(tmp_path) == losses(run60) and len(losses(run60)) == 60
  assert losses(tmp_path, "val_loss")[-1] == losses(run60, "val_loss")[-1]

def test_ctrl_c_saves_and_resumes_exactly(run60, dataset, tmp_path):
  def interrupt():   # Ctrl-C once the run is a few steps in
    while len(losses(tmp_path)) < 5: time.sleep(0.01)
    os.kill(os.getpid(), signal.SIGINT)
  threading.Thread(target=interrupt, daemon=True).start()
  assert run(*TINY, "--data", dataset, "--out", tmp_path, "--max-steps", 60) == 130
  stopped = json.loads((tmp_path / "train_state.json").read_text())["step"]
  assert 5 <= stopped < 60 and len(losses(tmp_path)) == stopped
  assert run(*TINY, "--data", dataset, "--out", tmp_path, "--max-steps", 60, "--resume") == 0
  assert losses(tmp_path) == losses(run60)

# ***** the checkpoint *****

def test_checkpoint_loads_in_llama_and_generate(run60, dataset, capsys):
  model, tok = checkpoint.load(run60)
  assert (model.args.dim, model.args.n_layers, model.args.vocab_size) == (32, 1, 512) and tok.vocab_size == 512
  # the loaded weights are the final ones: they reproduce the validation loss logged at the last step
  a = train.parse_args(TINY + ["--data", str(dataset)])
  with Context(USE_ATOMICS=1): val = training.evaluate(steps.make_eval_step(model), data.load_split(dataset, "val"), a)
  assert math.isclose(val, losses(run60, "val_loss")[-1], rel_tol=1e-5)
  state = json.loads((run60 / "train_state.json").read_text())
  assert state["step"] == 60 and state["config"]["model"]["dim"] == 32 and "rng" in state
  generate.main([str(run60), "-n", "8", "-t", "0", "--max-context", "32"])
  assert "8 new tokens" in capsys.readouterr().err

def test_cli_smoke(dataset, tmp_path):
  r = subprocess.run([
    sys.executable,
    str(REPO / "train.py"), *TINY[:-2], "--sample-tokens", "12", "--max-steps", "3", "--data",
    str(dataset), "--out",
    str(tmp_path / "out")
  ],
                     capture_output=True,
                     text=True,
                     cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-2000:]
  assert "--- sample (" in r.stdout and "step 3" in r.stderr
  assert {
    "config.json", "model.safetensors", "tokenizer.model", "optimizer.safetensors", "train_state.json", "log.jsonl"
  } <= {f.name
        for f in (tmp_path / "out").iterdir()}
  assert [e["step"] for e in runs.read_log(tmp_path / "out")] == [1, 2, 3]

# ***** bad input: one line on stderr, non-zero exit *****

@pytest.fixture(scope="module")
def short_data(dataset, tmp_path_factory) -> pathlib.Path:
  src = tmp_path_factory.mktemp("short")
  (src / "a.txt").write_text("To be, or not to be, that is the question.\n" * 5)
  data.prepare([str(src / "a.txt")], src / "ds", tokenizer=dataset / "tokenizer.model", workers=1)
  return src / "ds"

@pytest.mark.parametrize("extra, message", [
  (["--data", "{tmp}/missing"], "does not exist"),
  (["--data", "{tmp}"], "holds no dataset"),
  (["--data", "{short}", "--seq-len", "500"], "longer than the data"),
  (["--data", "{data}", "--preset", "huge"], "unknown preset 'huge'"),
  (["--data", "{data}", "--batch-size", "100000000"], "lower --batch-size"),
  (["--data", "{data}", "--resume"], "no training checkpoint"),
  (["--data", "{data}", "--max-steps", "0"], "at least 1"),
  (["--data", "{data}", "--devices", "CPU:0,CPU:1,CPU:2", "--parallel", "tp"
    ], "tensor parallel over 3 devices needs n_heads (2) to be divisible by 3"),
  (["--data", "{data}", "--devices", "CPU:0,CPU:1", "--parallel", "tp"], "needs n_kv_heads (1) to be divisible by 2"),
  (["--data", "{data}", "--devices", "CPU:0,CPU:1", "--parallel", "dp+tp"], "dp+tp is not supported"),
  (["--data", "{data}", "--devices", "CPU:0,CPU:1,CPU:2"], "needs the batch size (4) to be divisible by 3"),
  (["--data", "{data}", "--devices", "CPU:0,NOSUCHDEV:1"], "device NOSUCHDEV:1 is not available"),
])
def test_bad_input(extra, message, dataset, short_data, tmp_path, capsys):
  argv = [e.format(tmp=tmp_path, short=short_data, data=dataset) for e in extra]
  assert run(*TINY, "--out", tmp_path / "out", *argv) != 0
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and err.startswith("train.py: error:")

@pytest.mark.skipif(Device.DEFAULT != "CPU", reason="elsewhere another device starts without clang")
def test_no_clang_is_one_line(tmp_path):
  """A machine without clang: tinygrad's CPU backend cannot start and no other device is there; train.py says what to
  install in one line instead of tinygrad's traceback ("no usable devices")."""
  # an empty PATH, and a new compile cache (the CPU backend's start-up programs are cached once compiled)
  env = {k: v for k, v in os.environ.items() if k != "DEV"} | {"PATH": str(tmp_path), "CACHEDB": str(tmp_path / "c.db")}
  r = subprocess.run([sys.executable, str(REPO / "train.py"), "--dry-run"], capture_output=True, text=True, env=env,
                     cwd=tmp_path, timeout=120)
  assert one_line_error(r.returncode, r.stdout, r.stderr, "is clang installed?", "train.py"), r.stderr[-2000:]

def test_plot(dataset, tmp_path, capsys):
  if not plots.available():   # matplotlib is an optional extra
    assert run(*TINY, "--data", dataset, "--out", tmp_path, "--plot") == 1
    assert "pip install matplotlib" in capsys.readouterr().err
  else:
    assert run(*TINY, "--data", dataset, "--out", tmp_path, "--plot", "--max-steps", 2) == 0
    assert (tmp_path / "loss.png").read_bytes()[:4] == b"\x89PNG"

# ***** several devices (§2.4, issue 6), on virtual CPU devices: the same run as on one device *****

MHA = TINY[:-2] + ["--n-kv-heads", "2", "--max-steps", "2", "--sample-tokens", "12"
                   ] # tp splits kv-heads too: 2 for 2 devices

def run_printed(*argv) -> str:
  """train.main's printed output (the sample); asserts it succeeded."""
  with contextlib.redirect_stdout(io.StringIO()) as printed: assert run(*argv) == 0
  return printed.getvalue()

@pytest.fixture(scope="module")
def one_device(dataset, tmp_path_factory) -> pathlib.Path:
  """Two steps and a sample on the default device."""
  out = tmp_path_factory.mktemp("one_device")
  (out / "printed.txt").write_text(run_printed(*MHA, "--data", dataset, "--out", out))
  return out

def assert_same_run(out: pathlib.Path, ref: pathlib.Path):
  """Step 1's loss is the same forward, its gradient norm the same gradients, step 2's loss the same update; then
  the same validation loss, final weights and sample (decoded from the sharded model)."""
  log, ref_log = runs.read_log(out), runs.read_log(ref)
  assert [e["step"] for e in log] == [e["step"] for e in ref_log] == [1, 2]
  for e, r in zip(log, ref_log):
    assert set(e) == set(r), (e, r)                  # the same entries were logged (step 2 alone has val_loss)
    for k in {"loss", "grad_norm", "val_loss"} & set(e): assert e[k] == pytest.approx(r[k], rel=1e-5), (k, e, r)
  # each update is about lr = 2e-3 and 4e-3; Adam's lr·g/(|g|+1e-8) turns float32 noise in a small gradient (summed in
  # another order where a split shape gets other kernel tiles) into 1e-6 to 1.05e-5 of weight (seen once in 3072), so
  # 1e-4 leaves room for that and none for a wrong update
  got, want = safe_load(str(out / "model.safetensors")), safe_load(str(ref / "model.safetensors"))
  for k, t in want.items(): np.testing.assert_allclose(got[k].numpy(), t.numpy(), atol=1e-4, rtol=0, err_msg=k)
  assert (out / "printed.txt").read_text().split("--- sample")[1] == (
    ref / "printed.txt").read_text().split("--- sample")[1]

def test_data_parallel_two_devices_matches_one(one_device, dataset, tmp_path):
  """--parallel dp: weights copied, batch split, gradients all-reduced. (tinygrad's atomic embedding backward
  leaves each device with only its own tokens' part: use_atomics keeps it off here, and the norm would show it.)"""
  (tmp_path / "printed.txt").write_text(
    run_printed(*MHA, "--data", dataset, "--out", tmp_path, "--devices", "CPU:0,CPU:1", "--parallel", "dp"))
  assert_same_run(tmp_path, one_device)

def test_tensor_parallel_with_checkpointing_matches_one(one_device, dataset, tmp_path):
  """--parallel tp --checkpoint-activations: every layer split over 2 devices (Megatron-LM), each block recomputed
  in the backward pass; the sample decodes through a KV cache split by kv-heads."""
  (tmp_path / "printed.txt").write_text(
    run_printed(*MHA, "--data", dataset, "--out", tmp_path, "--devices", "CPU:0,CPU:1", "--parallel", "tp",
                "--checkpoint-activations"))
  assert_same_run(tmp_path, one_device)

def test_float16_keeps_float32_masters(one_device, dataset, tmp_path, capsys):
  """--dtype float16 on 2 devices: the optimiser updates float32 master copies, saved beside the moments; the model
  holds them rounded to float16, and they keep what float16 cannot (else small updates would be rounded away).
  Resuming needs the same --dtype. (bfloat16 would be the accelerator choice; Debian 12's clang 14 cannot compile
  bfloat16 CPU kernels, float16 takes the same path.)"""
  assert run(*MHA, "--data", dataset, "--out", tmp_path, "--devices", "CPU:0,CPU:1", "--parallel", "tp", "--dtype",
             "float16", "--sample-tokens", "0") == 0
  for e, r in zip(runs.read_log(tmp_path), runs.read_log(one_device)):
    assert e["loss"] == pytest.approx(r["loss"], abs=2e-3)
  weights, opt = safe_load(str(tmp_path / "model.safetensors")), safe_load(str(tmp_path / "optimizer.safetensors"))
  model = llama.Transformer(training.model_args(train.parse_args(MHA), 512), init=False)
  names = [k for g in optim.param_groups(model) for k in g]
  assert {k for k in opt if k.startswith("master.")} == {f"master.{j}" for j in range(len(names))}
  finer = 0
  for j, name in enumerate(names):
    master, w = opt[f"master.{j}"].numpy(), weights[name].numpy()
    assert master.dtype == np.float32 and w.dtype == np.float16
    np.testing.assert_array_equal(master.astype(np.float16), w, err_msg=name)
    finer += int((master != w.astype(np.float32)).sum())
  assert finer > 0
  capsys.readouterr()
  assert run(*MHA, "--data", dataset, "--out", tmp_path, "--max-steps", "3", "--resume") == 1
  assert capsys.readouterr().err.strip(
  ) == "train.py: error: --resume: the checkpoint was trained with --dtype float16, not float32"

def test_dry_run_prints_memory_without_allocating(capsys):
  """The printed figures against first principles: 65.3B fp32 parameters are 243 GiB; tensor parallel over 4 devices
  holds a quarter of them per device, data parallel all of them; a gradient per weight; AdamW's m and v twice that."""
  gc.collect()                                # other tests' unreachable buffers are freed now, not during the run
  before = GlobalCounters.mem_used
  assert run("--dry-run", "--preset", "65B", "--devices", "CPU:0,CPU:1,CPU:2,CPU:3", "--parallel", "tp") == 0
  assert GlobalCounters.mem_used <= before    # one 65B layer would be 3 GiB; a garbage collection may only lower it
  printed = capsys.readouterr().out
  rows = {(c[1], c[2]): c
          for line in printed.splitlines() if (c := [x.strip() for x in line.split("|")])[1:2] == ["65B"]}
  whole = 65_285_660_672 * 4 / 2**30                                    # Table 2's 65B, float32 bytes, in GiB
  for mode, share in (("tp", 4), ("dp", 1)):
    weights, grads, adam = (float(x) for x in rows["65B", mode][4:7])
    # under tp tinygrad keeps the untied embedding's gradient whole on every device: 32000 x 8192 floats less a quarter
    assert weights == pytest.approx(whole / share, rel=0.01)
    assert grads == pytest.approx(weights + 32000 * 8192 * 4 / 2**30 * (1 - 1 / share), rel=0.01)
    assert adam == pytest.approx(2 * weights, rel=0.01)
  assert "tp over 4 device(s)" in printed and "micro-batch 8x128 tokens" in printed
  this = printed.split("this run:")[1]
  total, acts = (float(this.split(k)[1].split(" ")[0]) for k in ("total ", "activations "))
  assert total - acts == pytest.approx(4 * whole / 4, rel=0.01)        # weights + grads + m + v of a quarter each

# ***** the sample reads as the corpus: words.py's measure *****

def sample_share(model, tok, words_set: set[str], seeds=range(4)) -> float:
  """The share of corpus words in the samples of `seeds` together (100 tokens each, temperature 0.3: a 60-step model
  at train.py's 0.8 still draws mostly from its noise; one sample holds too few words to measure)."""
  texts = []
  for seed in seeds:
    gen = decode.Generator(model, 128, decode.Sampling(temperature=0.3, top_p=1.0), seed=seed, chunk=1)
    texts.append(tok.decode(decode.generate(gen, [tok.bos_id], 100, tok.eos_id, decode.Stats())))
    model.drop_cache()
  return words.known_share(" ".join(texts), words_set)

def test_training_makes_the_sample_corpus_words(run60, dataset):
  """60 steps of a one-layer 32-wide model on Shakespeare: most of the words of its samples are words of the corpus,
  at least twice the share of an untrained model of the same shape (the measure train.py prints under its sample;
  the default run's figure is in the README)."""
  model, tok = checkpoint.load(run60)
  vocab = words.corpus_words(dataset)
  Tensor.manual_seed(0)   # the untrained model is one fixed draw, whatever ran before in this process
  trained, untrained = sample_share(model, tok, vocab), sample_share(llama.Transformer(model.args), tok, vocab)
  assert trained > 0.5 and trained >= 2 * untrained, (trained, untrained)
