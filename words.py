# Does a sample read as the corpus's language? The share of its words that are words of the training corpus: a
# measure of a newcomer's first sample that needs no judge (an untrained model's sample scores near zero).
from __future__ import annotations
import re
import numpy as np
import data
from tokenizer import load_tokenizer

WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")   # letters, with one apostrophe at most: "model", "don't"
PUNCTUATION = "\"'([{<`*-.,;:!?)]}>"

def words_of(text: str) -> list[str]:
  """The text's whitespace-separated pieces, punctuation around them stripped (a piece of punctuation alone is left
  out), lower case. A piece that is not a word of letters (an identifier like get_buffers, a number, a fragment like
  name5) stays in the list as it is: it counts against a sample."""
  pieces = (p.strip(PUNCTUATION) for p in text.split())
  return [p.lower() for p in pieces if p]

def corpus_words(data_dir, max_tokens: int = 1 << 21) -> set[str]:
  """The words (lower case) of a token dataset's training split (its first max_tokens), decoded with its own
  tokenizer."""
  meta = data.read_meta(data_dir)
  tok = load_tokenizer(f"{data_dir}/{meta['tokenizer']}")
  tokens = np.asarray(data.load_split(data_dir, "train")[:max_tokens])
  return {w for w in words_of(tok.decode(tokens.tolist())) if WORD.fullmatch(w)}

def known_share(text: str, words: set[str]) -> float:
  """The share of text's pieces (words_of) found in `words`, a set of words of letters (0 for an empty text)."""
  found = words_of(text)
  return sum(w in words for w in found) / len(found) if found else 0.0
