"""Fine-tuning (train.py --init-from): every weight or LoRA adapters (lora.py, Hu et al. 2021) on stories260K from
../shared/fixtures with a small TinyStories-like text written here; data.py with every tokenizer kind; chat data
rendered with the model's template and its loss mask; LoRA on SmolLM2's GGUF; bad input. Runs share one small
configuration so the train step compiles few times."""
import json, pathlib, random, shutil
import numpy as np
import pytest
from tinygrad import Tensor
from tinygrad.nn.state import safe_load
import checkpoint, data, generate, llama, lora, parallel, train, training, steps, runs, memory
import reference as ref
import tokenizer as tk
import chat
import sentencepiece as spm

SMALL = ["--batch-size", "4", "--seq-len", "32", "--eval-every", "1000", "--eval-steps", "1", "--sample-tokens", "0"]
SEED = 1337   # TrainConfig's default: the first batch is data.get_batch with default_rng(SEED)

def stories(n: int = 150, seed: int = 0) -> str:
  """TinyStories-like sentences (the kind stories260K was trained on)."""
  r = random.Random(seed)
  names, things = ["Lily", "Tom", "Ben", "Sue", "Max", "Mia"], ["ball", "dog", "cat", "toy", "kite", "box", "tree"]
  adjs, places = ["big", "red", "little", "happy", "small", "blue"], ["park", "garden", "house", "forest"]
  lines = []
  for _ in range(n):
    a, b, t, adj, p = r.choice(names), r.choice(names), r.choice(things), r.choice(adjs), r.choice(places)
    lines.append(
      f"Once upon a time, there was a {adj} girl named {a}. She loved to play with her {t} in the {p}. "
      f"One day, {a} saw a {adj} {t}. She said, \"{b}, look at my {t}!\" {b} was happy and they played all day.\n")
  return "".join(lines)

def run(*argv) -> int: return train.main([str(a) for a in argv])

def log(out: pathlib.Path, key: str = "loss") -> list[float]: return [e[key] for e in runs.read_log(out) if key in e]

def one_line_error(capsys, message: str) -> None:
  err = capsys.readouterr().err.strip()
  assert message in err and len(err.splitlines()) == 1 and err.startswith(("train.py: error:", "data.py: error:")), err


@pytest.fixture(scope="module")
def text_data(fixtures, tmp_path_factory) -> pathlib.Path:
  """The stories encoded with llama2.c's tokenizer.bin: the dataset carries it as a sentencepiece .model."""
  d = tmp_path_factory.mktemp("text")
  (d / "stories.txt").write_text(stories())
  data.prepare([str(d / "stories.txt")], d / "ds", tokenizer=fixtures / "stories260K" / "tok512.bin", workers=1)
  return d / "ds"

def base_model(s260) -> llama.Transformer: return checkpoint.load(s260[0])[0]

def first_batch(ds: pathlib.Path, batch: int = 4, seq: int = 32):
  return data.get_batch(data.load_split(ds, "train"), batch, seq, np.random.default_rng(SEED))

def reference_loss(weights: dict, args, x, y) -> float:
  """Mean cross-entropy of tests/reference.py's float64 numpy LLaMA."""
  logits = ref.forward(weights, args, x)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return float(-np.take_along_axis(logp, y[..., None], -1).mean())

# ***** data.py --tokenizer: every kind, saved as the checkpoint will carry it *****

