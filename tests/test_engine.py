"""engine.py's tricks on the installed tinygrad: each one still does what the project relies on it for."""
import math, os, re
import numpy as np, pytest
from tinygrad import Context, Device, Tensor, TinyJit, UOp
from tinygrad.helpers import colored
import engine, kernels, llama
from writers import small_args

pytestmark = pytest.mark.skipif(Device.DEFAULT != "CPU", reason="use_all_cores is about tinygrad's CPU runtime")

@pytest.fixture
def cores():
  """use_all_cores on, back to tinygrad's own way afterwards."""
  engine.use_all_cores()
  yield
  engine.use_all_cores(False)

def randn(*shape, seed=0) -> np.ndarray: return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)

def check(fn, expected, tol=1e-4, times=2):
  for _ in range(times): np.testing.assert_allclose(fn().numpy(), expected, rtol=tol, atol=tol)

@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tinygrad splits kernels over cores only with two or more")
def test_worker_threads_run_slices_of_one_kernel(cores):
  a, b = randn(1024, 1024), randn(1024, 512, seed=1)
  before = engine.worker_slices()
  check(lambda: Tensor(a) @ Tensor(b), a @ b, 1e-3, times=3)   # ~50 ms a slice: a sleeping worker wakes in time
  assert engine.worker_slices() > before

def test_with_all_cores_off_the_calling_thread_runs_every_slice():
  engine.use_all_cores(False)
  a, b = randn(1024, 1024), randn(1024, 512, seed=1)
  before = engine.worker_slices()
  check(lambda: Tensor(a) @ Tensor(b), a @ b, 1e-3)
  assert engine.worker_slices() == before

def test_matmul_and_reductions_equal_numpy_with_threads_on(cores):
  a, b, v = randn(1024, 1024), randn(1024, 1024, seed=1), randn(1024, seed=2)
  ta, tb = Tensor(a).realize(), Tensor(b).realize()
  check(lambda: ta @ tb, a @ b, 1e-3)
  check(lambda: ta @ Tensor(v), a @ v, 1e-3)
  check(lambda: ta.sum(0), a.sum(0), 1e-3)
  check(lambda: (ta.T @ tb).relu().max(1), np.maximum(a.T @ b, 0).max(1), 1e-3)

def test_a_jit_replay_with_threads_on_gives_the_eager_result(cores):
  w = Tensor(randn(512, 384)).realize()
  step = TinyJit(lambda x: (x @ w).tanh().realize())
  for i in range(4):
    x = randn(64, 512, seed=10 + i)
    np.testing.assert_allclose(step(Tensor(x)).numpy(), np.tanh(x @ w.numpy()), rtol=1e-4, atol=1e-4)

@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="counts this process's threads in /proc")
def test_use_all_cores_twice_starts_no_more_threads(cores):
  threads = len(os.listdir("/proc/self/task"))
  engine.use_all_cores()
  assert len(os.listdir("/proc/self/task")) == threads
  a = randn(300, 200)
  check(lambda: Tensor(a) @ Tensor(a.T), a @ a.T, 1e-3)

@pytest.fixture
def matvec_options():
  engine.use_kernel_options()
  yield
  engine.use_kernel_options(False)

@pytest.mark.parametrize("rows", [3072, 960, 24])
def test_lane_sum_matvecs_with_written_down_options_equal_numpy(matvec_options, rows):
  # 3072 rows: the heuristic would upcast them by 3; 24: too few rows to split over cores
  w, x = randn(rows, 576), randn(1, 1, 576, seed=1)
  np.testing.assert_allclose(kernels.matvec_linear(Tensor(w), Tensor(x)).numpy(), x @ w.T, rtol=1e-4, atol=1e-4)

