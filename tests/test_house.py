"""The layout's rules, checked on the source itself: imports run one way (no cycle among the top-level files, no import
inside a function), tinygrad's internals are reached from engine.py alone, and every file stays within 400 lines
(the benchmarks excepted) and 120 columns."""
import ast, pathlib, re
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FILES = sorted(ROOT.glob("*.py"))
MODULES = {f.stem for f in FILES}

def project_imports(tree: ast.AST) -> list[tuple[str, ast.AST]]:
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import): found += [(a.name.split(".")[0], node) for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      found.append((node.module.split(".")[0], node))
  return [(m, n) for m, n in found if m in MODULES]

def graph() -> dict[str, set[str]]:
  return {f.stem: {m for m, _ in project_imports(ast.parse(f.read_text()))} for f in FILES}

def test_the_files_are_found():
  assert {"llama", "decode", "generate", "train", "engine"} <= MODULES

def test_import_graph_has_no_cycle():
  g, state = graph(), {}
  def visit(m: str, path: list[str]):
    if state.get(m) == "done": return
    assert state.get(m) != "open", f"import cycle: {' -> '.join(path + [m])}"
    state[m] = "open"
    for n in sorted(g[m]): visit(n, path + [m])
    state[m] = "done"
  for m in sorted(g): visit(m, [])

def test_no_import_inside_a_function():
  inside = []
  for f in FILES + sorted((ROOT / "tests").glob("*.py")):
    for fn in ast.walk(ast.parse(f.read_text())):
      if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
        inside += [
          f"{f.name}:{n.lineno} in {fn.name}()" for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))
        ]
  assert not inside, f"imports inside functions: {inside}"

# the programs: command lines that nothing imports (data.py is a library that also runs as a command)
PROGRAMS = {"train", "generate", "eval", "scaling", "bench_train", "bench_generate"}

def test_libraries_never_import_a_program():
  g = graph()
  assert PROGRAMS - {"scaling"} <= set(g)
  for m, deps in g.items():
    assert not deps & PROGRAMS, f"{m}.py imports the program(s) {deps & PROGRAMS}"

# what only engine.py may touch: tinygrad's UOp graph, its engine and runtime modules, TinyJit's counter, AdamW's
# state attributes, the DISK device's mapping, tqdm's start time, and Python's pure-Python unpickler
INTERNALS = re.compile(
  r"\.uop\b|tinygrad\.(engine|runtime|codegen|uop|renderer)\b|\.cnt\b|\.b[12]_t\b|\.madvise\(|_Unpickler|"
  r"\bfunction\(precompile|opt\.optimizers\b|\bbar\.st\b")

@pytest.mark.parametrize("f", FILES + sorted((ROOT / "tests").glob("*.py")), ids=lambda f: f.name)
def test_tinygrad_internals_only_in_engine(f):
  if f.name in ("engine.py", "test_house.py"): return
  for i, line in enumerate(f.read_text().splitlines(), 1):
    code = line.split("#")[0]
    assert not INTERNALS.search(
      code), f"{f.name}:{i} reaches into tinygrad's internals (put it behind engine.py): {line.strip()}"

@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_file_lengths(f):
  lines = f.read_text().splitlines()
  if not f.name.startswith("bench_"): assert len(lines) <= 400, f"{f.name} has {len(lines)} lines: two concerns?"
  assert lines[0].startswith(("#", '"""')), f"{f.name} does not open with a comment saying what it holds"

@pytest.mark.parametrize("f", FILES + sorted((ROOT / "tests").glob("*.py")), ids=lambda f: f.name)
def test_lines_within_120_columns(f):
  wide = [i for i, line in enumerate(f.read_text().splitlines(), 1) if len(line) > 120]
  assert not wide, f"{f.name}: lines {wide} are wider than 120 columns"