def test_data_with_llama2c_and_gguf_tokenizers(fixtures, text_data, tmp_path):
  text = stories(20, seed=1)
  (tmp_path / "a.txt").write_text(text)
  # llama2.c tokenizer.bin: saved as tokenizer.model; the ids are what the sentencepiece library gives with tok512.model
  assert data.read_meta(text_data)["tokenizer"] == "tokenizer.model"
  meta = data.prepare([str(tmp_path / "a.txt")],
                      tmp_path / "bin",
                      tokenizer=fixtures / "stories260K" / "tok512.bin",
                      workers=1)
  ids = np.concatenate([data.load_split(tmp_path / "bin", s) for s in ("train", "val")]).tolist()
  assert ids == [1] + spm.SentencePieceProcessor(model_file=str(fixtures / "stories260K" / "tok512.model")).encode(text)
  assert meta["vocab_size"] == 512
  # a GGUF model file: only its vocabulary is kept (tokenizer.gguf, with the chat template); SmolLM2 adds no BOS
  gguf = fixtures / "smollm2-135m-instruct-q4_1.gguf"
  data.prepare([str(tmp_path / "a.txt")], tmp_path / "gguf", tokenizer=gguf, workers=1)
  saved = tmp_path / "gguf" / "tokenizer.gguf"
  assert saved.stat().st_size < gguf.stat().st_size / 20
  tok = tk.load_tokenizer(saved)
  assert tok.chat_template == tk.load_tokenizer(gguf).chat_template and tok.pieces == tk.load_tokenizer(gguf).pieces
  ids = np.concatenate([data.load_split(tmp_path / "gguf", s) for s in ("train", "val")]).tolist()
  assert tok.decode(ids) == text and tok.bos_id not in ids

def finetune(s260, data_dir: pathlib.Path, out: pathlib.Path, steps: int, *flags) -> pathlib.Path:
  """train.py --init-from stories260K on data_dir for `steps` steps into out; returns out."""
  assert run("--init-from", s260[0], "--tokenizer", s260[1], "--data", data_dir, "--out", out, "--max-steps", steps,
             *flags) == 0
  return out

# ***** full fine-tuning *****

@pytest.fixture(scope="module")
def full_run(s260, text_data, tmp_path_factory) -> pathlib.Path:
  return finetune(s260, text_data, tmp_path_factory.mktemp("full"), 12, "--lr", "1e-3", "--warmup-steps", 2, *SMALL)

def test_full_finetune_starts_from_the_checkpoint(full_run, s260, text_data, capsys):
  model = base_model(s260)
  x, y = first_batch(text_data)
  weights = {k: v.numpy() for k, v in llama.learned(model).items()}
  # step 1's loss is the pretrained model's on that batch (read before the update), here by the float64 reference
  assert log(full_run)[0] == pytest.approx(reference_loss(weights, model.args, x, y), rel=1e-5)
  Tensor.manual_seed(0)
  fresh = llama.Transformer(model.args)(Tensor(x)).sparse_categorical_crossentropy(Tensor(y)).item()
  assert log(full_run)[0] < fresh - 3, (log(full_run)[0], fresh)        # ~1.4 vs ln(512) ≈ 6.2: not re-initialised
  assert np.mean(log(full_run)[-3:]) < log(full_run)[0] - 0.2, log(full_run)
  saved = safe_load(str(full_run / "model.safetensors"))
  assert set(saved) == set(weights) and any((saved[k].numpy() != w).any() for k, w in weights.items())
  # out/ carries llama2.c's vocabulary as a .model: generate.py opens it without --tokenizer
  assert (full_run / "tokenizer.model").is_file()
  capsys.readouterr()
  generate.main([str(full_run), "-n", "8", "-t", "0", "--max-context", "32"])
  out = capsys.readouterr()
  assert "8 new tokens" in out.err and len(out.out.strip()) > 10

def test_finetune_defaults_and_resume_inherits_them(tmp_path):
  scratch, full = training.configure(training.TrainConfig()), training.configure(training.TrainConfig(init_from="x"))
  lo = training.configure(training.TrainConfig(init_from="x", lora_rank=4))
  assert (scratch.lr, scratch.warmup_steps) == (3e-3, 20)
  assert full.lr < scratch.lr and lo.lr < scratch.lr and full.warmup_steps < scratch.warmup_steps
  assert (lo.lora_alpha, lo.lora_targets) == (4.0, "wq,wv") and training.configure(
    training.TrainConfig(init_from="x", lr=0.5)).lr == 0.5
  (tmp_path / "train_state.json").write_text(
    json.dumps({
      "config": {
        "init_from": "m.gguf", "lora_rank": 2, "lora_alpha": 8.0, "lora_targets": "wk", "lr": 0.25, "warmup_steps": 3
      }
    }))
  r = training.configure(training.TrainConfig(out=str(tmp_path), resume=True))
  assert (r.init_from, r.lora_rank, r.lora_alpha, r.lora_targets, r.lr, r.warmup_steps) == ("m.gguf", 2, 8.0, "wk",
                                                                                            0.25, 3)
  assert training.configure(training.TrainConfig(out=str(tmp_path), resume=True, lr=0.1)).lr == 0.1