def test_the_options_are_applied_one_row_at_a_time(matvec_options, capsys):
  # two kernels compiled at once go to tinygrad's compile worker processes, one alone is compiled here: both ways
  w, x = Tensor(randn(3072, 768)).realize(), Tensor(randn(1, 1, 768, seed=1)).realize()
  w2, x2 = Tensor(randn(1536, 640)).realize(), Tensor(randn(1, 1, 640, seed=1)).realize()
  capsys.readouterr()
  with Context(DEBUG=2):
    Tensor.realize(kernels.matvec_linear(w, x), kernels.matvec_linear(w2, x2))
    kernels.matvec_linear(w[:2400], x).realize()
  names = set(re.findall(r"\b(r_[0-9_]+)\b", re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)))
  # rows split over n cores, then the inputs in steps of 8 lanes; the heuristic's: r_(rows/3/n)_n_3_(K/8)_8
  for rows, steps in ((3072, 96), (1536, 80), (2400, 96)):
    assert any(re.fullmatch(rf"r_{rows // n}_{n}_{steps}_8|r_{rows}_{steps}_8", name) for name in names
               for n in range(2, 33)), (rows, names)

def colour(name: str) -> str:
  """The escape code tinygrad's DEBUG output paints a kernel axis of this colour name with (axis_colors)."""
  return re.match(r"\x1b\[(\d+)m", colored("x", name))[1]

def axes(line: str) -> list[tuple[str, str]]:
  """A kernel name's axes from DEBUG=2's line for it: (colour code, size) in order."""
  return re.findall(r"\x1b\[(\d+)m([^\x1b_]+)\x1b\[0m", line)

@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tinygrad splits kernels over cores only with two or more")
def test_a_kernel_over_a_symbolic_length_is_split_over_cores(matvec_options, capsys):
  # 3 heads (no two cores divide them: the heuristic leaves such a kernel on one core) x a symbolic length x 64
  c, w = randn(3, 40, 64), randn(3, 1, 64, seed=1)
  cache, wt, pos = Tensor(c).realize(), Tensor(w).realize(), UOp.variable("pos", 1, 40)
  step = TinyJit(lambda p: (cache[:, :p] * wt).sum(1).realize())
  capsys.readouterr()
  with Context(DEBUG=2):
    for i in (5, 9, 17):
      np.testing.assert_allclose(step(pos.bind(i)).numpy(), (c[:, :i] * w).sum(1), rtol=1e-5, atol=1e-5)
  # the kernel's axes as DEBUG=2 paints them: (colour, size); the 64 outputs of each head split over the cores
  # (THREAD, bright blue) and upcast (yellow: outputs per cache row read), 4 by the heuristic and 4 by reused_rows
  runs = re.findall(r"\*\*\* CPU\s+\d+\S* (r\S*pos)", capsys.readouterr().out)
  seen = {tuple(axes(name)) for name in runs}
  assert len(seen) == 1, seen
  (_, heads), *outputs = seen.pop()   # the symbolic length last, uncaptured
  sizes = {code: math.prod(int(n) for c, n in outputs if c == code) for code in (colour("BLUE"), colour("yellow"))}
  assert heads == "3" and math.prod(int(n) for _, n in outputs) == 64, outputs
  assert sizes[colour("BLUE")] >= 2 and sizes[colour("yellow")] >= 16, outputs

def one_kernel(capsys, make) -> tuple[np.ndarray, str]:
  """The values of make() and DEBUG=2's line for the one kernel realising them."""
  capsys.readouterr()
  with Context(DEBUG=2): out = make().realize()
  [line] = re.findall(r"\*\*\* CPU\s+\d+\S* (r\S*)", capsys.readouterr().out)
  return out.numpy(), line

