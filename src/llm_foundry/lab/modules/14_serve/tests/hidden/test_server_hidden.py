"""Module 14 — the chat server (hidden tests): the arguments reach the model, text survives the
wire, a stream really streams, and one slow reply does not hold up another."""

import threading

import httpx

from llm_foundry.lab.testing import check_equal, learner_line

from server import ApiError, create_app, parse_request
from test_server import HELLO, WAIT_S, client, serving

PATIENCE_S = 5.0  # how long a stand-in model waits for the test before it gives up ("late")


def test_arguments_reach_the_model():
    calls = []

    def recording(messages, max_tokens, temperature):
        calls.append((messages, max_tokens, temperature))
        yield "ok"

    convo = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "again"}]
    with serving(create_app(recording)) as path:
        client(path).chat.completions.create(model="m", messages=convo, max_tokens=7, temperature=0)
        client(path).chat.completions.create(model="m", messages=HELLO)
    check_equal(f"the arguments your server passed to chat(messages, max_tokens, temperature){learner_line(create_app)}",
                calls, [(convo, 7, 0.0), (HELLO, 256, 1.0)])


def test_text_survives_the_stream():
    pieces = ["两个\n\n换行", " data: [DONE]", " \"quoted\" \\ 😀", "\r\n"]

    def tricky(messages, max_tokens, temperature):
        yield from pieces

    with serving(create_app(tricky)) as path:
        got = [c.choices[0].delta.content for c in client(path).chat.completions.create(model="m", messages=HELLO,
                                                                                           stream=True)
               if c.choices and c.choices[0].delta.content]
        whole = client(path).chat.completions.create(model="m", messages=HELLO).choices[0].message.content
    check_equal("the streamed pieces of a reply with blank lines, quotes, emoji and 'data: [DONE]' in its text", got,
                pieces, hint="each piece travels inside JSON (json.dumps escapes line breaks), never as raw text")
    check_equal("the same reply not streamed", whole, "".join(pieces))


def test_a_stream_really_streams():
    seen = threading.Event()

    def slow(messages, max_tokens, temperature):
        yield "first"
        # The model "thinks" until the client has seen the first piece: a server that collects the whole
        # reply before sending would keep the client waiting, and the reply ends with "late".
        yield " then more" if seen.wait(PATIENCE_S) else " late"

    with serving(create_app(slow)) as path:
        text = ""
        for c in client(path).chat.completions.create(model="m", messages=HELLO, stream=True):
            if c.choices and c.choices[0].delta.content:
                text += c.choices[0].delta.content
                seen.set()
    check_equal("the streamed reply of a model that waits for the client to see its first piece", text,
                "first then more", hint="send each piece as soon as chat yields it: no list(), no join, before the stream")


def test_a_slow_reply_does_not_block_another():
    first_started, second_started = threading.Event(), threading.Event()

    def model(messages, max_tokens, temperature):
        if messages[-1]["content"] == "first":
            first_started.set()
            # the first request waits for the second one to reach the model: both must be in flight at once
            yield "first done" if second_started.wait(PATIENCE_S) else "late"
        else:
            second_started.set()
            yield "second done"

    with serving(create_app(model)) as path:
        replies = {}

        def ask(word):
            replies[word] = client(path).chat.completions.create(
                model="m", messages=[{"role": "user", "content": word}]).choices[0].message.content

        first = threading.Thread(target=ask, args=("first",))
        first.start()
        # the second request is sent only once the first one holds the model (or has already ended), so on a
        # busy machine it cannot overtake the first and pass by luck
        while first.is_alive() and not first_started.wait(0.05):
            pass
        ask("second")
        first.join(WAIT_S + PATIENCE_S)
    check_equal("two requests at once, the first waiting for the second (not streamed)", replies,
                {"first": "first done", "second": "second done"},
                hint="the model runs off the event loop (await asyncio.to_thread(...)): a blocking call inside an "
                     "async route stops every other request")


def test_good_bodies_are_accepted_and_more_bad_ones_refused():
    ok = [{"model": "m", "messages": HELLO, "temperature": 0}, {"model": "m", "messages": HELLO, "temperature": 2.0},
          {"model": "m", "messages": HELLO, "max_tokens": 1, "stream": True},
          {"model": "m", "messages": [{"role": "system", "content": "x"}, *HELLO], "user": "someone"}]
    for body in ok:
        got = parse_request(body)
        check_equal(f"parse_request({body}) (stream, max_tokens, temperature)",
                    (got["stream"], got["max_tokens"], got["temperature"]),
                    (body.get("stream", False), body.get("max_tokens", 256), float(body.get("temperature", 1.0))),
                    where=parse_request)
    bad = [(None, None), ({"model": 3, "messages": HELLO}, "model"), ({"model": "m", "messages": [{"role": "user"}]}, "messages"),
           ({"model": "m", "messages": "hi"}, "messages"), ({"model": "m", "messages": HELLO, "temperature": -0.1}, "temperature"),
           ({"model": "m", "messages": HELLO, "max_tokens": "5"}, "max_tokens"),
           ({"model": "m", "messages": HELLO, "temperature": True}, "temperature")]
    for body, param in bad:
        try:
            got = parse_request(body)
        except ApiError as e:
            check_equal(f"parse_request({body}): the error's (status, param)", (e.status, e.param), (400, param),
                        where=parse_request)
            continue
        raise AssertionError(f"parse_request({body}){learner_line(parse_request)} accepted it (returned {got!r}); "
                             f"expected an ApiError(400, ..., param={param!r})")


def test_bad_bodies_over_http():
    with serving(create_app(lambda m, n, t: iter(["x"]))) as path:
        with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=WAIT_S) as http:
            r = http.post("http://lab/v1/chat/completions", content=b'{"model": "m", "messages": "hi"}')
            check_equal("POST with messages 'hi': status", r.status_code, 400)
            check_equal("... its error param", r.json().get("error", {}).get("param"), "messages")
            r = http.post("http://lab/v1/chat/completions", content=b"\xff\xfe")
            check_equal("POST of bytes that are not UTF-8: status", r.status_code, 400)
