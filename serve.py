# An OpenAI-compatible HTTP server for one model on the standard library's http.server: GET /v1/models, POST
# /v1/completions and /v1/chat/completions (whole or streamed as server-sent events), and the chat page (chat.html)
# at /.
# Connections are served on threads; one KV cache: the thread that loaded the model runs the requests one at a time, in
# arrival order, and prefills only the part of each prompt that follows the tokens it shares with the cache (a chat
# that goes on re-reads none of its earlier turns).
from __future__ import annotations
import argparse, dataclasses, hmac, http.server, json, pathlib, queue, select, socket, sys, threading, time, uuid
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from chat import chat_format, encode_pieces, render_chat
from decode import Generator, Sampling, Stats, common_prefix, generate
from engine import stop_compile_workers

MAX_BODY = 1 << 20                                 # bytes of request body accepted; more is refused with 413
PAGE = pathlib.Path(__file__).with_name("chat.html")

class ApiError(Exception):
  """A refused request: its HTTP status and an OpenAI-style error body."""

  def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None):
    super().__init__(message)
    self.status, self.kind, self.param, self.code = status, kind, param, code

  def body(self) -> dict:
    return {"error": {"message": str(self), "type": self.kind, "param": self.param, "code": self.code}}

# ***** requests *****

NUMBER, INTEGER = (int, float), (int,)
FIELDS = {
  "model": (str, ), "prompt": (str, list), "messages": (list, ), "max_tokens": INTEGER,
  "max_completion_tokens": INTEGER, "temperature": NUMBER, "top_p": NUMBER, "top_k": INTEGER, "stop": (str, list),
  "seed": INTEGER, "stream": (bool, ), "stream_options": (dict, ), "user": (str, )
}
NEUTRAL = {"n": 1, "best_of": 1, "echo": False, "logprobs": 0, "presence_penalty": 0,
           "frequency_penalty": 0}  # accepted, nothing else
TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean", list: "an array", dict: "an object"}

def get(body: dict, name: str):
  """body[name] if it has the documented type, None when absent or null; other fields are ignored, as servers do."""
  v, types = body.get(name), FIELDS[name]
  if v is not None and (not isinstance(v, types) or isinstance(v, bool) and bool not in types):
    kind = "a number" if float in types else " or ".join(TYPE_NAMES[t] for t in types)
    raise ApiError(400, f"'{name}' must be {kind}, got {json.dumps(v)[:60]}", param=name)
  return v

@dataclass
class Job:
  """One generation on the worker. events gets ("text", delta)..., then ("done", finish_reason, usage) or
  ("error", message)."""
  ids: list[int]
  max_tokens: int
  sampling: Sampling
  seed: int | None
  stops: list[str]
  decoder: object                        # tokenizer.StreamDecoder: primed with the prompt (completions) or fresh (chat)
  stream: bool = False
  include_usage: bool = False
  events: queue.Queue = field(default_factory=queue.Queue)
  cancelled: threading.Event = field(default_factory=threading.Event)

def parse(body, tok, ctx: int, defaults: Sampling, seed: int | None, max_tokens: int, is_chat: bool) -> Job:
  """The Job a completions (is_chat=False) or chat completions request body asks for; ApiError(400) when it is wrong."""
  if not isinstance(body, dict): raise ApiError(400, "the request body must be a JSON object")
  for name, neutral in NEUTRAL.items():
    if body.get(name) not in (None, neutral):
      raise ApiError(400, f"'{name}' is not supported: only {json.dumps(neutral)}", param=name)
  try:
    ids = chat_ids(tok, get(body, "messages")) if is_chat else prompt_ids(tok, body)
    t, p, k = get(body, "temperature"), get(body, "top_p"), get(body, "top_k")
    s = Sampling(defaults.temperature if t is None else float(t), defaults.top_p if p is None else float(p),
                   defaults.top_k if k is None else k).check()
  except ValueError as e: raise ApiError(400, str(e)) from None   # a chat format or tokenizer refusal, a sampling value
  if not s.temperature <= 2:
    raise ApiError(400, f"temperature must be in [0, 2], got {s.temperature}", param="temperature")
  if s.top_k >= tok.vocab_size: s = dataclasses.replace(s, top_k=0)   # keeps every token: the same as off
  room = ctx - len(ids)
  if room < 1:
    raise ApiError(400, f"the prompt is {len(ids)} tokens, and the context holds {ctx}", code="context_length_exceeded")
  n = get(body, "max_completion_tokens") if is_chat and body.get("max_completion_tokens") is not None else get(
    body, "max_tokens")
  if n is not None and not 1 <= n <= room:
    raise ApiError(
      400, f"max_tokens must be in 1..{room}: the context holds {ctx} tokens and the prompt takes {len(ids)}, "
      f"got {n}", param="max_tokens", code="context_length_exceeded" if n > room else None)
  stops = get(body, "stop")
  stops = [stops] if isinstance(stops, str) else stops or []
  if len(stops) > 4 or not all(isinstance(x, str) and x for x in stops):
    raise ApiError(400, "'stop' must be a non-empty string or an array of at most 4 of them", param="stop")
  opts, seed_in = get(body, "stream_options") or {}, get(body, "seed")
  decoder = tok.decoder()
  if not is_chat:
    for i in ids:
      decoder.add(i)  # the continuation's first piece keeps its leading space, as generate.py prints it
  return Job(ids, n or min(max_tokens, room), s, seed if seed_in is None else seed_in, stops, decoder,
             bool(get(body, "stream")), opts.get("include_usage") is True)