@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tinygrad splits kernels over cores only with two or more")
def test_a_product_read_along_its_reduction_is_tiled(matvec_options, capsys):
  """x @ Wᵀ over several tokens, both read along the reduction (engine.dot_tiles): 4 × 4 outputs per step (yellow:
  upcast), the reduction unrolled by 4 (magenta), split over the cores (bright blue); numpy's product."""
  x, w = randn(32, 576), randn(1536, 576, seed=1)
  tx, tw = Tensor(x).realize(), Tensor(w).realize()
  out, line = one_kernel(capsys, lambda: tx @ tw.T)
  np.testing.assert_allclose(out, x @ w.T, rtol=1e-4, atol=1e-4)
  sizes = {c: [n for code, n in axes(line) if code == colour(c)] for c in ("yellow", "magenta", "BLUE")}
  assert sizes["yellow"] == ["4", "4"] and sizes["magenta"] == ["4"] and sizes["BLUE"], axes(line)

@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tinygrad splits kernels over cores only with two or more")
def test_a_batched_product_is_tiled_along_each_operands_own_axis(matvec_options, capsys):
  """q·kᵀ over a batch, as attention's scores in training: the 4 × 4 tile is along the queries (64) and the keys (48),
  the axes each operand varies along alone, not along the batch (8), which both share: 16 and 12 groups of 4 remain,
  the batch stays whole (split over cores at most); numpy's product."""
  q, k = randn(8, 2, 64, 16), randn(8, 2, 48, 16, seed=1)
  tq, tk = Tensor(q).realize(), Tensor(k).realize()
  out, line = one_kernel(capsys, lambda: (tq.unsqueeze(3) * tk.unsqueeze(2)).sum(-1))
  np.testing.assert_allclose(out, q @ k.transpose(0, 1, 3, 2), rtol=1e-4, atol=1e-4)
  sizes = [n for _, n in axes(line)]
  assert "16" in sizes and "12" in sizes and "48" not in sizes and "64" not in sizes, sizes

@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="tinygrad splits kernels over cores only with two or more")
def test_a_product_with_one_read_along_an_output_is_tiled_4_by_16(matvec_options, capsys):
  """gᵀ·x over the tokens, a weight's gradient (engine.outer_tiles): x is read along its output axis, so 16 of its
  values times 4 of g per step (yellow: upcast), the reduction unrolled by 4 (magenta), split over the cores (bright
  blue); numpy's product."""
  g, x = randn(256, 96), randn(256, 64, seed=1)
  tg, tx = Tensor(g).realize(), Tensor(x).realize()
  out, line = one_kernel(capsys, lambda: tg.T @ tx)
  np.testing.assert_allclose(out, g.T @ x, rtol=1e-4, atol=1e-4)
  sizes = {c: [n for code, n in axes(line) if code == colour(c)] for c in ("yellow", "magenta", "BLUE")}
  assert sorted(sizes["yellow"]) == ["16", "4"] and sizes["magenta"] == ["4"] and sizes["BLUE"], axes(line)

def test_other_kernels_with_matvec_options_on_equal_numpy(matvec_options):
  a, b = randn(64, 96), randn(96, 40, seed=1)
  out = (Tensor(a) @ Tensor(b)).relu().sum(1).numpy()
  np.testing.assert_allclose(out, np.maximum(a @ b, 0).sum(1), rtol=1e-4, atol=1e-4)

class Accumulator:
  """State a step reads and updates, lazy until something realises it (like AdamW's zero moments)."""
  def __init__(self): self.total = Tensor.zeros(3)

@pytest.mark.parametrize("realised", [True, False])
def test_capture_at_once_captures_on_the_first_call_and_needs_its_state_realised(realised):
  acc, w, ran = Accumulator(), Tensor(randn(3, 3)).realize(), []
  def body(x: Tensor) -> Tensor:
    ran.append(1)   # Python runs the body only when TinyJit runs it eagerly or captures it
    return acc.total.assign(acc.total + x @ w).realize()
  step = engine.capture_at_once(body, *([acc] if realised else []))
  expect, before = np.zeros(3, np.float32), None
  for i in range(4):
    if i == 1: before = engine.compiled_kernels()
    x = randn(3, seed=i)
    got, expect = step(Tensor(x)).numpy(), expect + x @ w.numpy()
    if not realised: continue
    np.testing.assert_allclose(got, expect, rtol=1e-5)
  assert len(ran) == 1 and engine.compiled_kernels() == before   # call 1 captured; calls 2..4 replay it
  # left lazy, the zeros are part of the capture: every replay starts the sum again (why capture_at_once realises)
  if not realised: np.testing.assert_allclose(got, x @ w.numpy(), rtol=1e-5)

