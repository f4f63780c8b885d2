"""eval.py (issue 10): per-choice log-likelihoods against tests/reference.py's float64 numpy LLaMA (batched, alone and
with the KV-cache prefix reused), the three §3 normalisations, exact match, free-form greedy answers, perplexity
windows, every task reader on records written here in its publisher's format, SmolLM2 and stories260K on a small
item set, and one clear line for bad input.

One random tiny model (the tok512 vocabulary) serves the reference tests; the data is small enough that every Scorer
gets the same cache size, so tinygrad compiles each step shape once for the whole module."""
import json, re, subprocess, sys, pathlib
import numpy as np, pytest
from tinygrad import Tensor, nn
import checkpoint, llama, tokenizer
import eval as E
import tasks as T
import reference as ref

ROOT = pathlib.Path(__file__).resolve().parent.parent
ARGS = llama.ModelArgs(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=512, multiple_of=16, max_seq_len=256,
                       norm_eps=1e-5, rope_theta=500.0, tie_embeddings=True)

def cli(*args, timeout=600) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "eval.py"), *map(str, args)],
                        capture_output=True,
                        text=True,
                        cwd=ROOT,
                        timeout=timeout)

@pytest.fixture(scope="module")
def tok(fixtures): return tokenizer.load_tokenizer(fixtures / "stories260K" / "tok512.model")

@pytest.fixture(scope="module")
def tiny():
  weights = ref.random_weights(ARGS, seed=3)
  model = llama.Transformer(ARGS, init=False)
  Tensor.realize(*nn.state.load_state_dict(
    model, {k: Tensor(v)
            for k, v in weights.items()}, strict=False, verbose=False, realize=False))
  return model, weights

def ref_logprobs(weights, args, ids) -> np.ndarray:
  logits = ref.forward(weights, args, np.array(ids))
  return logits - logits.max(-1, keepdims=True) - np.log(
    np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))

def ref_ll(weights, args, ctx, cont) -> float:
  lp = ref_logprobs(weights, args, list(ctx) + list(cont))
  return float(sum(lp[len(ctx) - 1 + i, t] for i, t in enumerate(cont)))

def close(a, b, tol=2e-4): return abs(a - b) <= tol * max(1.0, abs(b))

# ***** log-likelihoods: the float64 reference, batching, KV-cache reuse *****

LONG = " ".join(
  ["Tom and Sue went to the park to play with a red ball and a big dog."] * 8) # > 128 tokens: one big chunk
def items_for_reference():
  """Completions of at most 4 tokens (tok512), so every step has the same length bucket."""
  return [
    T.choice_item("Once upon a time there was a", ["cat", "big dog", "girl", "cat"], 0), # a repeated choice
    T.choice_item("The sun is", ["hot", "cold", "up", "big"], 1),
    T.choice_item("The sun is very", ["hot", "red", "sad", "big"], 2), # shares a prefix with the last
    T.choice_item(["Tom gave the ball to Sam because Tom", "Tom gave the ball to Sam because Sam"],
                  ["was big.", "was big."], 0),
    T.choice_item(LONG + " Then they", ["ran", "played", "sat", "sang"], 3),
    T.choice_item(LONG + " Then the dog", ["ran", "played", "sat", "barked"], 1)
  ]

def test_loglikelihoods_match_reference_batched_alone_and_from_cached_prefixes(tiny, tok):
  """Every ll and ll_answer equals the float64 numpy forward of context+completion, in batches of 4 with prefixes
  reused from the cache ("The sun is", the long text), and each completion scored alone with its context prefilled
  afresh."""
  model, weights = tiny
  items = items_for_reference()
  runs = [E.run_choice(model, tok, T.TASKS["choice"], items, 256, 4)[1]]
  pairs = [(E.encode_pair(tok, c, ch, 256), E.encode_pair(tok, E.ANSWER, ch, 256)) for it in items
           for c, ch in zip(it.context if isinstance(it.context, list) else [it.context] * len(it.choices), it.choices)]
  alone = E.make_scorer(model, [p for pp in pairs for p in pp], 4)
  for (cond, base), got in zip(pairs, [c for r in runs[0] for c in r["choices"]]):
    want, want_answer = ref_ll(weights, ARGS, *cond), ref_ll(weights, ARGS, *base)
    assert close(got["ll"], want) and close(got["ll_answer"], want_answer), (cond, got, want, want_answer)
    alone.held = []   # forget the cache: the context is prefilled again
    assert close(float(alone.score(cond[0], [cond[1]])[0].sum()), want)
  for it, rec in zip(items, runs[0]):
    assert [c["tokens"] for c in rec["choices"]] == [
      len(E.encode_pair(tok, it.context if isinstance(it.context, str) else it.context[j], ch, 256)[1])
      for j, ch in enumerate(it.choices)
    ]
    assert [c["chars"] for c in rec["choices"]] == [len(ch) for ch in it.choices]
  assert runs[0][4]["choices"][0]["ll"] != runs[0][5]["choices"][0]["ll"]   # a different last context token matters