def prompt_ids(tok, body: dict) -> list[int]:
  """A completion prompt: text (BOS first where the model wants it, BOS alone for ""), one text in an array, or
  token ids."""
  prompt = get(body, "prompt")
  if prompt is None: raise ApiError(400, "'prompt' is required", param="prompt")
  if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str): prompt = prompt[0]
  if isinstance(prompt, str): return tok.encode(prompt, bos=tok.add_bos) if prompt else [tok.bos_id]
  if prompt and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < tok.vocab_size for i in prompt):
    return prompt
  raise ApiError(400, f"'prompt' must be a string or a non-empty array of token ids below {tok.vocab_size}",
                 param="prompt")

def chat_ids(tok, messages: list | None) -> list[int]:
  """The conversation rendered with the checkpoint's chat template as generate.py --chat feeds it, ending in the
  prompt of the assistant's next answer."""
  if not messages: raise ApiError(400, "'messages' must be a non-empty array", param="messages")
  turns = []
  for i, m in enumerate(messages):
    role, content = (m.get("role"), m.get("content")) if isinstance(m, dict) else (None, None)
    if isinstance(content, list) and all(
        isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str) for c in content):
      content = "".join(c["text"] for c in content)
    if role not in ("system", "developer", "user", "assistant") or not isinstance(content, str):
      raise ApiError(400, f"messages[{i}] needs a 'role' (system, developer, user or assistant) and a text 'content'",
                     param="messages")
    turns.append({"role": "system" if role == "developer" else role, "content": content})
  system = turns[0]["content"] if turns[0]["role"] == "system" else None
  talk = turns[system is not None:]
  if [t["role"] for t in talk] != ["user", "assistant"] * (len(talk) // 2) + ["user"]:
    raise ApiError(
      400, "after an optional system message, user and assistant messages must alternate, from a user's to a user's",
      param="messages")
  fmt = chat_format(tok)
  history, _ = render_chat(tok, fmt, turns[:-1]) if len(talk) > 1 else ([], [])
  return history + encode_pieces(tok, fmt.turn(talk[-1]["content"], system if len(talk) == 1 else None, len(talk) == 1))

# ***** the worker: one model, one KV cache *****

class StopText:
  """Generated text let out as soon as it cannot be the start of a stop string, and cut before the first one that
  completes: no part of a stop string ever reaches the client."""
  def __init__(self, stops: list[str]): self.stops, self.text, self.sent = stops, "", 0

  def add(self, piece: str, final: bool = False) -> tuple[str, bool]:
    """The text that can go out now, and whether a stop string has completed (generation ends)."""
    self.text += piece
    cuts = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]   # none can start before sent
    end = min(cuts) if cuts else len(self.text) - (0 if final else self.held())
    out, self.sent = self.text[self.sent:end], end
    return out, bool(cuts)

  def held(self) -> int:
    tail = self.text[self.sent:]
    return max((k for s in self.stops for k in range(1, min(len(s), len(tail) + 1)) if tail.endswith(s[:k])), default=0)

class Halt(Exception):
  """Ends a generation early: a stop string completed, or the client went away."""

def line(r: dict) -> str:
  speed = f"{r['decode_tok_s']:.1f} tok/s" if r["decode_tok_s"] else "n/a"
  return (f"prompt {r['prompt_tokens']} tokens ({r['cached_tokens']} cached, prefill {r['prefill_s']:.2f} s), "
          f"{r['completion_tokens']} new (decode {speed}), {r['finish']}")

