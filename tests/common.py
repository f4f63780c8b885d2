"""What several test files share: the check every command-line test makes of a failure (a non-zero exit, nothing on
stdout, one line on stderr with no traceback; the seconds counted by a long phase of progress.py, e.g. loading a
model, may come before it), and the flags of a tiny train.py run."""
import re

PHASE = re.compile(r".* \.\.\. \d+ s$|.*: done in [\d.]+ s$")

def one_line_error(code: int, out: str, err: str, message: str = "", prog: str = "") -> bool:
  lines = [line for line in err.strip().splitlines() if not PHASE.fullmatch(line)]
  return (code != 0 and out == "" and len(lines) == 1 and "Traceback" not in err and message in lines[0]
          and lines[0].startswith(f"{prog}: error: " if prog else ""))

TINY = ["--preset", "tiny", "--dim", "32", "--n-layers", "1", "--n-heads", "2", "--n-kv-heads", "1", "--seq-len", "32",
        "--batch-size", "4", "--lr", "1e-2", "--warmup-steps", "5", "--eval-every", "1000", "--eval-steps", "2",
        "--sample-tokens", "0"]
