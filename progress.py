# Telling the user what a long phase is doing, so that a compile is never mistaken for a hang: a phase that runs
# longer than a moment says its name and counts its seconds on stderr until it ends.
from __future__ import annotations
import contextlib, sys, threading, time

AFTER = 2.0    # seconds a phase runs before it is shown: quick phases (a cached compile, a small load) stay silent
EVERY = 5.0    # seconds between count lines when stderr is not a terminal (a log file, a test)

@contextlib.contextmanager
def phase(what: str, after: float | None = None, quiet: bool = False):
  """Run the block; if it takes longer than `after` seconds (default AFTER), show `what ... N s` on stderr (on a
  terminal one line counting each second, elsewhere a line every EVERY seconds), then `what: done in N s`.
  quiet: just run the block (a step that is compiled already)."""
  if quiet:
    yield
    return
  after, done, shown = AFTER if after is None else after, threading.Event(), []
  t0, tty = time.perf_counter(), sys.stderr.isatty()
  def watch():
    if done.wait(after): return
    while True:
      shown.append(True)
      end = "\r" if tty else "\n"
      print(f"{what} ... {time.perf_counter() - t0:.0f} s", end=end, file=sys.stderr, flush=True)
      if done.wait(1.0 if tty else EVERY): return
  watcher = threading.Thread(target=watch, daemon=True)
  watcher.start()
  try: yield
  finally:
    done.set()
    watcher.join()
    # on a terminal, blanks clear the rest of the counting line
    if shown: print(f"{what}: done in {time.perf_counter() - t0:.1f} s" + " " * 8 * tty, file=sys.stderr, flush=True)
