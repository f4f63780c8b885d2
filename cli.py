# What the command lines share: bad input and Ctrl-C reported in one line on stderr with an exit code (never a
# traceback), and the benchmarks' interleaved timing rounds.
from __future__ import annotations
import sys, time
from typing import Callable

def one_line_errors(prog: str, run: Callable[[], int | None], errors: tuple = (ValueError, OSError)) -> int:
  """run()'s exit code; an expected error prints `prog: error: ...` (1), Ctrl-C `prog: interrupted` (130), and a
  machine where tinygrad finds no device to run on (clang missing) says so (1)."""
  try: return run() or 0
  except errors as e:
    print(f"{prog}: error: {e}", file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except RuntimeError as e:   # tinygrad's words when no backend starts; on a CPU that is a missing clang
    if str(e) != "no usable devices": raise
    print(f"{prog}: error: no tinygrad device could start (its CPU backend compiles with clang: is clang installed? "
          "README, Set up)", file=sys.stderr)
    return 1

# engine.use_cpu_graph settings a benchmark compares (--graph): the suffix of a run's name -> on
GRAPH = {"on": {"": True}, "off": {", no CPU graph": False}, "both": {", no CPU graph": False, ", CPU graph": True}}

def add_benchmark_flags(parser, unit: str) -> None:
  """--cores (engine.use_all_cores: all, one, or both interleaved), --graph (engine.use_cpu_graph, the same three)
  and --time-limit, as both benchmarks take them."""
  parser.add_argument("--cores", choices=("all", "one", "both"), default="all",
                      help="engine.use_all_cores: multi-core CPU kernels on all cores (all), on one (one), both "
                      "interleaved")
  parser.add_argument("--graph", choices=("on", "off", "both"), default="on",
                      help="engine.use_cpu_graph: replay the compiled steps' CPU kernels in one loop (on, as the "
                      "commands do), through tinygrad's executor (off), both interleaved")
  parser.add_argument("--time-limit", type=float, default=0, help=f"start no timed {unit} after this many seconds "
                      f"since the start (one always runs); 0: none")

def interleaved(runs: dict[str, Callable], rounds: int, time_limit: float, t_start: float,
                unit: str) -> dict[str, list]:
  """Each contender once per round, so that a noisy shared machine slows all of them alike; no round starts after
  time_limit seconds since t_start (0: no limit), but one always runs."""
  times: dict[str, list] = {k: [] for k in runs}
  for r in range(rounds):
    if r and time_limit and time.perf_counter() - t_start > time_limit:
      print(f"--time-limit of {time_limit:.0f} s reached: {r} timed {unit} instead of {rounds}")
      break
    for name, f in runs.items(): times[name].append(f())
  return times
