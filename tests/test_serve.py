"""serve.py through the real openai client, raw HTTP and headless Chromium: greedy output equals generate.py's (and
llama2.c's golden text), streaming equals the whole answer, stop strings never leak, concurrent clients get the texts
they get alone, a client leaving mid-stream stops its generation, bad requests get their status and the server goes on,
a chat that goes on reuses its cached prefix, and the chat page streams the model's answer in a browser."""
import base64, http.client, json, os, pathlib, re, shutil, signal, socket, struct, subprocess, sys, threading, time
import urllib.error, urllib.parse, urllib.request
import pytest, openai
import checkpoint, kernels, generate as G, serve
import decode

ROOT = pathlib.Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium")
STORY = "Once upon a time, there was a dog named Max 🐶. Max"    # an emoji: byte-fallback tokens in the prompt
HELLO = "Hi, who are you?"
FRANCE = "What is the capital of France?"

def cli(*args, stdin: str = "") -> subprocess.Popen:
  """generate.py started with its whole input already waiting in a pipe."""
  r, w = os.pipe()
  os.write(w, stdin.encode())
  os.close(w)
  proc = subprocess.Popen([sys.executable, str(ROOT / "generate.py"), *map(str, args)], stdin=r, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT)
  os.close(r)
  return proc

def finish(proc: subprocess.Popen) -> str:
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err
  return out

class Live:
  """A server on a free local port, built as generate.py --serve builds it. Its connections are served on threads;
  its model runs on this thread (tinygrad's), inside run()."""
  def __init__(self, *argv: str):
    args = G.parse_args([*argv, "--serve", "--port", "0", "-t", "0"])
    model, self.tok = checkpoint.load(args.model, tokenizer=args.tokenizer)
    gen = decode.Generator(kernels.use_decode_kernels(model), args.max_context or min(model.args.max_seq_len, 2048),
                           decode.Sampling(0.0))
    self.records: list[dict] = []
    self.server = serve.make_server(gen, self.tok, args, self.records.append)
    threading.Thread(target=self.server.serve_forever, daemon=True).start()
    self.url, self.name = self.server.url(), self.server.name
    self.client = openai.OpenAI(base_url=self.url + "v1", api_key="none", max_retries=0, timeout=600)

  def run(self, fn, *args):
    """fn(*args) on a thread of its own while this thread serves the model; its result, or its exception raised here."""
    out = {}
    def target():
      try: out["value"] = fn(*args)
      except BaseException as e: out["error"] = e
    t = threading.Thread(target=target)
    t.start()
    self.server.engine.work(until=lambda: not t.is_alive())
    if "error" in out: raise out["error"]
    return out["value"]

  def complete(self, stream=False, **kw):
    return self.run(
      lambda: collect(self.client.completions.create(model=self.name, stream=stream, **kw), stream, False))

  def chat(self, messages, stream=False, **kw):
    return self.run(lambda: collect(
      self.client.chat.completions.create(model=self.name, messages=messages, stream=stream, **kw), stream, True))

  def close(self):
    self.server.shutdown()
    self.server.server_close()

def collect(r, stream: bool, chat: bool) -> tuple[str, str, list[str]]:
  """(text, finish_reason, the streamed pieces) of a response, streamed or not."""
  if not stream:
    c = r.choices[0]
    return (c.message.content if chat else c.text), c.finish_reason, []
  pieces, reason = [], None
  for ev in r:
    for c in ev.choices:
      piece = c.delta.content if chat else c.text
      if piece: pieces.append(piece)
      reason = c.finish_reason or reason
  return "".join(pieces), reason, pieces

def say(text: str) -> list[dict]: return [{"role": "user", "content": text}]

@pytest.fixture(scope="module")
def golden(fixtures) -> str:
  return re.search(r"```text\n(.*?)```", (fixtures / "README.md").read_text(), re.S).group(1)

@pytest.fixture(scope="module")
def references(s260):
  """generate.py's own greedy output (separate processes, started first so that they run beside the server's compiles):
  plain mode continuing STORY, and --chat answering HELLO."""
  m, t = s260
  return {"plain": cli(m, "--tokenizer", t, "-p", STORY, "-n", 40, "-t", 0),
          "chat": cli(m, "--tokenizer", t, "--chat", "-n", 20, "-t", 0, stdin=HELLO + "\n")}