class Engine:
  """The Generator and its KV cache, and the queue of jobs that work() runs in turn. `cached` is the tokens the cache
  holds; report(record) is called after each job with its counts, timings and how it finished."""
  def __init__(self, gen: Generator, tok, report=None):
    self.gen, self.tok, self.cached = gen, tok, []
    self.report = report or (lambda r: print(line(r), file=sys.stderr, flush=True))
    self.jobs: queue.Queue = queue.Queue()

  def work(self, until=None):
    """Run the jobs as they come, until until() is true (or forever). Call it on the thread that loaded the model:
    tinygrad keeps its compile cache in one sqlite connection, which only the thread that opened it may use."""
    while until is None or not until():
      try: job = self.jobs.get(timeout=0.05)
      except queue.Empty: continue
      if job.cancelled.is_set(): continue          # its client left while it waited
      try: self.run(job)
      except Exception as e:
        job.events.put(("error", f"{type(e).__name__}: {e}"))  # this job fails; the cache stays usable

  def run(self, job: Job):
    gen, stats, new, stop = self.gen, Stats(), [], StopText(job.stops)
    # the last prompt token is always fed: its logits give the first new token
    keep = common_prefix(self.cached, job.ids[:-1])
    def on_token(tid: int):
      new.append(tid)
      text, done = stop.add(job.decoder.add(tid))
      if text: job.events.put(("text", text))
      if done: raise Halt("stop")
      if job.cancelled.is_set(): raise Halt("cancelled")
    try:
      gen.rewind(keep)
      gen.resample(job.sampling, job.seed)
      out = generate(gen, job.ids[keep:], job.max_tokens, self.tok.eos_id, stats, on_token)
      finish = "length" if len(out) == job.max_tokens else "stop"   # max_tokens fits the context, so else it is EOS
      if (text := stop.add(job.decoder.flush(), final=True)[0]): job.events.put(("text", text))
    except Halt as h: finish = str(h)
    finally: self.cached = (job.ids + new)[:gen.pos]     # the pending (last sampled) token is not in the cache
    usage = {"prompt_tokens": len(job.ids), "completion_tokens": len(new), "total_tokens": len(job.ids) + len(new),
             "prompt_tokens_details": {"cached_tokens": keep}}
    job.events.put(("done", finish, usage))
    self.report({**usage, "cached_tokens": keep, "finish": finish, "prefill_s": stats.prefill_time,
                 "decode_tok_s": stats.decode_steps / stats.decode_time if stats.decode_steps else 0.0})

# ***** HTTP *****

class Server(http.server.ThreadingHTTPServer):
  """The HTTP front: parses and checks each request on its connection's thread and queues it for the engine."""
  daemon_threads = True

  def __init__(self, address, engine: Engine, name: str, sampling: Sampling, seed: int | None, max_tokens: int,
               api_key: str | None):
    self.engine, self.name, self.sampling = engine, name, sampling
    self.seed, self.max_tokens, self.api_key = seed, max_tokens, api_key
    self.created = int(time.time())
    super().__init__(address, Handler)

  def url(self) -> str: return "http://{}:{}/".format(*self.server_address[:2])

  def model_card(self) -> dict:
    return {"id": self.name, "object": "model", "created": self.created, "owned_by": "local"}

