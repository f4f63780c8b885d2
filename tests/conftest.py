import pathlib, pytest
from hypothesis import settings

# property tests compile tinygrad kernels: no per-example deadline, example counts set per test
settings.register_profile("llama", deadline=None, print_blob=True)
settings.load_profile("llama")

FIXTURES = pathlib.Path(__file__).resolve().parent.parent.parent / "shared" / "fixtures"

@pytest.fixture(scope="session")
def fixtures() -> pathlib.Path:
  """../shared/fixtures beside the checkout (real weights, tokenizers, corpus); skip when this machine lacks it."""
  if not FIXTURES.is_dir(): pytest.skip(f"shared fixtures not found at {FIXTURES} (real-weights tests need ../shared/fixtures)")
  return FIXTURES
