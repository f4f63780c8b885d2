"""Score a LLaMA checkpoint the way §3 of the paper (Touvron et al., 2023) does, on the benchmark files as published.

  python eval.py smollm2-135m-instruct-q4_1.gguf --task hellaswag --data hellaswag_val.jsonl
  python eval.py out/ --task mmlu --data data/test --train data/dev          # 5-shot, all 57 subjects
  python eval.py stories260K.bin --tokenizer tok512.model --task perplexity --data held_out.txt

Multiple choice (§3.1, §3.5, §3.6): every completion is scored by the summed log-likelihood of its tokens given the
context. A context shared by several completions is prefilled once into the KV cache, copied to every row of the
batch, and the completions are then scored side by side; each step is TinyJit-compiled once per bucket shape and
replayed at a symbolic position. Free-form answers (§3.2, §3.4) are generated greedily with generate.Generator.
"""
from __future__ import annotations
import argparse, csv, io, json, math, pathlib, re, string, sys, time
from dataclasses import dataclass
from typing import Callable
import numpy as np
from tinygrad import Context, Tensor, TinyJit, UOp, dtypes
from tinygrad.helpers import tqdm
import checkpoint, generate, kernels, llama
from files import atomic_write

class EvalError(ValueError):
  """Bad input (a missing file, a record not in the task's format, a label out of range); the message is one sentence."""

# ***** items, and the readers of each publisher's format *****

@dataclass
class Item:
  context: str | list[str]   # the prompt; a list: one context per choice (WinoGrande's partial evaluation)
  choices: list[str]         # multiple choice: the completions scored; free-form: the accepted answers
  label: int | None          # index of the right completion (free-form: None)
  shot: str                  # the item solved, as an example of a k-shot prompt
  subject: str = ""          # MMLU: the subject, from the file name (it names the header and picks the shots)

def choice_item(context: str | list[str], choices: list, label) -> Item:
  """A multiple-choice item in lm-eval-harness's convention: each completion follows the context after one space."""
  choices = [" " + str(c) for c in choices]
  if not choices: raise EvalError("it has no choices")
  try: label = int(label)
  except (TypeError, ValueError): raise EvalError(f"its label {label!r} is not a number") from None
  if not 0 <= label < len(choices): raise EvalError(f"its label {label} is out of range for {len(choices)} choices")
  ctx = context if isinstance(context, str) else context[label]
  return Item(context, choices, label, ctx + choices[label])

def letter(key, labels: list) -> int:
  key = str(key).strip()
  if key not in labels: raise EvalError(f"its answer {key!r} is not one of the choice labels {labels}")
  return labels.index(key)

def hellaswag_clean(text: str) -> str:
  """The usual preprocessing of HellaSwag's WikiHow artefacts: ' [title]' ends a sentence, other [tags] go."""
  return re.sub(r"\[.*?\]", "", text.strip().replace(" [title]", ". ")).replace("  ", " ")

def read_hellaswag(row):
  # rowanz/hellaswag jsonl: activity_label, ctx_a, ctx_b (ctx = both), endings, label
  ctx = f"{row['ctx_a']} {row['ctx_b'].capitalize()}" if "ctx_a" in row else row["ctx"]
  query = f"{row['activity_label']}: {ctx}" if "activity_label" in row else ctx
  return [choice_item(hellaswag_clean(query), [hellaswag_clean(e) for e in row["endings"]], row["label"])]

def read_piqa(row):   # ybisk/piqa: goal, sol1, sol2; the label (0/1) comes from the separate labels file
  return [choice_item(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], row["label"])]

def read_siqa(row):   # Social IQa: context, question, answerA-C; labels 1-3 in the separate labels file
  return [choice_item(f"Q: {row['context']} {row['question']}\nA:", [row["answerA"], row["answerB"], row["answerC"]], int(row["label"]) - 1)]

def read_winogrande(row):
  # partial evaluation (Trinh & Le 2018): each option fills the blank, the text after it is the completion scored
  s, i = row["sentence"], row["sentence"].find("_")
  if i < 0: raise EvalError("its sentence has no blank '_'")
  rest = s[i + 1:].strip()
  return [choice_item([s[:i] + row["option1"], s[:i] + row["option2"]], [rest, rest], int(row["answer"]) - 1)]

