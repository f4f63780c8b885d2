"""scaling.py (issue 20): a miniature sweep of two tiny sizes on tinyshakespeare, checked against the runs' own logs and
checkpoints: the validation points, the FLOPs (6·N·D plus attention, counted here from the saved tensors), the decode
speeds, the plot, the epoch cap and the resume property; the envelope and the table's choices on made-up curves."""
import contextlib, io, json, math, pathlib
import pytest
from safetensors.numpy import load_file
import data, plots, runs, scaling

SIZES = ("32x1", "32x2")   # one width: the second size reuses the first one's compiled kernels
TPS = 4 * 32   # tokens per step: --batch-size 4, --seq-len 32
ARGS = ["--sizes", ",".join(SIZES), "--tokens", "10000000", "--batch-size", "4", "--seq-len", "32", "--eval-steps", "2",
        "--points", "3", "--decode-tokens", "8", "--decode-rounds", "1"]

@pytest.fixture(scope="module")
def dataset(shakespeare) -> pathlib.Path: return shakespeare   # conftest: prepared once a session

@pytest.fixture(scope="module")
def sweep(dataset, tmp_path_factory):
  """(out, argv, stdout) of a finished sweep whose --tokens the epoch cap cuts to 16 steps."""
  out = tmp_path_factory.mktemp("sweep")
  cap = 16 * TPS / data.read_meta(dataset)["train_tokens"]
  argv = ARGS + ["--max-epochs", repr(cap), "--data", str(dataset), "--out", str(out)]
  with contextlib.redirect_stdout(io.StringIO()) as text: assert scaling.main(argv) == 0
  return out, argv, text.getvalue()

def result(out: pathlib.Path) -> dict: return json.loads((out / "scaling.json").read_text())

def test_points_are_the_logs_validation_losses(sweep):
  out, _, _ = sweep
  models = result(out)["models"]
  assert [m["size"] for m in models] == list(SIZES)
  for m in models:
    logged = [(e["step"] * TPS, e["val_loss"]) for e in runs.read_log(out / m["size"]) if "val_loss" in e]
    assert [(p["tokens"], p["val_loss"]) for p in m["points"]] == logged
    assert [p["tokens"] for p in m["points"]] == [4 * TPS, 8 * TPS, 16 * TPS]   # geometric: each twice the last
    assert all(math.isfinite(p["val_loss"]) for p in m["points"])

def test_epochs_are_capped(sweep, dataset):
  c = result(sweep[0])["corpus"]
  train_tokens = data.read_meta(dataset)["train_tokens"]
  assert c["capped"] and c["train_tokens"] == train_tokens and c["tokens_longest"] == 16 * TPS
  assert c["epochs_longest"] == pytest.approx(16 * TPS / train_tokens) and c["epochs_longest"] <= c["max_epochs"]

def test_flops_are_6ND_plus_attention(sweep):
  """From the checkpoint's tensors: N counts every parameter but the input embedding (a lookup), attention
  6·n_layers·seq_len·dim per token (Kaplan et al. 2020)."""
  out, _, _ = sweep
  for m in result(out)["models"]:
    w = load_file(str(out / m["size"] / "model.safetensors"))
    total = sum(t.size for t in w.values())
    embed, dim = w["tok_embeddings.weight"].size, w["tok_embeddings.weight"].shape[1]
    layers = len({k.split(".")[1] for k in w if k.startswith("layers.")})
    assert (m["params"], m["non_embedding_params"], m["dim"]) == (total, total - embed - w["output.weight"].size, dim)
    for p in m["points"]: assert p["flops"] == 6 * (total - embed) * p["tokens"] + 6 * layers * 32 * dim * p["tokens"]
    assert m["bytes_per_token"] == 4 * total   # float32: every weight read once per decoded token

def test_decode_speeds_measured(sweep):
  for m in result(sweep[0])["models"]: assert m["decode_tok_s"] > 0 and math.isfinite(m["decode_tok_s"])

def test_plot_written(sweep):
  if not plots.available(): pytest.skip("matplotlib is not installed")
  assert (sweep[0] / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

def test_table_names_both_choices(sweep):
  out, _, text = sweep
  models = result(out)["models"]
  rows = [line for line in text.splitlines() if line.split("|")[0].strip().replace(".", "").isdigit()]
  assert len(rows) == len({m["points"][-1]["val_loss"] for m in models})
  for row, (target, comp, inf) in zip(rows, scaling.choices(models)):
    assert float(row.split("|")[0]) == pytest.approx(target, abs=1e-4)
    assert row.split("|")[1].split()[0] == comp[1]["size"] and row.split("|")[2].split()[0] == inf[1]["size"]

def test_same_command_retrains_nothing(sweep):
  out, argv, _ = sweep
  def files() -> dict:
    return {s: ((out / s / "log.jsonl").read_bytes(), (out / s / "model.safetensors").stat().st_mtime_ns)
            for s in SIZES}
  before, points = files(), [m["points"] for m in result(out)["models"]]
  assert scaling.main(argv) == 0
  assert files() == before
  assert [m["points"] for m in result(out)["models"]] == points

def test_bad_sizes_are_one_line(dataset, tmp_path, capsys):
  assert scaling.main(["--sizes", "32x1,big", "--data", str(dataset), "--out", str(tmp_path)]) == 1
  err = capsys.readouterr().err.strip()
  assert err.startswith("scaling.py: error: size 'big'") and len(err.splitlines()) == 1

# ***** the analysis on made-up curves, against brute force *****

def model(name: str, nbytes: int, pts: list[tuple[int, float]], fpt: int) -> dict:
  return {"size": name, "bytes_per_token": nbytes, "decode_tok_s": 1e9 / nbytes,
          "points": [{"tokens": t, "flops": fpt * t, "val_loss": v} for t, v in pts]}

SMALL = model("s", 100, [(1, 3.0), (2, 2.6), (4, 2.3), (8, 2.1), (16, 2.0)], 10)
BIG = model("b", 400, [(1, 2.8), (2, 2.4), (4, 1.98), (8, 1.9)], 30)

def test_envelope_is_the_lower_frontier():
  env = scaling.envelope([SMALL, BIG])
  everything = [p for m in (SMALL, BIG) for p in m["points"]]
  for p in everything:   # on the envelope exactly when no point of at most its FLOPs has a lower loss
    dominated = any(q["flops"] <= p["flops"] and q["val_loss"] < p["val_loss"] for q in everything)
    assert (p in [{k: e[k] for k in p} for e in env]) == (not dominated), p
  assert [e["flops"] for e in env] == sorted(e["flops"] for e in env)

def test_choices_small_model_trained_longer():
  rows = {t: (c[1]["size"], c[0]["tokens"], i[1]["size"], i[0]["tokens"]) for t, c, i in scaling.choices([SMALL, BIG])}
  # the small model's final loss 2.0: the big one reaches it with 30·4 = 120 FLOPs (the small one spends 10·16 = 160),
  # but the small one, trained longer, reads a quarter of the bytes per token
  assert rows[2.0] == ("b", 4, "s", 16)
  assert rows[1.9] == ("b", 8, "b", 8)   # only the big model gets there
  assert len(rows) == 2
