"""What the fuzz tests share (issue 9): reproducible property tests, absurd header values, a sandbox of fresh
copies, the watch that runs a loader under a timeout and memory bounds, and the corruptions of a file's bytes and
binary header fields."""
import contextlib, itertools, json, pathlib, re, shutil, signal, struct, subprocess, sys
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tinygrad import GlobalCounters
from tinygrad.device import Buffer
import checkpoint, gguf
from writers import gguf_string

CASES = 200                        # corrupted cases per format (the issue asks for at least 200)

def fuzzed(argname: str, values: list, cases: int = CASES):
  """A property test drawing `cases` reproducible examples for each of values."""
  def wrap(test):
    drawn = given(data=st.data())(test)
    return pytest.mark.parametrize(argname, values)(
      settings(max_examples=cases, suppress_health_check=list(HealthCheck), derandomize=True)(drawn))
  return wrap

# absurd values for header fields: zero, sign flips, 32/64-bit edges, a 10^12-element claim
ABSURD = [0, 1, 3, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40, 10**12, 2**63 - 1, 2**63, 2**64 - 1, -1, -2**31, -2**63]
JSON_ABSURD = [*ABSURD, 1.5, "32", None, [], {}, True, float("nan"), float("inf"), [10**12, 10**12]]

def files_of(ck: pathlib.Path) -> list[pathlib.Path]: return sorted(ck.iterdir()) if ck.is_dir() else [ck]

_copies = itertools.count()

def sandbox_in(root: pathlib.Path):
  """copy(original) -> a fresh copy under a new path (tinygrad keeps one DISK device per path, so no path is reused)."""
  def copy(src: pathlib.Path) -> pathlib.Path:
    dst = root / str(next(_copies)) / src.name
    dst.parent.mkdir()
    (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
    return dst
  return copy

# ***** the property: loads, or one sentence from a reader's own check; no hang, no huge allocation *****

def resident() -> tuple[int, int]:
  """(resident set size, its peak since the last reset_peak_rss()) of this process in bytes (Linux /proc)."""
  status = pathlib.Path("/proc/self/status").read_text()
  return tuple(int(status.split(f"{k}:")[1].split()[0]) * 1024 for k in ("VmRSS", "VmHWM"))

def reset_peak_rss(): pathlib.Path("/proc/self/clear_refs").write_text("5")

@contextlib.contextmanager
def watching():
  """attempt(load, path) runs load(path) under the checks below and returns None (it loaded) or the error message."""
  peak = [0]
  allocate = Buffer.allocate
  def counting_allocate(self, *a, **kw):
    out = allocate(self, *a, **kw)
    peak[0] = max(peak[0], GlobalCounters.mem_used)
    return out
  def timeout(*_): raise TimeoutError("a corrupt file made the loader hang")
  def attempt(load, path: pathlib.Path, error=checkpoint.CheckpointError) -> str | None:
    nbytes = sum(f.stat().st_size for f in files_of(path))
    peak[0] = mem0 = GlobalCounters.mem_used
    reset_peak_rss()
    rss0 = resident()[0]
    signal.alarm(60)
    try: load(path)
    except error as e:
      msg = str(e)
      assert msg.startswith(str(path)) and "\n" not in msg, msg
      assert e.__cause__ is None, f"load()'s last resort caught {e.__cause__!r}"   # the readers' checks found it
      return msg
    finally:
      signal.alarm(0)
      # far beyond the file's size: more than the dequantised model (4-bit to float32 is 7x) and a little
      assert peak[0] - mem0 <= 8 * nbytes + (
        1 << 20), f"{peak[0] - mem0:,} bytes of tensors for a {nbytes:,}-byte checkpoint"
      assert (grown := resident()[1] -
              rss0) <= 8 * nbytes + (64 << 20), f"the process grew by {grown:,} bytes for a {nbytes:,}-byte checkpoint"
    return None
  old = signal.signal(signal.SIGALRM, timeout)
  Buffer.allocate = counting_allocate
  try: yield attempt
  finally:
    Buffer.allocate = allocate
    signal.signal(signal.SIGALRM, old)

# ***** corruptions *****

def truncate(f: pathlib.Path, at: int): f.write_bytes(f.read_bytes()[:at])

def flip(f: pathlib.Path, at: int, xor: int):
  b = bytearray(f.read_bytes())
  b[at] ^= xor
  f.write_bytes(bytes(b))

def poke(f: pathlib.Path, at: int, fmt: str, value: int):
  """Overwrite a little-endian integer field (fmt 'I', 'Q', 'i' or 'B') with `value`, wrapped to its width."""
  b, width = bytearray(f.read_bytes()), struct.calcsize(fmt)
  b[at:at + width] = (value % (1 << 8 * width)).to_bytes(width, "little")
  f.write_bytes(bytes(b))

def set_json(f: pathlib.Path, path: tuple, value):
  obj = json.loads(f.read_text())
  *parents, leaf = path
  node = obj
  for p in parents: node = node[p]
  node[leaf] = value
  f.write_text(json.dumps(obj))

LLAMA2C_CONFIG = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")

def binary_fields(f: pathlib.Path) -> dict[str, tuple[int, str]]:
  """{name: (byte offset, struct format)} of the integer header fields of a llama2.c .bin or a GGUF file."""
  raw = f.read_bytes()
  if f.suffix == ".bin":
    if raw[:4] != struct.pack("<I", 0x616B3432): return {n: (4 * k, "i") for k, n in enumerate(LLAMA2C_CONFIG)}
    return {
      "magic": (0, "I"), "version": (4, "i"), **{n: (8 + 4 * k, "i")
                                                 for k, n in enumerate(LLAMA2C_CONFIG)}, "shared": (36, "B"),
      "padding": (40, "I")
    }
  header, out = gguf.read_header(f), {"version": (4, "I"), "n_tensors": (8, "Q"), "n_kv": (16, "Q")}
  for key in header.metadata:                # a key's length, its value's type code
    k = raw.index(gguf_string(key))
    out |= {f"{key}.length": (k, "Q"), f"{key}.type": (k + 8 + len(key.encode()), "I")}
  for t in header.tensors:                   # a tensor's name length, dimension count, first dimension, type, offset
    k = raw.index(gguf_string(t.name)) + 8 + len(t.name.encode())
    out |= {
      f"{t.name}.length": (k - 8 - len(t.name.encode()), "Q"), f"{t.name}.n_dims": (k, "I"),
      f"{t.name}.dim0": (k + 4, "Q"), f"{t.name}.type": (k + 4 + 8 * len(t.shape), "I"),
      f"{t.name}.offset": (k + 8 + 8 * len(t.shape), "Q")
    }
  return out

def set_field(f: pathlib.Path, name: str, value: int): poke(f, *binary_fields(f)[name], value)

# ***** the CLIs: the one line, exit 1 *****

REPO = pathlib.Path(__file__).resolve().parent.parent

def cli(*argv, cwd=REPO) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, *map(str, argv)], cwd=cwd, capture_output=True, text=True, timeout=300)

def assert_one_line(p: subprocess.CompletedProcess, script: str, reason: str):
  lines = [l for l in p.stderr.splitlines() if l.strip()]
  assert p.returncode == 1 and len(lines) == 1 and lines[0].startswith(f"{script}: ") and re.search(reason,
                                                                                                    lines[0]), p.stderr