class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"     # keep-alive; streams use chunked transfer encoding
  timeout = 120                     # seconds a connection may stall in a read or a write
  server: Server

  def do_GET(self): self.guard(self.get)
  def do_POST(self): self.guard(self.post)

  def guard(self, route):
    self.consumed = self.command == "GET"          # a request whose body is left unread cannot share its connection
    try:
      try: route()
      except ApiError as e:
        self.close_connection = self.close_connection or not self.consumed
        self.send_json(e.status, e.body())
    except OSError: self.close_connection = True   # the client went away (broken pipe, reset, timeout)

  def get(self):
    path = urlsplit(self.path).path
    if path in ("/", "/index.html"): return self.send_bytes(200, PAGE.read_bytes(), "text/html; charset=utf-8")
    self.authorize(path)
    if path == "/v1/models": return self.send_json(200, {"object": "list", "data": [self.server.model_card()]})
    if path == f"/v1/models/{self.server.name}": return self.send_json(200, self.server.model_card())
    raise ApiError(404, f"no such endpoint or model: GET {path}", "not_found_error")

  def post(self):
    path = urlsplit(self.path).path
    chat = {"/v1/completions": False, "/v1/chat/completions": True}.get(path)
    if chat is None: raise ApiError(404, f"no such endpoint: POST {path}", "not_found_error")
    self.authorize(path)
    s = self.server
    job = parse(self.read_json(), s.engine.tok, s.engine.gen.max_context, s.sampling, s.seed, s.max_tokens, chat)
    s.engine.jobs.put(job)
    try: (self.stream if job.stream else self.reply)(job, chat)
    finally: job.cancelled.set()                   # a no-op once it is done; stops it when this thread leaves early

  def authorize(self, path: str):
    key = self.server.api_key
    if key and path.startswith("/v1") and not hmac.compare_digest(
        self.headers.get("Authorization", "").encode(), f"Bearer {key}".encode()):
      raise ApiError(401, "a valid API key is required: send the header 'Authorization: Bearer KEY'",
                     code="invalid_api_key")

  def read_json(self):
    try: n = int(self.headers["Content-Length"])
    except (TypeError, ValueError): raise ApiError(411, "the request needs a Content-Length header") from None
    if n > MAX_BODY: raise ApiError(413, f"the request body is {n} bytes, over the limit of {MAX_BODY}")
    if n < 0: raise ApiError(400, f"bad Content-Length {n}")
    raw, self.consumed = self.rfile.read(n), True
    try: return json.loads(raw)
    except (ValueError, RecursionError) as e: raise ApiError(400, f"the body is not valid JSON ({e})") from None

  def client_gone(self) -> bool:
    try: return bool(select.select([self.connection], [], [], 0)[0]) and not self.connection.recv(1, socket.MSG_PEEK)
    except OSError: return True

  def events(self, job: Job):
    """The job's events as the engine makes them, up to its end; ConnectionResetError as soon as the client has gone."""
    while True:
      try: ev = job.events.get(timeout=0.2)
      except queue.Empty: ev = None
      if self.client_gone(): raise ConnectionResetError("the client closed the connection")
      if ev is None: continue
      if ev[0] == "error": raise ApiError(500, ev[1], "server_error")
      yield ev
      if ev[0] == "done": return

  def envelope(self, chat: bool, choices: list, stream: bool, rid: str, created: int,
               usage: dict | None = None) -> dict:
    obj = ("chat.completion.chunk" if stream else "chat.completion") if chat else "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": self.server.name, "choices": choices,
            **({"usage": usage} if usage is not None else {})}

  def reply(self, job: Job, chat: bool):
    text = ""
    for ev in self.events(job):
      if ev[0] == "text": text += ev[1]
    _, finish, usage = ev
    choice = {"index": 0, "message": {"role": "assistant", "content": text}} if chat else {"index": 0, "text": text}
    self.send_json(
      200,
      self.envelope(chat, [{**choice, "logprobs": None, "finish_reason": finish}], False, new_id(chat),
                    int(time.time()), usage))

  def stream(self, job: Job, chat: bool):
    """Server-sent events: one chunk per piece of text as soon as the tokenizer completes it, then data: [DONE]."""
    rid, created = new_id(chat), int(time.time())
    def chunk(text: str | None, finish: str | None = None, role: bool = False) -> dict:
      delta = {"role": "assistant", "content": text} if role else {"content": text} if text is not None else {}
      choice = {"index": 0, "delta": delta} if chat else {"index": 0, "text": text or ""}
      return self.envelope(chat, [{**choice, "logprobs": None, "finish_reason": finish}], True, rid, created)
    self.send_response(200)
    for k, v in (("Content-Type", "text/event-stream"), ("Cache-Control", "no-cache"), ("Transfer-Encoding",
                                                                                        "chunked")):
      self.send_header(k, v)
    self.end_headers()
    if chat: self.send_event(chunk("", role=True))
    try:
      for ev in self.events(job):
        if ev[0] == "text": self.send_event(chunk(ev[1]))
      self.send_event(chunk(None, ev[1]))
      if job.include_usage: self.send_event(self.envelope(chat, [], True, rid, created, ev[2]))
    except ApiError as e: self.send_event(e.body())   # the status line is already out
    self.send_chunk(b"data: [DONE]\n\n")
    self.send_chunk(b"")

  def send_event(self, obj: dict): self.send_chunk(b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n")
  def send_chunk(self, data: bytes): self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

  def send_json(self, status: int, obj: dict):
    self.send_bytes(status, json.dumps(obj, ensure_ascii=False).encode(), "application/json")

  def send_bytes(self, status: int, body: bytes, kind: str):
    self.send_response(status)
    self.send_header("Content-Type", kind)
    self.send_header("Content-Length", str(len(body)))
    if self.close_connection: self.send_header("Connection", "close")
    self.end_headers()
    self.wfile.write(body)

def new_id(chat: bool) -> str: return ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]

def make_server(gen: Generator, tok, args: argparse.Namespace, report=None) -> Server:
  """The server generate.py --serve runs, bound but not serving yet (serve_forever on a thread, then engine.work());
  request defaults are the command line's; the model's name is its file's or directory's (args.model)."""
  path = pathlib.Path(args.model)
  name = path.stem if path.is_file() else path.name
  return Server((args.host, args.port), Engine(gen, tok, report), name,
                Sampling(args.temperature, args.top_p, args.top_k), args.seed, args.max_new_tokens, args.api_key)

def serve(gen: Generator, tok, args: argparse.Namespace):
  server = make_server(gen, tok, args)
  open_to_all = args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key
  print(f"serving {server.name} at {server.url()} (chat page; OpenAI API under /v1)"
        + (": reachable from other machines with no --api-key" if open_to_all else ""), file=sys.stderr, flush=True)
  threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
  try: server.engine.work()
  except KeyboardInterrupt: pass
  finally:
    server.shutdown()
    server.server_close()
    stop_compile_workers()