@pytest.fixture(scope="module")
def live(s260, references):
  srv = Live(str(s260[0]), "--tokenizer", str(s260[1]), "-n", "9")   # -n 9 (and -t 0): what a request leaves out
  yield srv
  srv.close()

# ***** stories260K *****

def test_models_and_golden_completion(live, golden):
  """/v1/models lists the checkpoint; greedy from BOS alone ("" as prompt) is llama2.c's reference text."""
  assert [m.id for m in live.run(lambda: list(live.client.models.list()))] == ["stories260K"]
  r = live.run(lambda: live.client.completions.create(model="stories260K", prompt="", max_tokens=200, temperature=0))
  assert r.object == "text_completion" and r.choices[0].text + "\n" == golden and r.choices[0].finish_reason == "length"
  assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (1, 200, 201)

def test_completion_equals_generate_cli(live, references):
  """A prompt's greedy continuation, whole and streamed piece by piece, is what generate.py prints after the prompt."""
  printed = finish(references["plain"])
  text, reason, _ = live.complete(prompt=STORY, max_tokens=40, temperature=0)
  streamed, sreason, pieces = live.complete(stream=True, prompt=STORY, max_tokens=40, temperature=0)
  assert printed == STORY + text + "\n" and (reason, sreason) == ("length", "length")
  assert streamed == text and len(pieces) >= 20           # flushed token by token, not as one block

def test_chat_equals_generate_cli(live, references):
  """The greedy chat answer through the API is generate.py --chat's answer to the same line (the same template)."""
  printed = finish(references["chat"])
  text, _, _ = live.chat(say(HELLO), max_tokens=20, temperature=0)
  streamed, _, pieces = live.chat(say(HELLO), stream=True, max_tokens=20, temperature=0)
  assert printed == f"> {HELLO}\n" + text + "\n" and streamed == text and len(pieces) > 5   # piped: the turn marked

def test_stop_strings(live, golden):
  """The text ends before the first stop string; streamed, no piece of it is sent even though it spans tokens; a
  held-back prefix of a stop string that never completes is sent after all."""
  for stream in (False, True):
    text, reason, pieces = live.complete(stream=stream,
                                         prompt="",
                                         max_tokens=60,
                                         temperature=0,
                                         stop=["park", "named Lily"])
    assert (text, reason) == (golden[:golden.index("named Lily")], "stop")   # streamed: all that was sent
    text, reason, _ = live.complete(stream=stream, prompt="", max_tokens=9, temperature=0, stop=["little boy"])
    assert (text, reason) == ("Once upon a time, there was a little", "length")

def test_prefix_reuse_in_chat(live):
  """A conversation that goes on is prefilled from where it leaves the cache, and answers as if prefilled whole."""
  first = live.run(
    lambda: live.client.chat.completions.create(model=live.name, messages=say(HELLO), max_tokens=20, temperature=0))
  talk = say(HELLO) + [{"role": "assistant", "content": first.choices[0].message.content}] + say("Tell me a story.")
  warm = live.run(
    lambda: live.client.chat.completions.create(model=live.name, messages=talk, max_tokens=20, temperature=0))
  assert warm.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
  live.complete(prompt="Tom", max_tokens=1)                # the cache now shares only BOS with the conversation
  cold = live.run(
    lambda: live.client.chat.completions.create(model=live.name, messages=talk, max_tokens=20, temperature=0))
  assert cold.usage.prompt_tokens_details.cached_tokens == 1 and cold.usage.prompt_tokens == warm.usage.prompt_tokens
  assert cold.choices[0].message.content == warm.choices[0].message.content