def stem_and_choices(row) -> tuple[str, list[str], int]:
  """ARC and OpenBookQA as AllenAI publishes them (question.stem, question.choices[{text,label}], answerKey), or the
  Hugging Face layout (question or question_stem, choices{text,label}, answerKey)."""
  q = row["question_stem"] if "question_stem" in row else row["question"]
  if isinstance(q, dict): stem, texts, labels = q["stem"], [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
  else: stem, texts, labels = q, list(row["choices"]["text"]), list(row["choices"]["label"])
  return stem, texts, letter(row["answerKey"], labels)

def read_arc(row):
  stem, texts, label = stem_and_choices(row)
  return [choice_item(f"Question: {stem}\nAnswer:", texts, label)]

def read_openbookqa(row):
  stem, texts, label = stem_and_choices(row)
  return [choice_item(stem, texts, label)]

def read_boolq(row):   # google boolq jsonl: question, passage, answer (true/false); SuperGLUE: label 0/1
  answer = row["answer"] if "answer" in row else row["label"]
  if not isinstance(answer, (bool, int)): raise EvalError(f"its answer {answer!r} is not true/false")
  return [choice_item(f"{row['passage']}\nQuestion: {row['question']}?\nAnswer:", ["no", "yes"], int(answer))]

def read_race(row):
  # the publisher's files hold one article with its questions, options and answer letters; the Hugging Face rows one question
  qs = zip(row["questions"], row["options"], row["answers"], strict=True) if "questions" in row else [(row["question"], row["options"], row["answer"])]
  return [choice_item(f"Article: {row['article']}\n\nQuestion: {q}\nAnswer:", opts, letter(a, list("ABCDEFGH"[:len(opts)]))) for q, opts, a in qs]

def read_mmlu(row):
  # hendrycks/test CSV rows: question, four options, answer letter; §3.6: the letters are the completions
  if len(row) != 6: raise EvalError(f"it has {len(row)} columns, not 6 (question, A, B, C, D, answer)")
  q, *opts, ans = row
  return [choice_item(q + "".join(f"\n{k}. {o}" for k, o in zip("ABCD", opts)) + "\nAnswer:", list("ABCD"), letter(ans, list("ABCD")))]

def read_choice(row):   # the generic format: {"context": str, "choices": [str, ...], "label": int}
  context, choices = row["context"], row["choices"]
  if not isinstance(choices, list): raise EvalError("its 'choices' is not a list")
  return [choice_item(context, choices, row["label"])]

def read_qa(row):
  """NaturalQuestions-open (question, answer: [...]) and TriviaQA (the publisher's Question, Answer{Value, Aliases};
  Hugging Face: question, answer{value, aliases}); the prompt of the paper's Figure 3."""
  q = row["question"] if "question" in row else row["Question"]
  a = next((row[k] for k in ("answer", "answers", "Answer") if k in row), None)
  if isinstance(a, dict): a = [a.get("Value", a.get("value"))] + list(a.get("Aliases", a.get("aliases", [])))
  answers = [str(x) for x in ([a] if isinstance(a, str) else a) if x]
  if not answers: raise EvalError("it has no answer")
  prompt = f"Q: {q if q.rstrip().endswith('?') else q.rstrip() + '?'}\nA:"
  return [Item(prompt, answers, None, f"{prompt} {answers[0]}")]

def read_gsm8k(row):   # openai/grade-school-math jsonl: question, answer (the worked solution, then '#### N')
  if "####" not in row["answer"]: raise EvalError("its answer has no final '#### N'")
  prompt = f"Question: {row['question']}\nAnswer:"
  return [Item(prompt, [row["answer"].split("####")[-1].strip()], None, f"{prompt} {row['answer']}")]

# ***** scoring free-form answers *****

def normalize_answer(s: str) -> str:
  """The standard exact-match normalisation (SQuAD's): lower case, no punctuation, no articles, single spaces."""
  s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
  return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

def exact_match(generated: str, answers: list[str]) -> bool:
  return normalize_answer(generated) in {normalize_answer(a) for a in answers}

def number(s: str) -> float | None:
  try: return float(s.replace(",", "").replace("$", "").rstrip("."))
  except ValueError: return None

def final_number(text: str) -> str:
  """GSM8k's answer in a generation: the number after '####' if the model wrote one, else the last number."""
  if m := re.search(r"####\s*(-?[\d.,]+)", text): return m.group(1)
  return (re.findall(r"-?\d[\d,]*(?:\.\d+)?", text) or [""])[-1]

def number_match(generated: str, answers: list[str]) -> bool:
  got = number(final_number(generated))
  return got is not None and any(number(a) == got for a in answers)

# ***** tasks *****

@dataclass(frozen=True)
class Task:
  read: Callable | None      # one record of the publisher's file -> its items
  metric: str                # the score the paper reports for it
  section: str               # where §3 reports it
  kind: str = "choice"       # "choice", "generate" or "perplexity"
  header: str = ""           # text in front of the k-shot examples ({subject} for MMLU)
  sep: str = "\n\n"          # between the examples of a k-shot prompt
  stop: tuple[str, ...] = ("\n",)
  max_new: int = 32
  match: Callable = exact_match
  shots: int = 0             # the paper's default
  csv: bool = False

# §3: "we follow Gao et al. (2021) and use the likelihood normalized by the number of characters in the completion,
# except for certain datasets (OpenBookQA, BoolQ), for which we follow Brown et al. (2020)" (the "Answer:" baseline)
QA = dict(kind="generate", header="Answer these questions:\n", sep="\n", stop=("\n", ".", ","))   # §3.2, Appendix A
TASKS: dict[str, Task] = {
  "boolq": Task(read_boolq, "acc_answer", "§3.1"), "piqa": Task(read_piqa, "acc_char", "§3.1"),
  "siqa": Task(read_siqa, "acc_char", "§3.1"), "hellaswag": Task(read_hellaswag, "acc_char", "§3.1"),
  "winogrande": Task(read_winogrande, "acc_char", "§3.1"), "arc_easy": Task(read_arc, "acc_char", "§3.1"),
  "arc_challenge": Task(read_arc, "acc_char", "§3.1"), "openbookqa": Task(read_openbookqa, "acc_answer", "§3.1"),
  "race": Task(read_race, "acc_char", "§3.5"), "choice": Task(read_choice, "acc_char", "§3.1"),
  "mmlu": Task(read_mmlu, "acc", "§3.6", header="The following are multiple choice questions (with answers) about {subject}.\n\n",
               shots=5, csv=True),
  "naturalquestions": Task(read_qa, "exact_match", "§3.2", **QA), "triviaqa": Task(read_qa, "exact_match", "§3.2", **QA),
  "gsm8k": Task(read_gsm8k, "exact_match", "§3.4", kind="generate", stop=("\n\n", "Question:"), max_new=256, match=number_match),
  "perplexity": Task(None, "bits_per_byte", "Figure 1", kind="perplexity"),
}

# ***** reading files *****

def records(path: pathlib.Path, as_csv: bool):
  """(where, subject, record) for every record in a file, or in every file under a directory (by path). JSON lines, one
  JSON list of records, a JSON object (one RACE article; TriviaQA's {"Data": [...]}), or CSV rows."""
  if not path.exists(): raise EvalError(f"{path} does not exist")
  files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")) if path.is_dir() else [path]
  for f in files:
    subject = re.sub(r"_(test|dev|val|train)$", "", f.stem)
    try: text = f.read_text(encoding="utf-8")
    except UnicodeDecodeError: raise EvalError(f"{f} is not UTF-8 text") from None
    if as_csv:
      reader = csv.reader(io.StringIO(text))
      for row in reader: yield f"{f} line {reader.line_num}", subject, row
      continue
    try: whole = json.loads(text)
    except json.JSONDecodeError: whole = None
    if isinstance(whole, list) or (isinstance(whole, dict) and isinstance(whole.get("Data"), list)):
      for i, r in enumerate(whole["Data"] if isinstance(whole, dict) else whole, 1): yield f"{f} record {i}", subject, r
    elif isinstance(whole, dict) and len(text.strip().splitlines()) > 1: yield str(f), subject, whole   # one pretty-printed record
    else:
      for i, line in enumerate(text.splitlines(), 1):
        if not line.strip(): continue
        try: yield f"{f} line {i}", subject, json.loads(line)
        except json.JSONDecodeError: raise EvalError(f"{f} line {i} is not JSON") from None

def load_items(task_name: str, path, labels=None) -> list[Item]:
  """Every item of a task's file (or directory); `labels` is a file with one label per line (PIQA, SIQA) that replaces
  the records' own."""
  task, path = TASKS[task_name], pathlib.Path(path)
  rows = list(records(path, task.csv))
  if labels is not None:
    if not pathlib.Path(labels).is_file(): raise EvalError(f"labels file {labels} does not exist")
    lab = [line.strip() for line in pathlib.Path(labels).read_text().splitlines() if line.strip()]
    if len(lab) != len(rows): raise EvalError(f"{labels} has {len(lab)} labels for the {len(rows)} records of {path}")
    rows = [(w, s, {**r, "label": x} if isinstance(r, dict) else r) for (w, s, r), x in zip(rows, lab)]
  items = []
  for where, subject, row in rows:
    try:
      new = task.read(row)
    except EvalError as e: raise EvalError(f"{where}: {e}") from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:
      why = f"no field {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
      raise EvalError(f"{where} is not a {task_name} record ({why})") from None
    for it in new: it.subject = subject if task.csv else ""   # MMLU: one subject per file
    items += new
  if not items: raise EvalError(f"{path} holds no {task_name} items")
  return items

def with_shots(task: Task, items: list[Item], train: list[Item] | None, k: int) -> list[Item]:
  """The items with the task's header and k solved examples in front of each prompt: the first k of `train` (the
  task's training split) of the item's subject, or without `train` the first k items of each subject, which are then
  not scored."""
  pool: dict[str, list[Item]] = {}
  for it in (train if train is not None else items): pool.setdefault(it.subject, []).append(it)
  used = {id(s) for v in pool.values() for s in v[:k]} if train is None else set()
  out = []
  for it in items:
    if id(it) in used: continue
    shots = pool.get(it.subject, [])[:k]
    if len(shots) < k: raise EvalError(f"{k}-shot prompts need {k} examples{f' of {it.subject}' if it.subject else ''}, there are {len(shots)}")
    prefix = task.header.format(subject=it.subject.replace("_", " ")) + "".join(s.shot + task.sep for s in shots)
    ctx = prefix + it.context if isinstance(it.context, str) else [prefix + c for c in it.context]
    out.append(Item(ctx, it.choices, it.label, it.shot, it.subject))
  return out

# ***** tokens *****

def common_prefix(a, b) -> int: return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

def start_tokens(tok) -> list[int]:
  return [tok.bos_id] if tok.add_bos else []

def encode_pair(tok, context: str, completion: str, max_len: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """lm-eval-harness's tokenisation: trailing whitespace of the context moves to the completion, the completion's
  tokens are encode(context + completion)[len(encode(context)):], BOS in front when the tokenizer adds one to prompts
  (else, for an empty context, EOS: there must be a token to predict from). A context too long for max_len loses its
  start."""
  n = len(context) - len(context.rstrip())
  if n: context, completion = context[:-n], context[-n:] + completion
  ctx = tok.encode(context)
  cont = tok.encode(context + completion)[len(ctx):]
  ctx = (start_tokens(tok) + ctx) or [tok.eos_id]
  if len(cont) >= max_len: raise EvalError(f"a completion of {len(cont)} tokens does not fit the context of {max_len} tokens")
  return tuple(ctx[-(max_len - len(cont)):]), tuple(cont)

# ***** log-likelihoods through the KV cache *****

PREFILL_CHUNKS = (128, 8)   # long contexts go in big chunks, the rest in one padded small one

def bucket(n: int) -> int: return max(4, 1 << (n - 1).bit_length())

def captured_at_once(fn) -> TinyJit:
  """A TinyJit that captures on its first call. By default TinyJit runs a function eagerly once first, a warm-up that
  schedules and compiles the same kernels a second time; the steps here read only buffers that are already realised
  (weights, cache, inputs), so nothing is left for a warm-up to do."""
  jit = TinyJit(fn)
  jit.cnt = 1
  return jit

class Scorer:
  """Summed log-probabilities of completions given a context. The context (all but its last token) is prefilled into
  row 0 of the KV cache in fixed-size chunks and copied to the other rows; then up to `rows` completions run side by
  side as one (rows, T) step that starts at the context's last token, T the completion length rounded up to a bucket.
  Every step is a TinyJit at a symbolic position: one compilation per shape, reused by every item. A context that
  shares a prefix with the one in the cache prefills only the rest (k-shot prompts, the "Answer:" baseline)."""
  def __init__(self, model: llama.Transformer, rows: int, max_start: int, max_len: int):
    """Room for contexts of up to max_start+1 tokens and completions of up to max_len tokens."""
    self.model, self.rows, max_start = model, rows, max(max_start, 1)
    model.init_cache(rows, max_start + max(PREFILL_CHUNKS[0], bucket(max_len)))
    self.v_pos = UOp.variable("start_pos", 0, max_start)
    self.prefill = {c: captured_at_once(self._prefill) for c in PREFILL_CHUNKS}
    self.spread, self.steps = captured_at_once(self._spread), {}
    self.held: list[int] = []   # the tokens at positions 0.. of every row of the cache

  def _prefill(self, tokens: Tensor, start_pos: UOp) -> Tensor: return self.model(tokens, start_pos)[:, -1, :1].realize()

  def _spread(self):
    caches = [layer.attention.cache_kv for layer in self.model.layers]
    for c in caches: c.assign(c[:, :1].expand(c.shape).contiguous())
    Tensor.realize(*caches)

  def _step(self, tokens: Tensor, targets: Tensor, start_pos: UOp) -> Tensor:
    # log p(target) at every position; a target of -1 (padding) matches no token and gives 0
    logp = self.model(tokens, start_pos).log_softmax(-1)
    return (Tensor.arange(logp.shape[-1]).reshape(1, 1, -1) == targets.unsqueeze(-1)).where(logp, 0).sum(-1).realize()

  def hold(self, prefix: list[int]):
    """Make every row of the cache hold `prefix` at positions 0.."""
    same = common_prefix(self.held, prefix)
    if same < len(prefix):
      pos = same
      while pos < len(prefix):
        size = next(c for c in PREFILL_CHUNKS if len(prefix) - pos >= c or c == PREFILL_CHUNKS[-1])
        part = prefix[pos:pos + size]
        self.prefill[size](Tensor([part + [0] * (size - len(part))], dtype=dtypes.int32), self.v_pos.bind(pos))
        pos += len(part)
      if self.rows > 1: self.spread()
    self.held = list(prefix)

  def score(self, ctx: tuple[int, ...], conts: list[tuple[int, ...]]) -> list[np.ndarray]:
    """log p(token | everything before it) for every token of each completion (float64 arrays)."""
    n = len(ctx) - 1
    self.hold(list(ctx[:n]))
    out: list[np.ndarray] = []
    for i in range(0, len(conts), self.rows):
      batch = conts[i:i + self.rows]
      rows, T = min(self.rows, 1 << (len(batch) - 1).bit_length()), bucket(max(map(len, batch)))
      tokens, targets = np.zeros((rows, T), np.int32), np.full((rows, T), -1, np.int32)
      for r, c in enumerate(batch): tokens[r, :len(c)], targets[r, :len(c)] = (ctx[-1],) + c[:-1], c
      if (rows, T) not in self.steps: self.steps[rows, T] = captured_at_once(self._step)
      lp = self.steps[rows, T](Tensor(tokens), Tensor(targets), self.v_pos.bind(n)).numpy()
      out += [lp[r, :len(c)].astype(np.float64) for r, c in enumerate(batch)]
      self.held = self.held[:n]   # the step wrote the rows from position n on
    return out

def round_up(n: int, to: int = 256) -> int: return -(-n // to) * to

def make_scorer(model, requests, rows: int) -> Scorer:
  """A Scorer whose cache fits every (context, completion) pair in `requests`. Its size is rounded up, because the
  compiled kernels depend on it: evaluations of similar data reuse them (within a process and from tinygrad's cache)."""
  return Scorer(model, rows, round_up(max(len(c) - 1 for c, _ in requests)), max(len(x) for _, x in requests))

def score_pairs(scorer: Scorer, pairs, ll: dict, bar=None):
  """ll[(context, completion)] for every pair not in ll yet; the pairs of one context share its prefill."""
  groups: dict[tuple, dict] = {}
  for ctx, cont in pairs:
    if (ctx, cont) not in ll: groups.setdefault(ctx, {})[cont] = None
  for ctx, conts in groups.items():
    conts = list(conts)
    for i in range(0, len(conts), scorer.rows):
      part = conts[i:i + scorer.rows]
      ll.update(((ctx, c), float(v.sum())) for c, v in zip(part, scorer.score(ctx, part)))
      if bar is not None: bar.update(len(part))

# ***** the three kinds of evaluation *****

ANSWER = "Answer:"   # Brown et al. (2020): P(completion | context) / P(completion | "Answer:")

def stderr_of_mean(x) -> float:
  x = np.asarray(x, np.float64)
  return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else 0.0

def predictions(choices: list[dict]) -> dict[str, int]:
  """The choice each score picks: the raw log-likelihood, per character (Gao et al. 2021), and relative to the
  completion's likelihood after "Answer:" (Brown et al. 2020); the first of equal scores wins."""
  return {"acc": int(np.argmax([c["ll"] for c in choices])), "acc_char": int(np.argmax([c["ll"] / max(c["chars"], 1) for c in choices])),
          "acc_answer": int(np.argmax([c["ll"] - c["ll_answer"] for c in choices]))}

def run_choice(model, tok, task: Task, items: list[Item], max_len: int, rows: int) -> tuple[dict, list[dict]]:
  contexts = [it.context if isinstance(it.context, list) else [it.context] * len(it.choices) for it in items]
  cond = [[encode_pair(tok, c, ch, max_len) for c, ch in zip(cs, it.choices)] for cs, it in zip(contexts, items)]
  base = [[encode_pair(tok, ANSWER, ch, max_len) for ch in it.choices] for it in items]
  scorer = make_scorer(model, [r for rs in cond + base for r in rs], rows)
  ll: dict[tuple, float] = {}
  # the "Answer:" baseline first: one context for every item, so its completions fill whole batches
  pending = [r for rs in base for r in rs]
  with tqdm(total=len(set(pending)), desc=f"{ANSWER} baseline", unit="choice") as bar: score_pairs(scorer, pending, ll, bar)
  with tqdm(total=len(items), desc=task.section, unit="item") as bar:
    for rs in cond:
      score_pairs(scorer, rs, ll)
      bar.update(1)
  hits: dict[str, list[bool]] = {"acc": [], "acc_char": [], "acc_answer": []}
  out = []
  for i, (it, rs, bs) in enumerate(zip(items, cond, base)):
    rec = [{"ll": ll[r], "tokens": len(r[1]), "chars": len(ch), "ll_answer": ll[b]} for r, b, ch in zip(rs, bs, it.choices)]
    preds = predictions(rec)
    for k, p in preds.items(): hits[k].append(p == it.label)
    out.append({"index": i, "label": it.label, "pred": preds[task.metric], "preds": preds, "choices": rec,
                **({"subject": it.subject} if it.subject else {})})
  metrics = {k: (float(np.mean(v)), stderr_of_mean(v)) for k, v in hits.items()}
  subjects = sorted({it.subject for it in items})
  if len(subjects) > 1:
    for s in subjects:
      v = [r["pred"] == r["label"] for r in out if r.get("subject") == s]
      metrics[f"{task.metric}:{s}"] = (float(np.mean(v)), stderr_of_mean(v))
  return metrics, out

def run_generate(model, tok, task: Task, items: list[Item], max_len: int, max_new: int) -> tuple[dict, list[dict]]:
  """Greedy decoding until the task's stop string, EOS or max_new tokens; the answer is the text before the stop
  (§3.2: "stopping at the first line break, final dot or comma"), scored by exact match after normalisation."""
  prompts = [(start_tokens(tok) + tok.encode(it.context))[-(max_len - max_new):] for it in items]
  gen = generate.Generator(kernels.use_decode_kernels(model), min(max_len, round_up(max(map(len, prompts)) + max_new)), generate.Sampling(0.0, 1.0, 0))
  out, prev = [], []
  for i, (it, ids) in enumerate(zip(tqdm(items, desc=task.section, unit="item"), prompts)):
    # the cache still holds the previous prompt: a shared prefix (the k-shot examples) is not prefilled again
    gen.rewind(min(common_prefix(prev, ids), len(ids) - 1))
    tid, dec, text = gen.feed(ids[gen.pos:]), tok.decoder(), ""
    for _ in range(max_new):
      if tid == tok.eos_id: break
      text += dec.add(tid)
      if any(s in text for s in task.stop) or gen.pos >= gen.max_context: break
      tid = gen.next()
    text += dec.flush()
    answer = text[:min([text.find(s) for s in task.stop if s in text], default=len(text))].strip()
    out.append({"index": i, "generated": text, "answer": answer, "answers": it.choices, "match": bool(task.match(answer, it.choices))})
    prev = ids
  hits = [r["match"] for r in out]
  return {"exact_match": (float(np.mean(hits)), stderr_of_mean(hits))}, out

def run_perplexity(model, tok, text: str, window: int, stride: int) -> tuple[dict, list[dict]]:
  """Token perplexity and bits per byte of a text, in sliding windows of at most `window` tokens: each scores the next
  `stride` tokens given up to window-stride tokens before them (all before them, near the start). Every window has
  the same shape, so one compiled step serves them all: the last one ends at the end of the text, overlapping the one
  before, and counts only its new tokens. The text starts after BOS (EOS for tokenizers that add no BOS, as
  lm-eval-harness's rolling log-likelihood does), so every token of it is scored."""
  ids = (start_tokens(tok) or [tok.eos_id]) + tok.encode(text)
  if len(ids) < 2: raise EvalError("the text is empty")
  reqs = []   # (context, completion, how many of the completion's last tokens are new)
  for end in range(1, len(ids), stride):
    new, s = min(stride, len(ids) - end), max(min(end, len(ids) - stride), 1)
    reqs.append((tuple(ids[max(s - (window - stride), 0):s]), tuple(ids[s:s + stride]), new))
  scorer = make_scorer(model, [(c, x) for c, x, _ in reqs], 1)
  out = []
  for i, (ctx, cont, new) in enumerate(tqdm(reqs, desc="perplexity", unit="window")):
    out.append({"index": i, "tokens": new, "ll": float(scorer.score(ctx, [cont])[0][-new:].sum())})
  nll, n, nbytes = -sum(r["ll"] for r in out), sum(r["tokens"] for r in out), len(text.encode())
  return {"token_perplexity": (math.exp(nll / n), None), "bits_per_byte": (nll / math.log(2) / nbytes, None),
          "tokens": (float(n), None), "bytes": (float(nbytes), None)}, out

# ***** command line *****

def print_table(name: str, task: Task, metrics: dict, n: int):
  print(f"{'task':<16} {'metric':<24} {'score':>10} {'n':>7} {'stderr':>8}")
  for k, (v, se) in metrics.items():
    mark = " *" if k == task.metric else ""
    print(f"{name:<16} {k + mark:<24} {v:>10.4f} {n:>7} {'' if se is None else f'{se:.4f}':>8}")
  print(f"* the score the paper reports ({task.section})")

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="Evaluate a LLaMA checkpoint on a §3 benchmark file, the paper's way.")
  p.add_argument("model", nargs="?", help=f"checkpoint path; default: the one train.py wrote to {generate.DEFAULT_OUT}/")
  p.add_argument("--task", required=True, choices=sorted(TASKS))
  p.add_argument("--data", required=True, help="the benchmark's file (or a directory of them, e.g. MMLU's data/test)")
  p.add_argument("--train", default=None, help="k-shot examples from this file or directory (the task's training split); "
                 "default: the first k items of --data, which are then not scored")
  p.add_argument("--labels", default=None, help="a labels file, one label per line (PIQA's valid-labels.lst, SIQA's dev-labels.lst)")
  p.add_argument("--shots", type=int, default=None, help="k-shot prompts (default: the paper's, 5 for MMLU, else 0)")
  p.add_argument("--limit", type=int, default=None, help="score only the first N items")
  p.add_argument("--batch-size", type=int, default=8, help="completions scored side by side")
  p.add_argument("--max-context", type=int, default=None, help="tokens of context (default: the model's)")
  p.add_argument("--max-new-tokens", type=int, default=None, help="free-form answers: at most this many tokens (default: 32, GSM8k 256)")
  p.add_argument("--stride", type=int, default=None, help="perplexity: tokens scored per window (default: half the window)")
  p.add_argument("--tokenizer", default=None, help="tokenizer file, when none is beside the checkpoint")
  p.add_argument("--output", default=None, help="write the scores and every item's details to this JSON file")
  p.add_argument("--beam", type=int, default=0, help="BEAM search width for tinygrad kernel options (0: its heuristics); the first run searches, later runs read the cache")
  return p.parse_args(argv)

def evaluate(args) -> int:
  task = TASKS[args.task]
  k = task.shots if args.shots is None else args.shots
  for flag, v, lo in (("--shots", k, 0), ("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1), ("--stride", args.stride, 1),
                      ("--max-new-tokens", args.max_new_tokens, 1), ("--max-context", args.max_context, 2)):
    if v is not None and v < lo: raise EvalError(f"{flag} must be at least {lo}, got {v}")
  # the data is read and checked before the model is loaded: a bad file fails at once
  if task.kind == "perplexity":
    if not pathlib.Path(args.data).is_file(): raise EvalError(f"{args.data} does not exist")
    text = pathlib.Path(args.data).read_text(encoding="utf-8")
    if not text: raise EvalError(f"{args.data} is empty")
  else:
    items = load_items(args.task, args.data, args.labels)
    train = load_items(args.task, args.train) if args.train is not None and k else None
    items = with_shots(task, items, train, k)[:args.limit]
    if not items: raise EvalError(f"no items are left to score after the {k} shots taken from {args.data}")
  model_path = args.model if args.model is not None else generate.DEFAULT_OUT
  if args.model is None and not generate.DEFAULT_OUT.exists():
    raise EvalError(f"no MODEL given and no checkpoint in {generate.DEFAULT_OUT}/: run `python train.py` first or pass a checkpoint path")
  model, tok = checkpoint.load(model_path, tokenizer=args.tokenizer)
  if tok is None: raise EvalError("the checkpoint has no tokenizer beside it: pass --tokenizer PATH")
  max_len = min(args.max_context or model.args.max_seq_len, model.args.max_seq_len)
  t0 = time.perf_counter()
  if task.kind == "perplexity":
    window = args.max_context or min(max_len, 2048)   # as generate.py: a long-context model's whole window is costly
    stride = args.stride or window // 2
    if stride >= window: raise EvalError(f"--stride must be below the window of {window} tokens (--max-context)")
    metrics, out = run_perplexity(model, tok, text, min(window, max_len), stride)
  elif task.kind == "generate":
    max_new = args.max_new_tokens or task.max_new
    if max_new >= max_len: raise EvalError(f"--max-new-tokens {max_new} leaves no room for a prompt in the context of {max_len} tokens")
    metrics, out = run_generate(model, tok, task, items, max_len, max_new)
  else: metrics, out = run_choice(model, tok, task, items, max_len, args.batch_size)
  dt = time.perf_counter() - t0
  print(f"{len(out)} {'windows' if task.kind == 'perplexity' else 'items'} in {dt:.1f} s ({len(out) / dt:.2f}/s, compilation included)", file=sys.stderr)
  n = int(metrics["tokens"][0]) if task.kind == "perplexity" else len(out)
  print_table(args.task, task, metrics, n)
  if args.output:
    flat = {}
    for key, (v, se) in metrics.items(): flat.update({key: v, **({f"{key}_stderr": se} if se is not None else {})})
    result = {"task": args.task, "model": str(model_path), "n": n, "shots": 0 if task.kind == "perplexity" else k,
              "paper_metric": task.metric, "metrics": flat, "items": out}
    atomic_write(args.output, (json.dumps(result, indent=1) + "\n").encode())
  return 0

def main(argv=None) -> int:
  try:
    a = parse_args(argv)
    with Context(BEAM=a.beam): return evaluate(a)
  except (ValueError, OSError) as e:   # EvalError, CheckpointError, TokenizerError: one line, no traceback
    print(f"eval.py: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print("eval.py: interrupted", file=sys.stderr)
    return 130

if __name__ == "__main__": sys.exit(main())
