"""One run per checkpoint directory (train.py): a second run into an --out that holds one refuses in one line and
leaves it whole; --force replaces it and leaves nothing of the old run behind, also after a LoRA run."""
import hashlib, pathlib
import pytest
import data, runs, train
from common import one_line_error

TINY = ["--preset", "tiny", "--max-steps", "1", "--batch-size", "2", "--seq-len", "32", "--eval-every", "1000",
        "--eval-steps", "1", "--sample-tokens", "0", "--save-every", "1000"]

@pytest.fixture(scope="module")
def tok512_data(fixtures, tmp_path_factory) -> pathlib.Path:
  """A little Shakespeare encoded with stories260K's tokenizer, so that both a LoRA run on stories260K and a
  from-scratch run can train on it."""
  d = tmp_path_factory.mktemp("tok512")
  (d / "shk.txt").write_bytes((fixtures / "tinyshakespeare.txt").read_bytes()[:40_000])
  data.prepare([str(d / "shk.txt")], d / "ds", tokenizer=fixtures / "stories260K" / "tok512.model", workers=1)
  return d / "ds"

def snapshot(d: pathlib.Path) -> dict[str, str]:
  return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(d.iterdir()) if f.is_file()}

def run(*argv) -> int: return train.main([str(a) for a in argv])

def test_second_run_refuses_and_force_replaces(tok512_data, tmp_path, capsys):
  out = tmp_path / "out"
  assert run("--data", tok512_data, "--out", out, *TINY) == 0
  first = snapshot(out)
  assert {"model.safetensors", "train_state.json"} <= set(first)
  capsys.readouterr()
  assert run("--data", tok512_data, "--out", out, *TINY, "--lr", "1e-3") == 1
  _, err = capsys.readouterr()
  assert one_line_error(1, "", err, "--resume", "train.py") and "--force" in err, err
  assert snapshot(out) == first                                  # the first run is intact
  assert run("--data", tok512_data, "--out", out, *TINY, "--lr", "1e-3", "--force") == 0
  assert snapshot(out).keys() == first.keys() and snapshot(out) != first
  assert [e["step"] for e in runs.read_log(out) if "loss" in e] == [1]   # no log line of the replaced run

def test_force_after_lora_leaves_no_adapters(tok512_data, s260, tmp_path):
  out = tmp_path / "out"
  assert run("--init-from", s260[0], "--data", tok512_data, "--out", out, "--lora-rank", "2", *TINY[2:]) == 0
  assert (out / "adapters.safetensors").exists()
  assert run("--data", tok512_data, "--out", out, *TINY, "--force") == 0
  files = snapshot(out)
  assert "adapters.safetensors" not in files, files               # a stale adapter would be applied to the new model
  assert [e["step"] for e in runs.read_log(out) if "loss" in e] == [1]