def test_two_clients_at_once_get_their_texts(live):
  """A greedy stream and a seeded sampled chat sent together are served in turn and get what each gets alone; the seed
  fixes the sampled text, another seed changes it."""
  a = lambda: collect(
    live.client.completions.create(model=live.name, prompt="Lily and Tom", max_tokens=40, temperature=0, stream=True),
    True, False)
  b = lambda seed=7: collect(
    live.client.chat.completions.create(
      model=live.name, messages=say("Tell me a story."), max_tokens=40, temperature=1.0, top_p=0.9, seed=seed), False,
    True)
  alone = live.run(a), live.run(b)
  def together():
    out = [None, None]
    threads = [threading.Thread(target=lambda k=k, f=f: out.__setitem__(k, f())) for k, f in enumerate((a, b))]
    for t in threads: t.start()
    for t in threads: t.join()
    return out
  assert live.run(together) == list(alone) and live.run(together) == list(alone)
  assert live.run(b, 8)[0] != alone[1][0]

def test_client_leaving_mid_stream_stops_generation(live):
  def leave():
    conn = http.client.HTTPConnection(live.server.server_address[0], live.server.server_address[1], timeout=60)
    conn.request("POST", "/v1/completions",
                 json.dumps({"prompt": "", "max_tokens": 500, "temperature": 0, "stream": True}),
                 {"Content-Type": "application/json"})
    r = conn.getresponse()
    assert r.status == 200 and r.getheader("Content-Type") == "text/event-stream"
    events = 0
    while events < 3: events += r.fp.readline().startswith(b"data: ")
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()
    deadline = time.time() + 30
    while len(live.records) == n:
      assert time.time() < deadline, "the generation did not end"
      time.sleep(0.05)
  n = len(live.records)
  live.run(leave)
  assert live.records[-1]["finish"] == "cancelled" and live.records[-1]["completion_tokens"] < 100
  assert live.complete(prompt="") == (
    "Once upon a time, there was a little", "length", []) # the command line's -n 9, -t 0

def raw(live, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict]:
  conn = http.client.HTTPConnection(*live.server.server_address[:2], timeout=60)
  conn.putrequest(method, path)
  for k, v in {
      "Content-Type": "application/json", **({"Content-Length": str(len(body))} if body is not None else {}),
      **(headers or {})
  }.items():
    conn.putheader(k, v)
  conn.endheaders(body)
  r = conn.getresponse()
  out = r.status, json.loads(r.read())
  conn.close()
  return out

# each a 400: bodies that are not a request, then one bad value per field of a valid one
BAD = [b"{bad", b"[1, 2]", b'{"prompt": 5}', b"{}", b'{"prompt": [99999]}', b'{"prompt": "\xff"}']
BAD += [json.dumps({"prompt": "a", field: v}).encode() for field, values in {
  "max_tokens": ["5", 1.5, 0, 100000], "temperature": [-1, 3, float("nan")], "top_p": [0, 1.5], "top_k": [-1, True],
  "stream": ["yes"], "stop": [[1], ["a", "b", "c", "d", "e"]], "n": [2], "seed": ["x"], "presence_penalty": [1]}.items()
  for v in values]
BAD_CHAT = [
  b'{"messages": "hi"}', b'{"messages": []}', b'{"messages": [{"role": "wizard", "content": "x"}]}',
  b'{"messages": [{"role": "user"}]}', b'{"messages": [{"role": "assistant", "content": "x"}]}',
  b'{"messages": [{"role": "user", "content": 3}]}',
  b'{"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}'
]

def test_bad_requests_then_good_ones(live):
  """Each bad request gets its status and an OpenAI-style error body, and the request after it is served."""
  cases = [("POST", "/v1/completions", 400, b, None) for b in BAD]
  cases += [("POST", "/v1/chat/completions", 400, b, None) for b in BAD_CHAT]
  cases += [
    ("POST", "/v1/embeddings", 404, b"{}", None),
    ("GET", "/v1/nothing", 404, None, None),
    ("POST", "/v1/completions", 413, None, {"Content-Length": str(serve.MAX_BODY + 1)}), # refused before it is sent
    ("POST", "/v1/completions", 411, None, None)
  ]
  def go():
    for method, path, status, body, headers in cases:
      got, err = raw(live, method, path, body, headers)
      assert got == status, (body, got, err)
      assert isinstance(err["error"]["message"], str) and isinstance(err["error"]["type"], str), (body, err)
      assert raw(live, "POST", "/v1/completions",
                 b'{"prompt": "", "max_tokens": 4, "temperature": 0}')[1]["choices"][0]["text"] == "Once upon a time"
    with pytest.raises(openai.BadRequestError, match="context"):
      live.client.completions.create(model=live.name, prompt="Once", max_tokens=600)
  live.run(go)

