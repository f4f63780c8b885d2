# Pictures of runs, for those who installed the optional matplotlib: a run's loss curve (train.py --plot). Each figure
# is written to a temporary file and renamed.
from __future__ import annotations
import os, pathlib
try:
  import matplotlib
  matplotlib.use("Agg")   # files only, no window
  import matplotlib.pyplot as plt
except ImportError: plt = None

def available() -> bool: return plt is not None

def save(fig, path: pathlib.Path) -> None:
  tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  os.replace(tmp, path)

def loss_curve(log: list[dict], title: str, path: pathlib.Path) -> None:
  """Training loss per step and validation loss where it was measured."""
  fig, ax = plt.subplots(figsize=(7, 4))
  ax.plot([e["step"] for e in log if "loss" in e], [e["loss"] for e in log if "loss" in e], label="train", lw=0.8)
  val = [e for e in log if "val_loss" in e]
  ax.plot([e["step"] for e in val], [e["val_loss"] for e in val], "o-", label="validation")
  ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
  ax.legend()
  save(fig, path)
