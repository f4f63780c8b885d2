"""generate.py's kept compiled steps (--cache-dir): a second launch restores what the first one saved
(decode.Generator.save / restore) and prints the same text without loading the checkpoint or compiling; the sampling
values and the seed come from its own command line; a changed checkpoint misses; a damaged cache file is reported in
one line and rebuilt. stories260K; the launches run once for the module (a cold one takes about 13 s here)."""
import os, re, shutil, subprocess, sys, pathlib
import pytest
import generate, parallel
from common import one_line_error
from decode import Generator, Sampling, Stats, generate as decode

ROOT = pathlib.Path(__file__).resolve().parent.parent

def cli(*args) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, str(ROOT / "generate.py"), *map(str, args)], capture_output=True, text=True,
                        cwd=ROOT, timeout=600)

def cache_file(*args) -> pathlib.Path:
  """Where generate.py with these arguments keeps its steps (the name is computed as the launched program does)."""
  a = generate.parse_args(list(map(str, args)))
  return generate.cache_file(a, Sampling(a.temperature, a.top_p, a.top_k), parallel.parse_devices(a.devices))

PROMPT = "Once upon a time"

@pytest.fixture(scope="module")
def launches(s260, fixtures, tmp_path_factory):
  """stories260K copied to a directory of its own. Two sampled launches; then half of the cache file they left
  planted where the greedy launch looks (a truncated cache file); then two greedy launches."""
  d = tmp_path_factory.mktemp("warm")
  model, cache = d / "stories260K.bin", d / "cache"
  shutil.copy(s260[0], model)
  sampled = [model, "--tokenizer", s260[1], "-p", PROMPT, "-n", 30, "-t", 0.8, "--seed", 5, "--cache-dir", cache]
  greedy = [model, "--tokenizer", s260[1], "-p", "", "-n", 40, "-t", 0, "--cache-dir", cache]
  runs = {"sampled": [cli(*sampled) for _ in range(2)]}
  files = {"sampled": cache_file(*sampled), "greedy": cache_file(*greedy)}
  whole = files["sampled"].read_bytes()
  files["greedy"].write_bytes(whole[:len(whole) // 2])
  runs["greedy"] = [cli(*greedy) for _ in range(2)]
  golden = re.search(r"```text\n(.*?)```", (fixtures / "README.md").read_text(), re.S).group(1)
  return {"model": model, "cache": cache, "files": files, "runs": runs, "golden": golden, "greedy": greedy}

def test_a_second_launch_replays_the_kept_steps(launches):
  """The greedy pair: the second launch says it used the cache file and where, compiles nothing, and prints the first
  launch's text, which is llama2.c's reference text (its first 40 tokens)."""
  first, second = launches["runs"]["greedy"]
  assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
  assert len(first.stdout) > 100 and launches["golden"].startswith(first.stdout[:-1]) and second.stdout == first.stdout
  assert "from the cache" not in first.stderr
  assert f"from the cache {launches['files']['greedy']}" in second.stderr
  assert "compiling" not in second.stderr and "saving" not in second.stderr, second.stderr

def test_sampling_values_and_seed_come_from_the_command_line(launches):
  """-t 0.8 --seed 5 twice: the same text, the second from the kept steps (the seed is set in the buffer the
  restored steps hold). Restored twice here, with seeds 5 and 6: two Generators with buffers of their own (the second
  restore must not take over the first one's), seed 5 giving that text's tokens; resample's values and seed reach
  the steps."""
  first, second = launches["runs"]["sampled"]
  assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
  assert "from the cache" in second.stderr and second.stdout == first.stdout
  path = launches["files"]["sampled"]
  (gen, extra), (other, _) = [Generator.restore(path, Sampling(0.8, 0.9), seed) for seed in (5, 6)]
  tok = extra["tokenizer"]
  ids = tok.encode(PROMPT, bos=True)
  def text(g: Generator) -> str:
    g.rewind(0)
    return tok.decode(decode(g, ids, 30, tok.eos_id, Stats()))
  five, six = text(gen), text(other)
  assert first.stdout.startswith(PROMPT) and five.strip() and five.strip() in first.stdout and six != five
  gen.resample(Sampling(0.8, 0.9), seed=6)
  assert text(gen) == six
  gen.resample(Sampling(0.8, 0.9), seed=5)
  assert text(gen) == five
  gen.resample(Sampling(0.05, 0.9), seed=5)   # nearly greedy: another text from the same steps and seed
  assert text(gen) != five

def test_a_changed_checkpoint_misses(launches):
  """A new modification time names another cache file; a checkpoint one byte longer is loaded (and refused), not
  replaced by the kept steps of the old one."""
  model, greedy = launches["model"], launches["greedy"]
  assert cache_file(*greedy) == launches["files"]["greedy"]
  st = model.stat()
  os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert cache_file(*greedy) != launches["files"]["greedy"]
  with open(model, "ab") as f: f.write(b"\0")
  r = cli(*greedy)
  assert "from the cache" not in r.stderr
  assert one_line_error(r.returncode, r.stdout, r.stderr, "stories260K.bin", "generate.py"), r.stderr

def test_a_truncated_cache_file_is_reported_in_one_line_and_rebuilt(launches):
  """The first greedy launch found half a file: one line says so and names it, the text is still the reference, and
  the rebuilt file serves the second launch."""
  first, second = launches["runs"]["greedy"]
  lines = [line for line in first.stderr.splitlines() if line.startswith("generate.py:")]
  assert len(lines) == 1 and "cache" in lines[0] and str(launches["files"]["greedy"]) in lines[0], first.stderr
  assert "Traceback" not in first.stderr and launches["golden"].startswith(first.stdout[:-1])
  assert "from the cache" in second.stderr

def test_a_restored_generator_has_no_model(launches):
  """Restored in this process: other values of the same kind of sampling are fine; greedy decoding needs steps of
  another kind, which only a model could compile, and is refused in words, as is restoring for it."""
  path = launches["files"]["sampled"]
  gen, extra = Generator.restore(path, Sampling(0.8, 0.9), seed=1)
  assert gen.model is None and gen.pos == 0 and extra["args"].n_layers == 5
  gen.resample(Sampling(0.5, 0.5), seed=2)
  with pytest.raises(ValueError, match="without its model"): gen.resample(Sampling(0.0))
  with pytest.raises(ValueError, match="samples with"): Generator.restore(path, Sampling(0.0))