# ***** LoRA *****

def test_lora_trains_only_the_adapters(s260, text_data):
  cfg = train.parse_args([
    "--init-from",
    str(s260[0]), "--tokenizer",
    str(s260[1]), "--data",
    str(text_data), "--lora-rank", "4", "--lora-alpha", "8", "--lora-targets", "wq,wv,w2", "--lr", "1e-2",
    "--warmup-steps", "1", *SMALL
  ])
  r = training.setup(cfg)
  plain = base_model(s260)
  xs, ys = first_batch(text_data)
  x = Tensor(xs)
  adapters = lora.adapters(r.model)
  assert len(adapters) == 2 * 3 * 5 and {id(p)
                                         for p in r.params} == {id(t)
                                                                for t in adapters.values()} # Adam sees only them
  assert sum(t.numel() for t in adapters.values()) == lora.num_params(r.model.args, 4, "wq,wv,w2")
  assert all((t.numpy() == 0).all() for k, t in adapters.items() if k.endswith("lora_b"))            # B = 0 ...
  np.testing.assert_allclose(r.model(x).numpy(), plain(x).numpy(), rtol=0, atol=1e-6) # ... so step 0 is the base
  base = {k: t.numpy().copy() for k, t in lora.base(r.model).items()}
  assert set(base) == set(llama.learned(plain))
  before = {k: t.numpy().copy() for k, t in adapters.items()}
  step = steps.make_train_step(r.model, r.opt, r.params, cfg.grad_clip)
  xk, yk, lr = parallel.to_device(xs[None], cfg.devices), parallel.to_device(ys[None], cfg.devices), Tensor(
    [1e-2]).realize()
  for _ in range(3): step(xk, yk, lr)
  for k, t in lora.base(r.model).items():
    np.testing.assert_array_equal(t.numpy(), base[k], err_msg=k) # frozen, bit for bit
  assert all((t.numpy() != before[k]).any() for k, t in adapters.items()) # every A and B moved
  # merged W + (α/r)·B·A: the same logits as base + adapters, and as the float64 reference with the merged weights
  merged = lora.merged(r.model)
  assert set(llama.learned(merged)) == set(base)
  weights = dict(base)
  for prefix, owner, attr in lora.wrapped(r.model):
    a, b = getattr(owner, attr).lora_a.numpy().astype(np.float64), getattr(owner, attr).lora_b.numpy().astype(
      np.float64)
    weights[f"{prefix}.weight"] = base[f"{prefix}.weight"] + 8 / 4 * b @ a
  got = r.model(x).numpy()
  assert np.abs(got - plain(x).numpy()).max() > 1e-2 # training did change it
  np.testing.assert_allclose(merged(x).numpy(), got, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(ref.forward(weights, r.model.args, xs), got, rtol=1e-5, atol=1e-4)

LORA = ["--lora-rank", "4", "--lr", "3e-3", "--warmup-steps", "2", "--lr-decay-steps", "6", *SMALL]

@pytest.fixture(scope="module")
def lora_run(s260, text_data, tmp_path_factory) -> pathlib.Path:
  return finetune(s260, text_data, tmp_path_factory.mktemp("lora"), 6, *LORA)

def test_lora_checkpoint_resumes_exactly_and_merges(lora_run, s260, text_data, tmp_path, capsys):
  # 3 steps, then --resume (the fine-tuning options come back from the checkpoint) to 6: the same run
  assert run("--init-from", s260[0], "--tokenizer", s260[1], "--data", text_data, "--out", tmp_path, "--max-steps", 3,
             *LORA) == 0
  assert run("--out", tmp_path, "--max-steps", 6, "--resume", *SMALL) == 0
  assert log(tmp_path) == log(lora_run) and len(log(lora_run)) == 6
  got, want = safe_load(str(tmp_path / "adapters.safetensors")), safe_load(str(lora_run / "adapters.safetensors"))
  assert set(got) == set(want) and all(k.endswith(lora.ADAPTER_NAMES) for k in got)
  for k in want: np.testing.assert_array_equal(got[k].numpy(), want[k].numpy(), err_msg=k)
  assert (lora_run / "adapters.safetensors").stat().st_size < (lora_run / "model.safetensors").stat().st_size / 10
  # the final save holds the merged model: our format, the base's names and shapes, opened like any checkpoint
  merged, tok = checkpoint.load(lora_run)
  assert tok is not None and set(safe_load(str(lora_run / "model.safetensors"))) == set(llama.learned(base_model(s260)))
  x, _ = first_batch(text_data)
  want_logits = merged(Tensor(x)).numpy()
  capsys.readouterr()
  generate.main([str(lora_run), "-n", "8", "-t", "0", "--max-context", "32"])
  assert "8 new tokens" in capsys.readouterr().err
  # --merge rebuilds it from the adapters and the base
  shutil.copytree(lora_run, tmp_path / "copy")
  for f in ("model.safetensors", "config.json"): (tmp_path / "copy" / f).unlink()
  assert run("--out", tmp_path / "copy", "--merge") == 0
  np.testing.assert_allclose(checkpoint.load(tmp_path / "copy")[0](Tensor(x)).numpy(), want_logits, rtol=0, atol=1e-5)

def test_lora_data_parallel_two_devices(lora_run, s260, text_data, tmp_path):
  """--devices CPU:0,CPU:1 --parallel dp: the adapters copied, the batch split; the same two steps as one device."""
  assert run("--init-from", s260[0], "--tokenizer", s260[1], "--data", text_data, "--out", tmp_path, "--max-steps", 2,
             *LORA, "--devices", "CPU:0,CPU:1") == 0
  for e, r in zip(runs.read_log(tmp_path), runs.read_log(lora_run)[:2]):
    for k in ("loss", "grad_norm"): assert e[k] == pytest.approx(r[k], rel=1e-5), (k, e, r)

def test_dry_run_counts_lora_memory(s260, capsys):
  assert run("--dry-run", "--init-from", s260[0], "--lora-rank", "4") == 0
  args = base_model(s260).args
  full = memory.memory_per_device(args, 1, "dp", 8, 128)
  m = memory.memory_per_device(args, 1, "dp", 8, 128, trainable=lora.num_params(args, 4, "wq,wv"))
  n = 5 * (4 * (64 + 64) + 4 * (64 + 32))       # 5 layers of wq (A 4x64, B 64x4) and wv (A 4x64, B 32x4)
  assert lora.num_params(args, 4, "wq,wv") == n and (m["grads"], m["adam"]) == (4 * n, 8 * n)   # float32, no masters
  assert m["weights"] == full["weights"] + 4 * n and m["activations"] == full["activations"] and m[
    "grads"] < full["grads"] / 10
  assert f"LoRA rank 4 alpha 4 on wq,wv: {n:,} trainable" in capsys.readouterr().out

# ***** chat data *****

CONVS = [[{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How can I help?"},
          {"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4."}],
         [{"role": "system", "content": "You are a pirate."}, {"role": "user", "content": "Where is the ship?"},
          {"role": "assistant", "content": "Arr, in the bay!"}]]

@pytest.fixture(scope="module")
def smol_tok(fixtures): return tk.load_tokenizer(fixtures / "smollm2-135m-instruct-q4_1.gguf")

def test_chat_rendering_equals_the_template(smol_tok):
  """ChatML as SmolLM2's own Jinja template writes it (jinja2), encoded with its special tokens; the mask covers the
  assistant's answers and their <|im_end|>, nothing else."""
  jinja2 = pytest.importorskip("jinja2")
  fmt = chat.chat_format(smol_tok)
  for conv in CONVS:
    ids, mask = chat.render_chat(smol_tok, fmt, conv)
    assert ids == smol_tok.encode(jinja2.Template(smol_tok.chat_template).render(messages=conv,
                                                                                 add_generation_prompt=False),
                                  special=True)
    runs, cur = [], []
    for i, m in zip(ids, mask):
      if m: cur.append(i)
      elif cur: runs, cur = runs + [cur], []
    assert [smol_tok.decode(r) for r in runs] == [m["content"] + "<|im_end|>" for m in conv if m["role"] == "assistant"]

def test_masked_targets_contribute_nothing():
  """steps.loss_sum / steps.counted: the mean over the unmasked targets only (numpy), and the gradient of every
  masked position's logits exactly zero, so no weight receives anything from them."""
  rng = np.random.default_rng(0)
  logits, y = rng.standard_normal((2, 7, 11)).astype(np.float32), rng.integers(0, 11, (2, 7))
  keep = rng.random((2, 7)) < 0.5
  keep[0, 0] = True
  ym = np.where(keep, y, data.IGNORE)
  t = Tensor(logits)
  loss = steps.loss_sum(t, Tensor(ym)) / steps.counted(Tensor(ym))
  (grad,) = loss.gradient(t)
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  assert loss.item() == pytest.approx(float(-np.log(p[keep, y[keep]]).mean()), rel=1e-5)
  want = (p - np.eye(11)[y]) / keep.sum() * keep[..., None]
  np.testing.assert_allclose(grad.numpy(), want, atol=1e-6)
  assert (grad.numpy()[~keep] == 0).all()

def test_chat_dataset_rows(smol_tok, fixtures, tmp_path):
  """data.py --chat: the conversations rendered as above, one per batch row; a target is IGNORE unless the assistant
  wrote it, so changing what the user wrote at a row's last position (a target only) changes nothing."""
  lines = [json.dumps({"messages": CONVS[k % 2]}) for k in range(6)]
  (tmp_path / "c.jsonl").write_text("\n".join(lines) + "\n")
  assert data.main([
    "--chat",
    str(tmp_path / "c.jsonl"), "--tokenizer",
    str(fixtures / "smollm2-135m-instruct-q4_1.gguf"), "--out",
    str(tmp_path / "ds")
  ]) == 0
  meta, split = data.read_meta(tmp_path / "ds"), data.load_split(tmp_path / "ds", "train")
  assert meta["format"] == "chat" and (meta["train_documents"], meta["val_documents"]) == (5, 1)
  fmt = chat.chat_format(smol_tok)
  renders = {tuple(chat.render_chat(smol_tok, fmt, c)[0]): chat.render_chat(smol_tok, fmt, c)[1] for c in CONVS}
  for s, e in zip(split.starts[:-1], split.starts[1:]):
    assert list(split.mask[s:e]) == renders[tuple(split.tokens[s:e].tolist())]
  ids, mask = chat.render_chat(smol_tok, fmt, CONVS[0])
  second = next(
    i for i in range(1, len(ids)) if mask[i] and not mask[i - 1] and any(mask[:i])) # the second answer's start
  j = max(i for i in range(second) if ids[i] == smol_tok.special_tokens["<|im_end|>"]) - 1   # the user's last token
  assert smol_tok.decode([ids[j]]) == "?" and not mask[j]
  x, y = data.ChatSplit(np.array(ids), np.array(mask, np.uint8), np.array([0, len(ids)])).rows(
    1, j, np.random.default_rng(0))
  assert (x[0] == ids[:j]).all() and y[0, -1] == data.IGNORE
  assert [int(t) for t in y[0] if t != data.IGNORE] == [t for t, m in zip(ids[1:j + 1], mask[1:j + 1]) if m]
  x2, y2 = data.ChatSplit(np.array(ids[:j] + [ids[j] + 1] + ids[j + 1:]), np.array(mask, np.uint8),
                          np.array([0, len(ids)])).rows(1, j, np.random.default_rng(0))
  assert (x2 == x).all() and (y2 == y).all()
  # short rows are padded, their padding never a target
  x, y = split.rows(3, 200, np.random.default_rng(1))
  assert x.shape == (3, 200) and (y[:, -1] == data.IGNORE).all()

def test_lora_on_smollm2_gguf_with_chat_data(fixtures, tmp_path):
  """--init-from SmolLM2's GGUF (quantised weights dequantised, GGUF vocabulary) with LoRA on chat data and activation
  checkpointing (each block a program of its own, so the 30 layers' step is scheduled once, not thirty times): a
  step, and out/ holds tokenizer.gguf and the merged model. The README's chat run trains it for longer."""
  gguf = fixtures / "smollm2-135m-instruct-q4_1.gguf"
  (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"messages": c}) for c in CONVS * 3) + "\n")
  assert data.main(["--chat", str(tmp_path / "c.jsonl"), "--tokenizer", str(gguf), "--out", str(tmp_path / "ds")]) == 0
  assert run("--init-from", gguf, "--data", tmp_path / "ds", "--out", tmp_path / "out", "--lora-rank", 2,
             "--lora-targets", "wq", "--checkpoint-activations", "--max-steps", 1, "--batch-size", 1, "--seq-len", 48,
             "--eval-steps", 1, "--sample-tokens", 0) == 0
  losses = log(tmp_path / "out")
  assert len(losses) == 1 and 0 < losses[0] < 6, losses # ln(49152) ≈ 10.8: the instruct model knows ChatML answers
  assert {"tokenizer.gguf", "model.safetensors",
          "adapters.safetensors"} <= {f.name
                                      for f in (tmp_path / "out").iterdir()}

