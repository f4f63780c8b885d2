# The suite's shared pieces: the hypothesis profile, the shared fixtures directory, and what several test files
# need built once per session (stories260K's paths, a prepared Shakespeare dataset).
import pathlib, pytest
from hypothesis import settings
import data

# property tests compile tinygrad kernels: no per-example deadline, example counts set per test
settings.register_profile("llama", deadline=None, print_blob=True)
settings.load_profile("llama")

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
