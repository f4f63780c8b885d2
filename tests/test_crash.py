"""Nothing lost on a hard kill (issue 9): runs.save_checkpoint is killed with SIGKILL just before one of its file
operations (the save runs in a process forked from one that resumed the run; an audit hook counts the operations and
kills it), and what `train.py --resume` then finds is the previous checkpoint or the new one, whole (every tensor of
the model and the optimiser, and the step, from one of the two), the log intact; training continues from there, and
generate.py loads the directory."""
import json, os, pathlib, shutil, signal, subprocess, sys
import numpy as np
import pytest
from safetensors.numpy import load_file
from tinygrad import Tensor
import checkpoint, data, llama, train, training, optim, runs
from common import TINY

REPO = pathlib.Path(__file__).resolve().parent.parent
FILE_EVENTS = ("open", "os.remove", "os.rename", "os.link", "shutil.rmtree", "os.mkdir", "os.truncate")   # audit events

def bump(name: str, x):
  """What the new checkpoint makes of each tensor of the previous one (tinygrad Tensors in the child, numpy float32
  arrays in the checks, exactly the same float32 operations): one more step of Adam's bias-correction powers, moments
  a little larger, weights doubled."""
  if name.endswith(("b1_t", "b2_t")): return x * (0.9 if name.endswith("b1_t") else 0.95)
  if ".m." in name or ".v." in name: return x + 1e-3
  return x * 2.0

def child(previous: str, work: str, data_dir: str):
  """Resume a copy of `previous` (an out/ at step 0) and make the next checkpoint from it (every tensor bumped, step 1);
  then save it into fresh copies work/<k>/out of `previous`, each save in a forked process that an audit hook kills
  with SIGKILL just before its k-th file operation under work/<k> (k = 0: never). Prints {"ops": the operations of
  the whole save, "status": {k: how the save of work/<k> ended}} as JSON. The kill points: the first and the last
  operation, every rename and link, and the first opening of each file a checkpoint holds."""
  work, kill = pathlib.Path(work), {"root": "", "at": 0, "seen": []}
  def hook(event: str, args: tuple):
    if kill["root"] and event in FILE_EVENTS and args and (str(args[0]) + os.sep).startswith(kill["root"] + os.sep):
      kill["seen"].append([event, os.path.relpath(str(args[0]), kill["root"])])
      if len(kill["seen"]) == kill["at"]: os.kill(os.getpid(), signal.SIGKILL)
  def save(k: int) -> int:
    cfg.out = str(copy_run(pathlib.Path(previous).parent, work / str(k)))
    if (pid := os.fork()) == 0:
      kill.update(root=str(work / str(k)), at=k)
      training.save(run, cfg)
      (work / "ops.json").write_text(json.dumps(kill["seen"]))
      os._exit(0)
    return os.waitpid(pid, 0)[1]

  cfg = train.parse_args(
    [*TINY, "--data", data_dir, "--out",
     str(copy_run(pathlib.Path(previous).parent, work / "setup")), "--resume"])
  run = training.setup(cfg)
  new = {**{f"model.{k}": t for k, t in llama.learned(run.model).items()}, **optim.optimizer_state(run.opt, run.params)}
  Tensor.realize(*[t.assign(bump(k, t)) for k, t in new.items()])
  run.state["step"] += 1
  sys.addaudithook(hook)
  status = {0: save(0)}
  ops = json.loads((work / "ops.json").read_text())
  first_open = {pathlib.Path(path).name: k for k, (event, path) in reversed(list(enumerate(ops, 1))) if event == "open"}
  points = {1, len(ops), *(k for k, (event, _) in enumerate(ops, 1) if event in ("os.rename", "os.link")),
            *(first_open[f] for f in ("config.json", "model.safetensors", "optimizer.safetensors", "train_state.json"))}
  print(json.dumps({"ops": ops, "status": status | {k: save(k) for k in sorted(points)}}))

# ***** the previous checkpoint (step 0), the operations of a whole save, and one killed save per operation *****

