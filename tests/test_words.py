"""words.py: the share of a sample's words that are words of the corpus, on texts whose answer is known by hand."""
import numpy as np
import data, words

def test_pieces_and_share_by_hand():
  assert words.words_of('He said: "don\'t (stop)" -- get_buffers, name5.') == \
    ["he", "said", "don't", "stop", "get_buffers", "name5"]
  vocab = {"he", "said", "don't", "stop", "get", "buffers", "name"}
  assert words.known_share('He said: "don\'t (stop)" -- get_buffers, name5.', vocab) == 4 / 6
  assert words.known_share("", vocab) == 0.0 and words.known_share("-- ... !", vocab) == 0.0

def test_corpus_words_are_the_letter_words_of_the_training_split(tmp_path, shakespeare):
  """Against the dataset's own text: every letter word of the decoded training split, nothing else."""
  got = words.corpus_words(shakespeare)
  tok = data.load_tokenizer(shakespeare / "tokenizer.model")
  text = tok.decode(np.asarray(data.load_split(shakespeare, "train")).tolist())
  assert "king" in got and "romeo" in got and all(words.WORD.fullmatch(w) for w in got)
  pieces = {w.strip(words.PUNCTUATION).lower() for w in text.split()}
  assert got == {p for p in pieces if p.replace("'", "").isalpha() and p.count("'") <= 1 and p[0] != "'"}
  assert "thou" in got and words.known_share("Thou art a king, my lord.", got) == 1.0
