"""Chat formats: how a conversation is written for the model (ChatML, Llama 2's [INST]), recognised from a checkpoint's
chat template, and rendered to ids with a loss mask. generate.py --chat, serve.py and data.py --chat share it.
"""
from __future__ import annotations
import re
from dataclasses import dataclass

@dataclass
class ChatFormat:
  """How a turn is written for the model. turn(text, system) gives the pieces that open one user turn and the
  assistant's answer; `after_eos` what follows the answer's end-of-turn token. A piece is text, or a special
  token's name looked up in tokenizer.special_tokens, so user text can never inject a control token."""
  name: str
  default_system: str | None = None

  def turn(self, text: str, system: str | None, first: bool) -> list:
    system = system if system is not None else (self.default_system if first else None)
    if self.name == "chatml":
      sys_part = [("<|im_start|>",), f"system\n{system}", ("<|im_end|>",), "\n"] if system is not None else []
      return sys_part + [("<|im_start|>",), f"user\n{text}", ("<|im_end|>",), "\n", ("<|im_start|>",), "assistant\n"]
    # Llama 2 chat (Meta's chat_completion): [BOS] "[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST]"
    if system is not None: text = f"<<SYS>>\n{system.strip()}\n<</SYS>>\n\n{text.strip()}"
    return [("BOS",), f"[INST] {text.strip()} [/INST]"]

  def after_eos(self) -> list: return ["\n"] if self.name == "chatml" else []

def chat_format(tokenizer) -> ChatFormat:
  """Recognise the checkpoint's chat template from its text: ChatML (<|im_start|>) or Llama 2 ([INST]).
  Without a template, ChatML when the vocabulary has <|im_start|>, else Llama 2. A system prompt written into
  the template as a literal (SmolLM2 does this) becomes the default system prompt."""
  tmpl = getattr(tokenizer, "chat_template", None) or ""
  if "<|im_start|>" in tmpl or (not tmpl and "<|im_start|>" in tokenizer.special_tokens):
    m = re.search(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}<]*)<\|im_end\|>", tmpl)
    return ChatFormat("chatml", m.group(1) if m else None)
  if "[INST]" in tmpl or not tmpl: return ChatFormat("llama2")
  raise ValueError("this checkpoint's chat template is neither ChatML nor Llama 2 [INST]; --chat supports those two")

def encode_pieces(tokenizer, pieces: list) -> list[int]:
  ids: list[int] = []
  for p in pieces:
    if isinstance(p, str): ids += tokenizer.encode(p)
    elif p[0] == "BOS": ids.append(tokenizer.bos_id)
    elif p[0] in tokenizer.special_tokens: ids.append(tokenizer.special_tokens[p[0]])
    else: raise ValueError(f"the chat format needs the special token {p[0]}, which this tokenizer lacks")
  return ids

def render_chat(tok, fmt: ChatFormat, messages: list[dict]) -> tuple[list[int], list[int]]:
  """(ids, mask) of one conversation in the chat format `fmt` (chat_format), exactly as generate.py --chat
  feeds a dialogue to the model: each user turn through fmt.turn, each answer as the model samples it, then EOS and
  fmt.after_eos. mask is 1 on the answers and their EOS (what the model must learn to say), 0 elsewhere."""
  system = messages[0]["content"] if messages[0]["role"] == "system" else None
  turns = messages[1:] if system is not None else messages
  ids, mask = [], []
  for k in range(0, len(turns), 2):
    prompt = encode_pieces(tok, fmt.turn(turns[k]["content"], system if k == 0 else None, k == 0))
    answer = tok.encode(turns[k + 1]["content"]) + [tok.eos_id]
    after = encode_pieces(tok, fmt.after_eos())
    ids += prompt + answer + after
    mask += [0] * len(prompt) + [1] * len(answer) + [0] * len(after)
  return ids, mask