def test_encode_pair_is_lm_eval_harness_convention(tok):
  # trailing whitespace moves to the completion; completion = encode(ctx+completion)[len(encode(ctx)):]; BOS first
  ctx, cont = E.encode_pair(tok, "The sun is ", "hot", 256)
  assert ctx == tuple([tok.bos_id] + tok.encode("The sun is")) and cont == tuple(
    tok.encode("The sun is hot")[len(tok.encode("The sun is")):])
  ctx, cont = E.encode_pair(tok, LONG, " end", 40)     # too long: the context loses its start
  assert len(ctx) + len(cont) == 40 and ctx[-3:] == tuple(tok.encode(LONG))[-3:]

# ***** the three normalisations *****

def test_normalisations_pick_their_choice():
  """Raw log-likelihood, per character (Gao et al. 2021) and against P(completion | "Answer:") (Brown et al. 2020) on
  an item where all three disagree."""
  choices = [{"ll": -10.0, "chars": 20, "ll_answer": -12.0},   # per char -0.5 (best); vs Answer: +2
             {"ll": -6.0, "chars": 4, "ll_answer": -5.0},      # raw -6 (best); per char -1.5; vs Answer: -1
             {"ll": -9.0, "chars": 10, "ll_answer": -14.0}]    # vs Answer: +5 (best)
  assert E.predictions(choices) == {"acc": 1, "acc_char": 0, "acc_answer": 2}
  assert T.TASKS[
    "hellaswag"].metric == "acc_char" and T.TASKS["openbookqa"].metric == T.TASKS["boolq"].metric == "acc_answer"

# ***** free-form answers *****

def test_exact_match_normalisation():
  assert T.normalize_answer("  The Eiffel   Tower! ") == "eiffel tower"
  assert T.exact_match("an Apple.", ["apple"]) and T.exact_match("Charles Darwin", ["Darwin", "charles  darwin"])
  assert T.normalize_answer("Theatre") == "theatre" and not T.exact_match("Paris, France", ["Paris"])
  assert T.number_match("so she has 1,234 apples.", ["1234"]) and T.number_match("48/2 = 24 #### 24", ["24"])
  assert T.number_match("It costs $18.",
                        ["18"]) and not T.number_match("#### 17", ["18"]) and not T.number_match("none", ["18"])

def ref_greedy(weights, ids, n, eos) -> list[int]:
  ids, new = list(ids), []
  for _ in range(n):
    t = int(np.argmax(ref.forward(weights, ARGS, np.array(ids))[-1]))
    if t == eos: break
    ids.append(t); new.append(t)
  return new

def test_free_form_answers_are_reference_greedy_cut_at_the_stop(tiny, tok, tmp_path):
  """1-shot NaturalQuestions-open prompts (the first item is the shot, not scored); greedy answers equal the numpy
  reference's, cut at the first line break, dot or comma; the second item reuses the cached prompt prefix."""
  model, weights = tiny
  (tmp_path / "nq.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [
    {"question": "who is the cat", "answer": ["Tom"]}, {"question": "what is red", "answer": ["a ball"]},
    {"question": "where is Sue", "answer": ["the park"]}]))
  task = T.TASKS["naturalquestions"]
  items = T.with_shots(task, T.load_items("naturalquestions", tmp_path / "nq.jsonl"), None, 1)
  assert [it.context for it in items] == [
    f"Answer these questions:\nQ: who is the cat?\nA: Tom\nQ: {q}?\nA:" for q in ("what is red", "where is Sue")
  ]
  want = []
  for it in items:
    text = tok.decode(ref_greedy(weights, [tok.bos_id] + tok.encode(it.context), 6, tok.eos_id))
    want.append(text[:min([text.find(s) for s in task.stop if s in text], default=len(text))].strip())
  items[0].choices = [want[0].upper() + "!"]   # matches once normalised
  metrics, out = E.run_generate(model, tok, task, items, 256, 6)
  assert [r["answer"] for r in out] == want
  assert out[0]["match"] and not out[1]["match"] and metrics["exact_match"][0] == 0.5

