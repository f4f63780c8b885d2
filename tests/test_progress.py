"""progress.phase: a long phase is named and counted on stderr, a quick one is silent; the command lines name their
long phases (loading, compiling) before their first output."""
import contextlib, io, re, time
import pytest
import generate, progress

def test_a_long_phase_is_named_and_counted_a_quick_one_is_silent(monkeypatch, capsys):
  monkeypatch.setattr(progress, "EVERY", 0.1)
  with progress.phase("slow work", after=0.1): time.sleep(0.45)
  err = capsys.readouterr().err.splitlines()
  assert len(err) >= 3 and all(line.startswith("slow work ... ") and line.endswith(" s") for line in err[:-1])
  assert err[-1].startswith("slow work: done in ") and err[-1].endswith(" s")
  with progress.phase("quick work", after=1.0): pass
  with progress.phase("compiled already", after=0.0, quiet=True): time.sleep(0.2)
  assert capsys.readouterr().err == ""

def test_a_failing_phase_still_ends_and_raises(capsys):
  with pytest.raises(KeyError), progress.phase("doomed", after=0.0): time.sleep(0.05); raise KeyError("x")
  assert capsys.readouterr().err.splitlines()[-1].startswith("doomed: done in")

def test_generate_names_loading_and_compiling_before_the_text(monkeypatch, s260):
  """With every phase shown (AFTER 0), one stream holding stdout and stderr in order: the load and both compiles
  are announced before the tokens they hold up."""
  monkeypatch.setattr(progress, "AFTER", 0.0)
  both = io.StringIO()
  both.isatty = lambda: False
  with contextlib.redirect_stdout(both), contextlib.redirect_stderr(both):
    assert generate.main([str(s260[0]), "--tokenizer", str(s260[1]), "-p", "Once upon", "-n", "8", "-t", "0",
                          "--cache-dir", ""]) == 0   # no cached steps: the compiles show
  out = both.getvalue()
  at = lambda text: out.index(text)
  assert at(f"loading {s260[0]}") < at("loaded ") < at("Once upon") < at("compiling the prefill step") < \
    at("compiling the prefill step: done") < at("compiling the decode step") < at("[stopped")
  # the phases' lines interrupt the streamed text but leave it whole: greedy stories260K after "Once upon"
  text = re.sub(r"compiling the \w+ step[^\n]*\n", "", out[at("Once upon"):at("[stopped")])
  assert text.startswith("Once upon a time, there was")
