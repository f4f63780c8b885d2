"""Score a LLaMA checkpoint the way §3 of the paper (Touvron et al., 2023) does, on the benchmark files as published.

  python eval.py smollm2-135m-instruct-q4_1.gguf --task hellaswag --data hellaswag_val.jsonl
  python eval.py out/ --task mmlu --data data/test --train data/dev          # 5-shot, all 57 subjects
  python eval.py stories260K.bin --tokenizer tok512.model --task perplexity --data held_out.txt

Multiple choice (§3.1, §3.5, §3.6): every completion is scored by the summed log-likelihood of its tokens given the
context. A context shared by several completions is prefilled once into the KV cache, copied to every row of the
batch, and the completions are then scored side by side; each step is TinyJit-compiled once per bucket shape and
replayed at a symbolic position. Free-form answers (§3.2, §3.4) are generated greedily with decode.Generator.
"""
from __future__ import annotations
import argparse, json, math, pathlib, sys, time
import numpy as np
from tinygrad import Context, Tensor, UOp, dtypes
from tinygrad.helpers import tqdm
import checkpoint, kernels, llama, runs
from cli import one_line_errors
from decode import Generator, Sampling, common_prefix
from engine import capture_at_once, use_all_cores, use_cpu_graph, use_kernel_options
from files import atomic_write
from progress import phase
from tasks import TASKS, EvalError, Item, Task, load_items, with_shots

# ***** tokens *****

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
  if len(cont) >= max_len:
    raise EvalError(f"a completion of {len(cont)} tokens does not fit the context of {max_len} tokens")
  return tuple(ctx[-(max_len - len(cont)):]), tuple(cont)

# ***** log-likelihoods through the KV cache *****

PREFILL_CHUNKS = (128, 8)   # long contexts go in big chunks, the rest in one padded small one

def bucket(n: int) -> int: return max(4, 1 << (n - 1).bit_length())

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
    self.prefill = {c: capture_at_once(self._prefill, model) for c in PREFILL_CHUNKS}
    self.spread, self.steps = capture_at_once(self._spread, model), {}
    self.held: list[int] = []   # the tokens at positions 0.. of every row of the cache
    self.ran: set = set()       # the steps that ran once: compiled

  def _prefill(self, tokens: Tensor, start_pos: UOp) -> Tensor:
    return self.model(tokens, start_pos)[:, -1, :1].realize()

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
        with self.compiling(f"prefill of {size}"):
          self.prefill[size](Tensor([part + [0] * (size - len(part))], dtype=dtypes.int32), self.v_pos.bind(pos))
        pos += len(part)
      if self.rows > 1:
        with self.compiling("copy to every row"): self.spread()
    self.held = list(prefix)

  def compiling(self, step: str):
    """The first run of a step compiles it: shown as a phase (progress.phase) when it takes a while."""
    first = step not in self.ran
    self.ran.add(step)
    return phase(f"compiling the scoring {step}", quiet=not first)

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
      if (rows, T) not in self.steps: self.steps[rows, T] = capture_at_once(self._step, self.model)
      with self.compiling(f"step of {rows}x{T}"):
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
  return {
    "acc": int(np.argmax([c["ll"] for c in choices])),
    "acc_char": int(np.argmax([c["ll"] / max(c["chars"], 1) for c in choices])),
    "acc_answer": int(np.argmax([c["ll"] - c["ll_answer"] for c in choices]))
  }

def run_choice(model, tok, task: Task, items: list[Item], max_len: int, rows: int) -> tuple[dict, list[dict]]:
  contexts = [it.context if isinstance(it.context, list) else [it.context] * len(it.choices) for it in items]
  cond = [[encode_pair(tok, c, ch, max_len) for c, ch in zip(cs, it.choices)] for cs, it in zip(contexts, items)]
  base = [[encode_pair(tok, ANSWER, ch, max_len) for ch in it.choices] for it in items]
  scorer = make_scorer(model, [r for rs in cond + base for r in rs], rows)
  ll: dict[tuple, float] = {}
  # the "Answer:" baseline first: one context for every item, so its completions fill whole batches
  pending = [r for rs in base for r in rs]
  with tqdm(total=len(set(pending)), desc=f"{ANSWER} baseline", unit="choice") as bar:
    score_pairs(scorer, pending, ll, bar)
  with tqdm(total=len(items), desc=task.section, unit="item") as bar:
    for rs in cond:
      score_pairs(scorer, rs, ll)
      bar.update(1)
  hits: dict[str, list[bool]] = {"acc": [], "acc_char": [], "acc_answer": []}
  out = []
  for i, (it, rs, bs) in enumerate(zip(items, cond, base)):
    rec = [{"ll": ll[r], "tokens": len(r[1]), "chars": len(ch), "ll_answer": ll[b]}
           for r, b, ch in zip(rs, bs, it.choices)]
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
  gen = Generator(kernels.use_decode_kernels(model), min(max_len, round_up(max(map(len, prompts)) + max_new)),
                  Sampling(0.0, 1.0, 0))
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
    out.append({
      "index": i, "generated": text, "answer": answer, "answers": it.choices,
      "match": bool(task.match(answer, it.choices))
    })
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
    value = f"{v:,.0f}" if k in ("tokens", "bytes") else f"{v:.4f}"   # counts as integers
    print(f"{name:<16} {k + mark:<24} {value:>10} {n:>7} {'' if se is None else f'{se:.4f}':>8}")
  print(f"* the score the paper reports ({task.section})")

