# Writing so that a crash or a kill never leaves half a file: every file and checkpoint directory is built under a
# temporary name beside its destination and renamed into place (a rename is atomic on POSIX file systems).
from __future__ import annotations
import contextlib, os, pathlib, shutil, tempfile

def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask

@contextlib.contextmanager
def atomic_file(path):
  """A binary file to write `path` through, for content streamed in parts: when the block ends, `path` holds all of
  it (with the permissions a plain write gives); if the block fails, `path` keeps its old content."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f: yield f
    os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes it 0600
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise

def atomic_write(path, data: bytes) -> None:
  """`path` holds either its old content or `data`, never a part of it (with the permissions a plain write gives)."""
  with atomic_file(path) as f: f.write(data)

@contextlib.contextmanager
def new_dir(path):
  """Make the directory `path` (and missing parents) for the block; if the block fails, the directories it made
  are removed again with what was written into them, so a failed command leaves no empty or partial directory."""
  path = pathlib.Path(path)
  made = [d for d in (path, *path.parents) if not d.exists()]
  path.mkdir(parents=True, exist_ok=True)
  try: yield path
  except BaseException:
    if made: shutil.rmtree(made[-1], ignore_errors=True)   # the outermost one it made
    raise

def staging_dir(path) -> pathlib.Path:
  """An empty directory `.{name}.staging` beside `path` to build its new content in (then publish_dir); what an
  earlier, killed save left there is removed first."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.staging")
  shutil.rmtree(tmp, ignore_errors=True)
  tmp.mkdir()
  return tmp

def publish_dir(tmp: pathlib.Path, path, drop: tuple[str, ...] = ()) -> None:
  """Make the directory `tmp` become `path`. The files of an existing `path` that `tmp` lacks are carried over
  (hard links), except those named in `drop`; the old directory is set aside under `.{name}.old` and removed only
  after the swap, and recover_dir() puts it back if a crash came in between."""
  path = pathlib.Path(path)
  old = path.with_name(f".{path.name}.old")
  if path.is_dir():
    for f in path.iterdir():
      if f.is_file() and f.name not in drop and not (tmp / f.name).exists(): os.link(f, tmp / f.name)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
  os.replace(tmp, path)
  shutil.rmtree(old, ignore_errors=True)

def recover_dir(path) -> None:
  """After a crash between the two renames of publish_dir: the old directory becomes `path` again."""
  path = pathlib.Path(path)
  if not path.exists() and (old := path.with_name(f".{path.name}.old")).is_dir(): os.replace(old, path)
