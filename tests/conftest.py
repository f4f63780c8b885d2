# The suite's shared pieces: the hypothesis profile, the shared fixtures directory, what several test files need built
# once per session (stories260K's paths, a prepared Shakespeare dataset), the fuzz tests' sandbox and watch, and a
# home of the session's own.
import os, pathlib, pytest
from hypothesis import settings
from tinygrad.helpers import CACHEDB
import data, engine, fuzzing

# each xdist worker (and the programs it launches) its own compile cache: three workers sharing one sqlite file waited
# on each other's write locks, up to tinygrad's 60 s sqlite timeout, under load (a 1 s test took 58 s)
if worker := os.environ.get("PYTEST_XDIST_WORKER"):
  CACHEDB = f"{CACHEDB}.{worker}"
  engine.use_compile_cache(CACHEDB)

# property tests compile tinygrad kernels: no per-example deadline, example counts set per test
settings.register_profile("llama", deadline=None, print_blob=True)
settings.load_profile("llama")

@pytest.fixture(scope="session", autouse=True)
def own_home(tmp_path_factory):
  """generate.py keeps compiled steps in ~/.cache/llama-tinygrad: under a home of the session's own (also for the
  programs the tests launch), no test replays steps that an earlier run left, and none are left behind. tinygrad's
  compile cache stays where it was (one file per xdist worker, beside it)."""
  with pytest.MonkeyPatch.context() as mp:
    mp.setenv("CACHEDB", CACHEDB)
    mp.setenv("HOME", str(tmp_path_factory.mktemp("home")))
    yield

FIXTURES = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"

@pytest.fixture(scope="session")
def fixtures() -> pathlib.Path:
  """../shared/fixtures beside the checkout (real weights, tokenizers, corpus); skip when this machine lacks it."""
  if not FIXTURES.is_dir():
    pytest.skip(f"shared fixtures not found at {FIXTURES} (real-weights tests need ../shared/fixtures)")
  return FIXTURES

@pytest.fixture(scope="session")
def s260(fixtures) -> tuple[pathlib.Path, pathlib.Path]:
  """Karpathy's stories260K (llama2.c format) and its 512-token sentencepiece tokenizer."""
  d = fixtures / "stories260K"
  return d / "stories260K.bin", d / "tok512.model"

@pytest.fixture(scope="session")
def shakespeare(fixtures, tmp_path_factory) -> pathlib.Path:
  """tinyshakespeare prepared once for the session with a trained 512-token tokenizer (two encoding workers)."""
  out = tmp_path_factory.mktemp("shakespeare")
  data.prepare([str(fixtures / "tinyshakespeare.txt")], out, vocab_size=512, workers=2)
  return out

@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
  """copy(original) -> a fresh copy of a file or directory under a path never used before (fuzzing.sandbox_in)."""
  return fuzzing.sandbox_in(tmp_path_factory.mktemp("cases"))

@pytest.fixture(scope="module")
def watch():
  """attempt(load, path): load(path) under a timeout and memory bounds (fuzzing.watching)."""
  if not pathlib.Path("/proc/self/clear_refs").exists(): pytest.skip("the peak-memory check reads Linux's /proc/self")
  with fuzzing.watching() as attempt: yield attempt