# ***** bad input: one line on stderr, exit 1 *****

@pytest.fixture(scope="module")
def other_tok_data(fixtures, text_data, tmp_path_factory) -> pathlib.Path:
  """The stories encoded with a 512-token tokenizer trained on Shakespeare: the same size as tok512, other pieces."""
  d = tmp_path_factory.mktemp("other")
  (d / "shakespeare.txt").write_bytes((fixtures / "tinyshakespeare.txt").read_bytes()[:200_000])
  data.prepare([str(d / "shakespeare.txt")], d / "sh", vocab_size=512, workers=1)
  data.prepare([str(text_data.parent / "stories.txt")], d / "ds", tokenizer=d / "sh" / "tokenizer.model", workers=1)
  assert data.read_meta(d / "ds")["vocab_size"] == 512
  return d / "ds"

@pytest.mark.parametrize("argv, message", [   # argv: train.py's words, {names} filled in below
  ('--init-from {txt} --data {data}', 'is not a checkpoint load() knows'),
  ('--init-from {model} --tokenizer {tok} --data {other}',
   "was encoded with another tokenizer than the model's (512 vs 512 tokens"),
  ('--init-from {model} --data {data} --lora-rank 0', '--lora-rank must be at least 1'),
  ('--init-from {model} --data {data} --lora-rank 65', "--lora-rank must be between 1 and the model's dim (64)"),
  ('--init-from {model} --data {data} --lora-rank 2 --lora-targets wq,wz', '--lora-targets'),
  ('--data {data} --lora-rank 2', '--lora-rank needs --init-from'),
  ('--init-from {model}', '--init-from needs --data'),
  ('--init-from {model} --data {data} --dim 32', '--dim cannot change the model'),
  ('--out {tmp} --merge', 'holds no LoRA run'),
])
def test_bad_input(argv, message, s260, text_data, other_tok_data, tmp_path, capsys):
  (tmp_path / "notes.txt").write_text("not a checkpoint\n")
  fill = dict(txt=tmp_path / "notes.txt",
              data=text_data,
              other=other_tok_data,
              model=s260[0],
              tok=s260[1],
              tmp=tmp_path)
  words = [a.format(**fill) for a in argv.split()]
  assert run(*words, *([] if "--out" in words else ["--out", tmp_path / "out"]), *SMALL) == 1
  one_line_error(capsys, message)

def test_bad_chat_lines(smol_tok, fixtures, tmp_path, capsys):
  gguf = str(fixtures / "smollm2-135m-instruct-q4_1.gguf")
  for line, message in [({"messages": [{"role": "user",
                                        "content": "Hi"}]}, "line 2: the conversation has no assistant turn"),
                        ({"messages": [{"role": "assistant", "content": "Hi"}, {"role": "user",
                                                                                "content": "?"}]}, "must alternate"),
                        ({"text": "Hi"}, 'expected {"messages"')]:
    (tmp_path / "c.jsonl").write_text(json.dumps({"messages": CONVS[0]}) + "\n" + json.dumps(line) + "\n")
    assert data.main(["--chat", str(tmp_path / "c.jsonl"), "--tokenizer", gguf, "--out", str(tmp_path / "ds")]) == 1
    one_line_error(capsys, message)
  assert data.main(["--chat", str(tmp_path / "c.jsonl"), "--out", str(tmp_path / "ds")]) == 1
  one_line_error(capsys, "--chat needs --tokenizer")