@pytest.fixture(scope="module")
def dataset(fixtures, tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("crash_data")
  (root / "corpus.txt").write_text((fixtures / "tinyshakespeare.txt").read_text()[:100_000])
  data.prepare([str(root / "corpus.txt")], root / "data", vocab_size=512, workers=1)
  return root / "data"

@pytest.fixture(scope="module")
def previous(dataset, tmp_path_factory) -> pathlib.Path:
  """out/ of a run at step 0 (as train.py saves it), its log holding one line."""
  out = tmp_path_factory.mktemp("previous") / "out"
  cfg = train.parse_args([*TINY, "--data", str(dataset), "--out", str(out)])
  training.save(training.setup(cfg), cfg)
  (out / "log.jsonl").write_text(json.dumps({"step": 0, "loss": 6.0}) + "\n")
  return out

def copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
  """A copy of the directory holding out/ (and whatever a killed save left beside it)."""
  shutil.copytree(src, dst, symlinks=True)
  return dst / "out"

@pytest.fixture(scope="module")
def killed(previous, dataset, tmp_path_factory) -> tuple[list, dict[int, pathlib.Path]]:
  """(the file operations of a whole save, {k: the directory holding out/ after a save killed just before operation
  k}); k = 0 is the save that ran to the end (see child)."""
  work = tmp_path_factory.mktemp("killed")
  code = (f"import sys; sys.path[:0] = ['.', 'tests']; import test_crash; "
          f"test_crash.child({str(previous)!r}, {str(work)!r}, {str(dataset)!r})")
  p = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  result = json.loads(p.stdout.splitlines()[-1])
  ops, status = result["ops"], {int(k): v for k, v in result["status"].items()}
  assert status[0] == 0, "the whole save failed"
  for k, st in status.items():
    assert k == 0 or os.WIFSIGNALED(st) and os.WTERMSIG(
      st) == signal.SIGKILL, f"the save meant to be killed before {ops[k - 1]} ended with status {st}"
  return ops, {k: work / str(k) for k in status}

def publishing(ops: list) -> int:
  """The number of the operation that makes the new checkpoint out/: the last rename of .out.saving."""
  return max(k for k, op in enumerate(ops, 1) if op == ["os.rename", ".out.saving"])

# ***** what --resume finds *****

def arrays(out: pathlib.Path) -> dict[str, np.ndarray]:
  """Every tensor of a training checkpoint, read by the safetensors package (not by our loader)."""
  return {f"model.{k}": v
          for k, v in load_file(str(out / "model.safetensors")).items()} | load_file(str(out / "optimizer.safetensors"))

def which(out: pathlib.Path, previous: pathlib.Path) -> int:
  """0 or 1: the step of the checkpoint in `out`, after checking that every tensor is exactly the previous one's
  (step 0) or its bumped value (step 1), and that its other files are the previous ones."""
  step = json.loads((out / "train_state.json").read_text())["step"]
  assert step in (0, 1), step
  got, before = arrays(out), arrays(previous)
  assert sorted(got) == sorted(before)
  for k, v in before.items():
    np.testing.assert_array_equal(got[k],
                                  bump(k, v) if step else v,
                                  err_msg=f"{k} is not from the step-{step} checkpoint")
  for f in ("config.json", "tokenizer.model", "log.jsonl"):
    assert (out / f).read_bytes() == (previous / f).read_bytes(), f
  return step

def resume_cfg(out: pathlib.Path, dataset: pathlib.Path) -> training.TrainConfig:
  return train.parse_args([*TINY, "--data", str(dataset), "--out", str(out), "--resume"])

def test_whole_save_is_the_new_checkpoint(killed, previous):
  out = killed[1][0] / "out"
  assert which(out, previous) == 1
  assert sorted(p.name for p in out.parent.iterdir()) == ["out"]            # nothing left beside it

def test_killed_save_leaves_the_previous_or_the_new_checkpoint(killed, previous, dataset, tmp_path):
  ops, roots = killed
  assert len(roots) >= 10
  for k, root in roots.items():
    out = copy_run(root, tmp_path / str(k))
    _, _, state, _ = training.load_checkpoint(out, resume_cfg(out,
                                                              dataset)) # what --resume does first: recover, then load
    # the new checkpoint is there exactly when the kill came after the rename that publishes it
    assert which(out, previous) == state["step"] == int(k == 0 or k > publishing(ops)), (k, ops[k - 1])

def test_resume_continues_after_a_kill(killed, previous, dataset, tmp_path):
  """Killed after the old directory's files were linked into the new one, between the two renames (no out/ at all),
  and as the old directory was being removed: --resume trains on from the checkpoint it finds (the previous, the
  previous, the new), the log lists every step once, and the next save is whole."""
  ops, roots = killed
  link = next(k for k, op in enumerate(ops, 1) if op[0] == "os.link")
  linked = next(k for k, op in enumerate(ops, 1) if k > link and op[0] == "os.rename")   # out/ about to be set aside
  for k, start in ((linked, 0), (publishing(ops), 0), (len(ops), 1)):
    out = copy_run(roots[k], tmp_path / str(k))
    assert train.main([*TINY, "--data",
                       str(dataset), "--out",
                       str(out), "--resume", "--max-steps", "2"]) == 0, (k, ops[k - 1])
    assert [e["step"] for e in runs.read_log(out)] == [0, *range(start + 1, 3)], (k, ops[k - 1])
    assert json.loads((out / "train_state.json").read_text())["step"] == 2
    assert np.isfinite(arrays(out)["model.norm.weight"]).all() and checkpoint.load(out)[0].args.dim == 32

def test_generate_loads_between_the_two_renames(killed, tmp_path):
  """A save killed after out/ was set aside and before the new one took its place: generate.py out/ still loads the
  previous checkpoint (checkpoint.load puts it back)."""
  ops, roots = killed
  out = copy_run(roots[publishing(ops)], tmp_path / "run")
  assert not out.exists() and (out.parent / ".out.old").is_dir()
  p = subprocess.run(
    [sys.executable, "generate.py", str(out), "-n", "3", "--temperature", "0"],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=600)
  assert p.returncode == 0 and out.is_dir(), p.stderr
