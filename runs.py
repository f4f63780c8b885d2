# A training run's directory (train.py --out): the checkpoint (the model in our format, or LoRA adapters, plus the
# optimiser's state and train_state.json) built beside it and swapped in whole, and the run's log, one JSON line a step.
from __future__ import annotations
import json, os, pathlib, shutil
from tinygrad import Tensor
from tinygrad.nn.state import safe_save
import checkpoint, lora
from files import atomic_write, publish_dir, recover_dir

DEFAULT_OUT = pathlib.Path("out")   # where train.py writes, and generate.py and eval.py read, when told no other place

class RunError(ValueError):
  """A run directory that cannot be used as asked; the message is one line for the user."""


def save_checkpoint(out: pathlib.Path, model, tokenizer, optimizer_state: dict[str, Tensor], state: dict,
                    merge: bool = True) -> None:
  """Build the whole checkpoint in a directory beside `out`, carry over the files of `out` that are not part of it
  (log.jsonl, loss.png), then swap directories: a crash leaves either the old or the new checkpoint. A LoRA model
  saves its adapters (adapters.safetensors; --resume takes the base from --init-from again), and with `merge` also
  the merged model in our format, which checkpoint.load and generate.py open; a merged model an earlier save left
  would be stale, so a save without `merge` drops it."""
  tmp = out.with_name(f".{out.name}.saving")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir(parents=True)
  stale: tuple[str, ...] = ()
  if adapters := lora.adapters(model):
    safe_save(adapters, str(tmp / "adapters.safetensors"))
    if merge: checkpoint.save(lora.merged(model), tmp, tokenizer)
    else:
      tokenizer.save(tmp / tokenizer.file_name)
      stale = ("config.json", "model.safetensors")
  else: checkpoint.save(model, tmp, tokenizer)
  safe_save(optimizer_state, str(tmp / "optimizer.safetensors"))
  (tmp / "train_state.json").write_text(json.dumps(state, indent=1) + "\n")
  publish_dir(tmp, out, drop=stale)   # the old out/ stays whole until the swap


RUN_FILES = ("train_state.json", "config.json", "model.safetensors", "adapters.safetensors", "optimizer.safetensors",
             "log.jsonl")

def holds_run(out: pathlib.Path) -> bool:
  """Whether `out` holds (part of) a training run or a model, which a new run must not silently replace."""
  recover_dir(out)
  return out.is_dir() and any((out / f).exists() for f in RUN_FILES)

def remove(out: pathlib.Path) -> None:
  """Delete the run in `out` (train.py --force), set aside first so that no half-deleted run is ever left as `out`."""
  gone = out.with_name(f".{out.name}.removed")
  shutil.rmtree(gone, ignore_errors=True)
  os.replace(out, gone)
  shutil.rmtree(gone)

def read_state(out: pathlib.Path) -> dict:
  """train_state.json of the run in `out` (after putting back a directory a crash left set aside)."""
  recover_dir(out)   # a crash between the two renames of a save
  if not (out / "train_state.json").is_file():
    raise RunError(f"--resume: no training checkpoint in {out} (train_state.json missing)")
  try: return json.loads((out / "train_state.json").read_text())
  except ValueError as e: raise RunError(f"--resume: {out / 'train_state.json'} is corrupt ({e})") from None


def read_optimizer(out: pathlib.Path) -> dict[str, Tensor]:
  return checkpoint.read_safetensors(out / "optimizer.safetensors")

def restore(mine: dict[str, Tensor], saved: dict[str, Tensor], what: str) -> None:
  """Assign the saved tensors to this run's ones of the same names (the optimiser state, LoRA adapters)."""
  if set(mine) != set(saved) or any(saved[k].shape != t.shape for k, t in mine.items()):
    raise RunError(f"--resume: {what} in the checkpoint do not match this run")
  # each saved tensor is read from the file split or copied as its counterpart is (whatever the devices were then)
  for k, t in mine.items(): t.assign(saved[k].shard_like(t).cast(t.dtype)).realize()

# ***** the log *****

def append_log(out: pathlib.Path, entry: dict) -> None:
  out.mkdir(parents=True, exist_ok=True)   # made by the first step's line, so a run that fails before leaves nothing
  with open(out / "log.jsonl", "a") as f: f.write(json.dumps(entry) + "\n")

def read_log(out: pathlib.Path) -> list[dict]:
  p = pathlib.Path(out) / "log.jsonl"
  return [json.loads(line) for line in p.read_text().splitlines() if line.strip()] if p.is_file() else []

def keep_log(out: pathlib.Path, last_step: int) -> None:
  """The log up to `last_step` only (a resumed run drops the steps past its checkpoint)."""
  atomic_write(out / "log.jsonl",
               "".join(json.dumps(e) + "\n" for e in read_log(out) if e["step"] <= last_step).encode())