def test_cli_serve_with_api_key(s260):
  """generate.py --serve prints its URL, serves the page to anyone and /v1 only with the key, and Ctrl-C ends it
  cleanly; bad --serve flags give one line."""
  m, t = s260
  proc = subprocess.Popen([
    sys.executable, "-X", "faulthandler",        # SIGABRT prints every thread's stack: the report of a hung exit
    str(ROOT / "generate.py"),
    str(m), "--tokenizer",
    str(t), "--serve", "--port", "0", "--api-key", "sekrit"
  ],
                          stderr=subprocess.PIPE,
                          text=True,
                          cwd=ROOT)
  try:
    url = next(
      mt.group(1) for line in proc.stderr
      if (mt := re.match(r"serving stories260K at (http://127\.0\.0\.1:\d+/) ", line)))
    log: list[str] = []
    drain = threading.Thread(target=lambda: log.extend(proc.stderr), daemon=True)  # its log must not fill the pipe
    drain.start()
    for key in (None, "wrong"):
      with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(
          urllib.request.Request(url + "v1/models", headers={"Authorization": f"Bearer {key}"} if key else {}))
      assert e.value.code == 401 and json.load(e.value)["error"]["code"] == "invalid_api_key"
    assert b"<textarea" in urllib.request.urlopen(url).read()
    client = openai.OpenAI(base_url=url + "v1", api_key="sekrit", max_retries=0, timeout=600)
    assert [x.id for x in client.models.list()] == ["stories260K"]
    with pytest.raises(openai.BadRequestError, match="context"):         # past the key: refused for its max_tokens
      client.completions.create(model="stories260K", prompt="", max_tokens=10**6)
    with pytest.raises(openai.AuthenticationError):
      openai.OpenAI(base_url=url + "v1", api_key="wrong", max_retries=0).completions.create(model="stories260K",
                                                                                            prompt="")
    # a client that keeps its connection open, idle (as openai's pooled one may): Ctrl-C must not wait for it
    idle = http.client.HTTPConnection(*urllib.parse.urlsplit(url).netloc.split(":"))
    idle.request("GET", "/v1/models", headers={"Authorization": "Bearer sekrit"})
    idle.getresponse().read()
    proc.send_signal(signal.SIGINT)
    try: assert proc.wait(timeout=60) == 0
    except subprocess.TimeoutExpired:
      proc.send_signal(signal.SIGABRT)
      drain.join(timeout=20)
      pytest.fail("generate.py --serve was still running 60 s after Ctrl-C; its threads then:\n" + "".join(log[-120:]))
  finally: proc.kill()
  for bad in (["--chat"], ["--port", "70000"]):
    r = subprocess.run(
      [sys.executable, str(ROOT / "generate.py"),
       str(m), "--tokenizer", str(t), "--serve", *bad],
      capture_output=True,
      text=True,
      cwd=ROOT)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr

# ***** SmolLM2-135M-Instruct: the real chat model, and the page in a browser *****

@pytest.fixture(scope="module")
def smol(fixtures):
  srv = Live(str(fixtures / "smollm2-135m-instruct-q4_1.gguf"), "--max-context", "256")
  yield srv
  srv.close()

def test_smollm2_names_paris(smol):
  text, reason, _ = smol.chat(say(FRANCE), max_tokens=24, temperature=0)
  assert "Paris" in text and reason == "stop"