# ***** MMLU and perplexity *****

def test_mmlu_k_shot_prompt_and_letter_choice(tiny, tok, tmp_path):
  """MMLU CSVs (one file per subject): the prompt is the subject header, k solved dev questions, the question with its
  options A-D, "Answer:"; the prediction is the letter the reference makes most likely there."""
  model, weights = tiny
  for split, n in (("dev", 1), ("test", 2)):
    (tmp_path / split).mkdir()
    for subject in ("high_school_physics", "virology"):
      rows = [[f"{subject} {split} question {i}?", "one", "two", "three", "four", "ABCD"[i]] for i in range(n)]
      (tmp_path / split / f"{subject}_{split}.csv").write_text("".join(",".join(r) + "\n" for r in rows))
  task = T.TASKS["mmlu"]
  items = T.with_shots(task, T.load_items("mmlu", tmp_path / "test"), T.load_items("mmlu", tmp_path / "dev"), 1)
  assert items[3].context == ("The following are multiple choice questions (with answers) about virology.\n\n"
                              "virology dev question 0?\nA. one\nB. two\nC. three\nD. four\nAnswer: A\n\n"
                              "virology test question 1?\nA. one\nB. two\nC. three\nD. four\nAnswer:")
  metrics, out = E.run_choice(model, tok, task, items, 256, 4)
  for it, rec in zip(items, out):
    assert rec["pred"] == int(
      np.argmax([ref_ll(weights, ARGS, *E.encode_pair(tok, it.context, ch, 256)) for ch in it.choices]))
  assert {"acc:high_school_physics", "acc:virology"} <= set(metrics)