def score(model, tok, task: Task, args, data, max_len: int) -> tuple[dict, list[dict]]:
  """(metrics, per-item records) of the task on the loaded model; `data` is the items, or the text for perplexity."""
  if task.kind == "perplexity":
    window = args.max_context or min(max_len, 2048)   # as generate.py: a long-context model's whole window is costly
    stride = args.stride or window // 2
    if stride >= window: raise EvalError(f"--stride must be below the window of {window} tokens (--max-context)")
    return run_perplexity(model, tok, data, min(window, max_len), stride)
  elif task.kind == "generate":
    max_new = args.max_new_tokens or task.max_new
    if max_new >= max_len:
      raise EvalError(f"--max-new-tokens {max_new} leaves no room for a prompt in the context of {max_len} tokens")
    return run_generate(model, tok, task, data, max_len, max_new)
  return run_choice(model, tok, task, data, max_len, args.batch_size)

def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description="Evaluate a LLaMA checkpoint on a §3 benchmark file, the paper's way.")
  p.add_argument("model", nargs="?", help=f"checkpoint path; default: the one train.py wrote to {runs.DEFAULT_OUT}/")
  p.add_argument("--task", required=True, choices=sorted(TASKS))
  p.add_argument("--data", required=True, help="the benchmark's file (or a directory of them, e.g. MMLU's data/test)")
  p.add_argument(
    "--train", default=None, help="k-shot examples from this file or directory (the task's training split); "
    "default: the first k items of --data, which are then not scored")
  p.add_argument("--labels", default=None,
                 help="a labels file, one label per line (PIQA's valid-labels.lst, SIQA's dev-labels.lst)")
  p.add_argument("--shots", type=int, default=None, help="k-shot prompts (default: the paper's, 5 for MMLU, else 0)")
  p.add_argument("--limit", type=int, default=None, help="score only the first N items")
  p.add_argument("--batch-size", type=int, default=8, help="completions scored side by side")
  p.add_argument("--max-context", type=int, default=None, help="tokens of context (default: the model's)")
  p.add_argument("--max-new-tokens", type=int, default=None,
                 help="free-form answers: at most this many tokens (default: 32, GSM8k 256)")
  p.add_argument("--stride", type=int, default=None,
                 help="perplexity: tokens scored per window (default: half the window)")
  p.add_argument("--tokenizer", default=None, help="tokenizer file, when none is beside the checkpoint")
  p.add_argument("--output", default=None, help="write the scores and every item's details to this JSON file")
  p.add_argument("--beam", type=int, default=0, help="BEAM search width for tinygrad kernel options (0: its "
                 "heuristics); the first run searches, later runs read the cache")
  return p.parse_args(argv)

def evaluate(args) -> int:
  task = TASKS[args.task]
  k = task.shots if args.shots is None else args.shots
  for flag, v, lo in (("--shots", k, 0), ("--limit", args.limit, 1), ("--batch-size", args.batch_size, 1),
                      ("--stride", args.stride, 1), ("--max-new-tokens", args.max_new_tokens,
                                                     1), ("--max-context", args.max_context, 2)):
    if v is not None and v < lo: raise EvalError(f"{flag} must be at least {lo}, got {v}")
  # the data is read and checked before the model is loaded: a bad file fails at once
  if task.kind == "perplexity":
    if not pathlib.Path(args.data).is_file(): raise EvalError(f"{args.data} does not exist")
    todo = pathlib.Path(args.data).read_text(encoding="utf-8")   # the text
    if not todo: raise EvalError(f"{args.data} is empty")
  else:
    items = load_items(args.task, args.data, args.labels)
    train = load_items(args.task, args.train) if args.train is not None and k else None
    todo = with_shots(task, items, train, k)[:args.limit]   # the items
    if not todo: raise EvalError(f"no items are left to score after the {k} shots taken from {args.data}")
  model_path = args.model if args.model is not None else runs.DEFAULT_OUT
  if args.model is None and not runs.DEFAULT_OUT.exists():
    raise EvalError(
      f"no MODEL given and no checkpoint in {runs.DEFAULT_OUT}/: run `python train.py` first or pass a checkpoint path")
  with phase(f"loading {model_path}"): model, tok = checkpoint.load(model_path, tokenizer=args.tokenizer)
  if tok is None: raise EvalError("the checkpoint has no tokenizer beside it: pass --tokenizer PATH")
  max_len = min(args.max_context or model.args.max_seq_len, model.args.max_seq_len)
  t0 = time.perf_counter()
  with Context(BEAM=args.beam):
    metrics, out = score(model, tok, task, args, todo, max_len)
  dt = time.perf_counter() - t0
  unit = "windows" if task.kind == "perplexity" else "items"
  print(f"{len(out)} {unit} in {dt:.1f} s ({len(out) / dt:.2f}/s, compilation included)", file=sys.stderr)
  n = int(metrics["tokens"][0]) if task.kind == "perplexity" else len(out)
  print_table(args.task, task, metrics, n)
  if args.output:
    flat = {}
    for key, (v, se) in metrics.items(): flat.update({key: v, **({f"{key}_stderr": se} if se is not None else {})})
    result = {"task": args.task, "model": str(model_path), "n": n, "shots": 0 if task.kind == "perplexity" else k,
              "paper_metric": task.metric, "metrics": flat, "items": out}
    atomic_write(args.output, (json.dumps(result, indent=1) + "\n").encode())
  return 0

def main(argv=None) -> int:   # EvalError, CheckpointError, TokenizerError are ValueErrors: one line, no traceback
  use_all_cores()
  use_cpu_graph()
  use_kernel_options()
  return one_line_errors("eval.py", lambda: evaluate(parse_args(argv)))

if __name__ == "__main__": sys.exit(main())