@pytest.fixture
def cpu_graph():
  was = engine.use_cpu_graph()
  yield
  engine.use_cpu_graph(was)

def test_cpu_graph_replays_a_step_with_a_symbolic_position_like_the_executor(cpu_graph, cores):
  """A step writing a cache at a bound symbolic position and reading it back (as the decode step does), and a product
  big enough to be split over cores, captured into a CPUGraph: every call equals numpy, with new inputs and positions,
  the kernels went into a graph and the worker threads ran slices of it."""
  cache, w = Tensor.zeros(8, 4).contiguous().realize(), Tensor(randn(4, 4)).realize()
  big = Tensor(randn(512, 384)).realize()
  pos = UOp.variable("pos", 0, 7)
  def step(x: Tensor, y: Tensor, p: UOp) -> tuple[Tensor, Tensor]:
    new = engine.write_then_read(cache, cache[p:p + 1], (x @ w).tanh())
    return (new[:p + 1] * 2).sum(0).realize(), (y @ big).realize()
  before, jit = engine.GRAPHED["kernels"], TinyJit(step)
  ref, slices = np.zeros((8, 4), np.float32), engine.worker_slices()
  for i in range(6):
    x, y = randn(1, 4, seed=20 + i), randn(256, 512, seed=30 + i)
    ref[i] = np.tanh(x @ w.numpy())[0]
    got, prod = jit(Tensor(x), Tensor(y), pos.bind(i))
    np.testing.assert_allclose(got.numpy(), 2 * ref[:i + 1].sum(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prod.numpy(), y @ big.numpy(), rtol=1e-4, atol=1e-4)
  assert engine.GRAPHED["kernels"] > before
  if (os.cpu_count() or 1) >= 2: assert engine.worker_slices() > slices

def test_a_block_is_scheduled_once_for_all_layers():
  """A forward schedules the block's kernels once however many layers the model has (llama.scheduled_block): four
  more layers add a call each to the schedule, not four blocks' worth of kernels; and the block as a program of its
  own gives what the block inlined into the forward (training=True) gives."""
  made, x = {}, Tensor([[1, 2, 3, 4]])
  for n, dim in ((2, 48), (6, 64)):   # other widths: the second model reuses none of the first one's schedules
    model = llama.Transformer(small_args(n_layers=n, dim=dim))
    before = engine.kernels_scheduled()
    out = model(x).realize()
    made[n] = engine.kernels_scheduled() - before
  np.testing.assert_allclose(out.numpy(), model(x, training=True).numpy(), rtol=1e-5, atol=1e-5)
  per_block = made[2] - 2   # at least the block's kernels: the 2-layer forward's schedules less its two calls
  assert made[6] - made[2] <= 4 < per_block, made

@pytest.mark.parametrize("product", [engine.classifier_product, engine.trained_product])
def test_products_for_training_give_the_products_gradients(product):
  """engine.classifier_product and engine.trained_product are x @ wᵀ, and their hand-written backward gives numpy's
  gradients of a weighted sum of it: r @ w for x, rᵀx (summed over batch and tokens) for w."""
  x, w, r = randn(2, 5, 8, seed=1), randn(12, 8, seed=2), randn(2, 5, 12, seed=3)
  tx, tw = Tensor(x), Tensor(w)
  out = product(tx, tw)
  gx, gw = (out * Tensor(r)).sum().gradient(tx, tw)
  np.testing.assert_allclose(out.numpy(), x @ w.T, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gx.numpy(), r @ w, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(gw.numpy(), r.reshape(-1, 12).T @ x.reshape(-1, 8), rtol=1e-5, atol=1e-5)