def test_perplexity_windows_score_every_token_once(tiny, tok):
  """Every token after BOS is scored once, with at least window-stride tokens before it (all of them near the start);
  the total equals the reference's sum over those windows; bits per byte = nll / ln 2 / bytes."""
  model, weights = tiny
  text = "Lily had a red ball. She liked to play with it in the park with her dog Max. "
  ids = [tok.bos_id] + tok.encode(text)
  window, stride = 24, 4
  metrics, out = E.run_perplexity(model, tok, text, window, stride)
  lp = {}   # reference log p of token t given the `window`-token window that ends with the stride block holding t
  for t in range(1, len(ids)):
    block_end = min(1 + ((t - 1) // stride + 1) * stride, len(ids))
    s = max(block_end - stride, 1)
    lp[t] = ref_logprobs(weights, ARGS,
                         ids[max(s - (window - stride), 0):block_end])[t - max(s - (window - stride), 0) - 1, ids[t]]
  assert metrics["tokens"][0] == len(ids) - 1 == sum(r["tokens"] for r in out)
  assert close(sum(r["ll"] for r in out), sum(lp.values()))
  assert close(metrics["bits_per_byte"][0], -sum(lp.values()) / np.log(2) / len(text.encode()))

# ***** task readers on the publishers' formats *****

def write(path: pathlib.Path, rows) -> pathlib.Path:
  path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n" for r in rows))
  return path

def test_readers(tmp_path):
  def one(task, rows, labels=None, name="d.jsonl"):
    items = T.load_items(task, write(tmp_path / name, rows), labels and write(tmp_path / "labels.lst", labels))
    return [(it.context, it.choices, it.label) for it in items]

  hellaswag = {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow.",
               "ctx_b": "then", "ctx": "x", "endings": [", the man cleans it [title] Dry it.", " stops."], "label": 1,
               "split": "val"}
  assert one("hellaswag", [hellaswag]) == \
    [("Removing ice from car: Then, the man writes over the snow. Then", [" , the man cleans it. Dry it.", " stops."],
      1)]
  assert one("piqa", [{"goal": "Dry a shirt", "sol1": "use a fan", "sol2": "use water"}], ["0"]) == \
    [("Question: Dry a shirt\nAnswer:", [" use a fan", " use water"], 0)]
  siqa = {"context": "Kai ate.", "question": "Why?", "answerA": "hungry", "answerB": "sad", "answerC": "full"}
  assert one("siqa", [siqa], ["1"]) == \
    [("Q: Kai ate. Why?\nA:", [" hungry", " sad", " full"], 0)]
  assert one("winogrande", [{"sentence": "The cup fell off the table because _ was tilted.", "option1": "the cup",
                             "option2": "the table", "answer": "2"}]) == \
    [(["The cup fell off the table because the cup", "The cup fell off the table because the table"],
      [" was tilted.", " was tilted."], 1)]
  arc = {
    "id": "x", "question": {
      "stem": "Which is a metal?", "choices": [{"text": "iron", "label": "A"}, {"text": "wood", "label": "B"}]
    }, "answerKey": "A"
  }
  arc_hf = {
    "question": "Which is a metal?", "choices": {"text": ["wood", "iron"], "label": ["1", "2"]}, "answerKey": "2"
  }
  assert one("arc_easy", [arc, arc_hf]) == [("Question: Which is a metal?\nAnswer:", [" iron", " wood"], 0),
                                            ("Question: Which is a metal?\nAnswer:", [" wood", " iron"], 1)]
  assert one("openbookqa", [arc]) == [("Which is a metal?", [" iron", " wood"], 0)]
  boolq = {"question": "is ice cold", "title": "Ice", "answer": True, "passage": "Ice is frozen water."}
  assert one("boolq", [boolq]) == \
    [("Ice is frozen water.\nQuestion: is ice cold?\nAnswer:", [" no", " yes"], 1)]
  race = {"id": "1.txt", "article": "Tom is ten.", "questions": ["How old is Tom?", "Who is ten?"],
          "options": [["9", "10", "11", "12"], ["Tom", "Sue", "Max", "Lily"]], "answers": ["B", "A"]}
  assert one(
    "race", [race],
    name="1.txt") == [("Article: Tom is ten.\n\nQuestion: How old is Tom?\nAnswer:", [" 9", " 10", " 11", " 12"], 1),
                      ("Article: Tom is ten.\n\nQuestion: Who is ten?\nAnswer:", [" Tom", " Sue", " Max", " Lily"], 0)]
  nq = {"question": "who wrote hamlet", "answer": ["Shakespeare", "William Shakespeare"]}
  assert one("naturalquestions", [nq]) == \
    [("Q: who wrote hamlet?\nA:", ["Shakespeare", "William Shakespeare"], None)]
  (tmp_path / "tqa.json").write_text(
    json.dumps({
      "Data": [{
        "Question": "Which planet is red?", "QuestionId": "q1",
        "Answer": {"Value": "Mars", "Aliases": ["Mars", "The Red Planet"]}
      }], "Version": 1.0
    }))
  assert [(it.context, it.choices) for it in T.load_items("triviaqa", tmp_path / "tqa.json")] == \
    [("Q: Which planet is red?\nA:", ["Mars", "Mars", "The Red Planet"])]
  assert one("gsm8k",
             [{"question": "2+3?", "answer": "2+3=<<2+3=5>>5\n#### 5"}]) == [("Question: 2+3?\nAnswer:", ["5"], None)]
  assert one("choice",
             [{"context": "Ice is", "choices": ["cold", "hot"], "label": 0}]) == [("Ice is", [" cold", " hot"], 0)]
  (tmp_path / "anatomy_test.csv").write_text('"What is the ""largest"" organ?",skin,heart,"liver, big",lung,A\n')
  mmlu = T.load_items("mmlu", tmp_path / "anatomy_test.csv")
  assert [(it.context, it.subject) for it in mmlu
          ] == [('What is the "largest" organ?\nA. skin\nB. heart\nC. liver, big\nD. lung\nAnswer:', "anatomy")]
  assert T.with_shots(
    T.TASKS["mmlu"], mmlu, None,
    0)[0].context.startswith("The following are multiple choice questions (with answers) about anatomy.\n\nWhat")

# ***** real models on a small item set *****

EASY = [("The capital of France is", ["Paris", "Tokyo", "a banana", "Brazil"]),
        ("Water freezes at zero degrees", ["Celsius", "happiness", "purple", "guitars"]),
        ("The opposite of hot is", ["cold", "seven", "elephant", "blue"]),
        ("A week has seven", ["days", "cars", "mountains", "songs"]),
        ("The sun rises in the", ["east", "refrigerator", "pocket", "piano"]),
        ("Birds can fly because they have", ["wings", "wheels", "keys", "teeth"]),
        ("One plus one equals", ["two", "dog", "Tuesday", "green"]),
        ("We hear sounds with our", ["ears", "elbows", "shoes", "hair"])]

@pytest.fixture(scope="module")
def easy(tmp_path_factory) -> pathlib.Path:
  """Easy factual / common-sense items in the generic format, the right answer at rotating positions."""
  rows = [{"context": c, "choices": ch[-(i % 4):] + ch[:-(i % 4)], "label": i % 4} for i, (c, ch) in enumerate(EASY)]
  return write(tmp_path_factory.mktemp("easy") / "easy.jsonl", rows)

def test_smollm2_is_clearly_above_chance(fixtures, easy, tmp_path, capsys):
  out = tmp_path / "smollm2.json"
  code = E.main([str(fixtures / "smollm2-135m-instruct-q4_1.gguf"), "--task", "choice", "--data", str(easy),
                 "--batch-size", "4", "--output", str(out)])
  r = capsys.readouterr()
  assert code == 0, r.err
  res = json.loads(out.read_text())
  assert res["task"] == "choice" and res["n"] == len(EASY) and res["paper_metric"] == "acc_char"
  assert res["metrics"]["acc_char"] >= 0.75, res["metrics"]   # chance is 0.25; 6 of 8 or more: p < 0.005
  assert set(res["items"][0]) >= {"index", "label", "pred", "choices"} and set(
    res["items"][0]["choices"][0]) == {"ll", "tokens", "chars", "ll_answer"}
  assert re.search(rf"^choice\s+acc_char \*\s+\d\.\d{{4}}\s+{len(EASY)}\s+\d\.\d{{4}}$", r.out, re.M), r.out

def test_stories260k_scores_equal_the_reference(fixtures, easy, tok):
  """The real stories260K weights through eval equal the numpy forward of the same weights."""
  model, _ = checkpoint.load(fixtures / "stories260K" / "stories260K.bin")
  weights = {k: v.numpy() for k, v in llama.learned(model).items()}
  items = T.load_items("choice", easy)
  metrics, out = E.run_choice(model, tok, T.TASKS["choice"], items, 256, 4)
  for it, rec in zip(items[:2], out):
    for ch, got in zip(it.choices, rec["choices"]):
      assert close(got["ll"], ref_ll(weights, model.args, *E.encode_pair(tok, it.context, ch, 256)))
  assert all(0 <= v <= 1 for v, _ in metrics.values())

# ***** bad input: one line, exit 1 *****

def test_bad_input_gives_one_line(tmp_path, capsys):
  cases = {
    "missing": (tmp_path / "nope.jsonl", "does not exist"), "not json": (write(
      tmp_path / "a.jsonl",
      ['{"context": "x", "choices": ["a"], "label": 0}', "{oops"]), "line 2 is not JSON"), "wrong format": (write(
        tmp_path / "b.jsonl", [{"question": "x"}]), "line 1 is not a choice record (no field 'context')"),
    "empty": (write(tmp_path / "c.jsonl", []), "holds no choice items"), "label out of range": (write(
      tmp_path / "d.jsonl",
      [{"context": "x", "choices": ["a", "b"], "label": 2}]), "label 2 is out of range for 2 choices")
  }
  for name, (path, message) in cases.items():
    assert E.main(["/nonexistent-model", "--task", "choice", "--data", str(path)]) == 1, name
    err = capsys.readouterr().err
    assert err.startswith("eval.py: error: ") and message in err and err.count("\n") == 1, (name, err)
  r = cli("--task", "winogrande", "--data",
          write(tmp_path / "w.jsonl", [{"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"}]))
  assert r.returncode == 1
  assert r.stderr == f"eval.py: error: {tmp_path / 'w.jsonl'} line 1: its sentence has no blank '_'\n"
