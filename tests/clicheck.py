"""The check every command-line test makes of a failure: a non-zero exit, nothing on stdout, and one line on stderr
with no traceback. The seconds counted by a long phase (progress.py, e.g. loading a model) may come before it."""
import re

PHASE = re.compile(r".* \.\.\. \d+ s$|.*: done in [\d.]+ s$")

def one_line_error(code: int, out: str, err: str, message: str = "", prog: str = "") -> bool:
  lines = [line for line in err.strip().splitlines() if not PHASE.fullmatch(line)]
  return (code != 0 and out == "" and len(lines) == 1 and "Traceback" not in err and message in lines[0]
          and lines[0].startswith(f"{prog}: error: " if prog else ""))