class Browser:
  """Headless Chromium driven over the DevTools protocol, through a minimal websocket client (RFC 6455)."""
  def __init__(self, profile: pathlib.Path):
    self.proc = subprocess.Popen([
      CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
      "--remote-debugging-port=0", "about:blank"
    ],
                                 stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
    while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
      assert time.time() < deadline and self.proc.poll() is None, "chromium did not start"
      time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    page = next(
      t for t in json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list")) if t["type"] == "page")
    path = page["webSocketDebuggerUrl"].split(str(port), 1)[1]
    self.sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    self.sock.sendall(
      f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
      f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    self.rf, self.n = self.sock.makefile("rb"), 0
    assert b" 101 " in self.rf.readline()
    while self.rf.readline() not in (b"\r\n", b""): pass

  def send(self, text: str):
    data, mask = text.encode(), os.urandom(4)     # a client masks every frame
    n = len(data)
    size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + struct.pack(">H", n) if n < 1 << 16 else bytes(
      [0x80 | 127]) + struct.pack(">Q", n)
    self.sock.sendall(bytes([0x81]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

  def recv(self) -> str:
    parts = []
    while True:
      b0, b1 = self.rf.read(2)
      n = b1 & 0x7F
      if n >= 126: n = int.from_bytes(self.rf.read(2 if n == 126 else 8), "big")
      data = self.rf.read(n)
      if b0 & 0x0F >= 8: continue                 # control frames (ping, pong) between fragments
      parts.append(data)
      if b0 & 0x80: return b"".join(parts).decode()

  def call(self, method: str, **params) -> dict:
    self.n += 1
    self.send(json.dumps({"id": self.n, "method": method, "params": params}))
    while "id" not in (msg := json.loads(self.recv())) or msg["id"] != self.n: pass   # events are skipped
    assert "error" not in msg, msg
    return msg["result"]

  def js(self, expression: str):
    return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

  def wait(self, expression: str, timeout: float = 300):
    deadline = time.time() + timeout
    while not (value := self.js(expression)):
      assert time.time() < deadline, f"timed out waiting for {expression}"
      time.sleep(0.1)
    return value

  def close(self):
    self.sock.close()
    self.proc.kill()
    self.proc.wait()

def test_chat_page_in_browser(smol, tmp_path):
  """The page loads, names the model, streams two answers into the conversation (the API's own greedy answers to the
  same messages), the second from the cached first turn; the screenshot is saved as tmp_path/chat.png."""
  if CHROMIUM is None: pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
  ref = smol.chat(say(FRANCE), max_tokens=24, temperature=0)[0]
  talk = say(FRANCE) + [{"role": "assistant", "content": ref}] + say("And of Italy?")
  ref2 = smol.chat(talk, max_tokens=24, temperature=0)[0]
  def drive() -> tuple[list, list, bytes]:
    b = Browser(tmp_path / "profile")
    try:
      b.call("Emulation.setDeviceMetricsOverride", width=860, height=620, deviceScaleFactor=1, mobile=False)
      b.call("Page.navigate", url=smol.url)
      b.wait(f"document.getElementById('model').textContent === {json.dumps(smol.name)}", 60)
      b.js("document.getElementById('temperature').value = '0'; document.getElementById('max_tokens').value = '24'")
      for k, question in enumerate((FRANCE, "And of Italy?")):
        b.js(
          f"document.getElementById('input').value = {json.dumps(question)}; "
          "document.getElementById('form').requestSubmit()"
        )
        b.wait(f"document.querySelectorAll('.assistant[data-state=done]').length === {k + 1}")
      answers = b.js("[...document.querySelectorAll('.assistant')].map(d => [d.textContent, Number(d.dataset.chunks)])")
      notes = b.js("[...document.querySelectorAll('.meta')].map(d => d.textContent)")
      return answers, notes, base64.b64decode(b.call("Page.captureScreenshot", format="png")["data"])
    finally: b.close()
  answers, notes, png = smol.run(drive)
  assert [a for a, _ in answers] == [ref, ref2] and all(chunks > 1 for _, chunks in answers), answers
  cached = [int(re.search(r"(\d+) of (\d+) prompt tokens cached", n).group(1)) for n in notes]
  assert cached[1] > cached[0], notes
  (tmp_path / "chat.png").write_bytes(png)
  assert png.startswith(b"\x89PNG\r\n\x1a\n") and struct.unpack(">II", png[16:24]) == (860, 620)
