"""The §3 benchmarks as their publishers ship them: one reader per file format (HellaSwag, PIQA, SIQA, WinoGrande,
ARC, OpenBookQA, BoolQ, RACE, MMLU, NaturalQuestions, TriviaQA, GSM8K), the metric and prompt shape the paper uses
for each, how free-form answers are matched, and k-shot prompts. eval.py scores them.
"""
from __future__ import annotations
import csv, io, json, pathlib, re, string
from dataclasses import dataclass
from typing import Callable

class EvalError(ValueError):
  """Bad input (a missing file, a record not in the task's format, a label out of range); the message is one
  sentence."""

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
  return [choice_item(f"Q: {row['context']} {row['question']}\nA:", [row["answerA"], row["answerB"], row["answerC"]],
                      int(row["label"]) - 1)]

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
  if isinstance(q, dict):
    stem, texts, labels = q["stem"], [c["text"] for c in q["choices"]], [c["label"] for c in q["choices"]]
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
  # the publisher's files hold one article with its questions, options and answer letters;
  # the Hugging Face rows one question
  if "questions" in row: qs = zip(row["questions"], row["options"], row["answers"], strict=True)
  else: qs = [(row["question"], row["options"], row["answer"])]
  return [choice_item(f"Article: {row['article']}\n\nQuestion: {q}\nAnswer:", opts,
                      letter(a, list("ABCDEFGH"[:len(opts)]))) for q, opts, a in qs]

def read_mmlu(row):
  # hendrycks/test CSV rows: question, four options, answer letter; §3.6: the letters are the completions
  if len(row) != 6: raise EvalError(f"it has {len(row)} columns, not 6 (question, A, B, C, D, answer)")
  q, *opts, ans = row
  prompt = q + "".join(f"\n{k}. {o}" for k, o in zip("ABCD", opts)) + "\nAnswer:"
  return [choice_item(prompt, list("ABCD"), letter(ans, list("ABCD")))]

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
  "mmlu": Task(read_mmlu, "acc", "§3.6", shots=5, csv=True,
               header="The following are multiple choice questions (with answers) about {subject}.\n\n"),
  "naturalquestions": Task(read_qa, "exact_match", "§3.2", **QA),
  "triviaqa": Task(read_qa, "exact_match", "§3.2", **QA),
  "gsm8k": Task(read_gsm8k, "exact_match", "§3.4", kind="generate", stop=("\n\n", "Question:"), max_new=256,
                match=number_match),
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
    elif isinstance(whole, dict) and len(text.strip().splitlines()) > 1:   # one pretty-printed record
      yield str(f), subject, whole
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
    if len(shots) < k:
      of_subject = f" of {it.subject}" if it.subject else ""
      raise EvalError(f"{k}-shot prompts need {k} examples{of_subject}, there are {len(shots)}")
    prefix = task.header.format(subject=it.subject.replace("_", " ")) + "".join(s.shot + task.sep for s in shots)
    ctx = prefix + it.context if isinstance(it.context, str) else [prefix + c for c in it.context]
    out.append(Item(ctx, it.choices, it.label, it.shot, it.subject))
  return out
