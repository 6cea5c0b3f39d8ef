"""`foundry chat` (talk to a chat model in the terminal) and `foundry eval-chat` (task accuracy)."""

from __future__ import annotations

import argparse
import json
import sys

from . import add_alias, add_compile_option, add_no_tools_option, add_run_options


def _common(p: argparse.ArgumentParser, max_tokens: int) -> None:
    p.add_argument("model", metavar="MODEL", help="a model folder (a run folder works)")
    add_no_tools_option(p)
    add_alias(p, p.add_argument("--max-new-tokens", dest="max_tokens", type=int, default=max_tokens, metavar="N",
                                help=f"most new tokens per reply (default: {max_tokens})"), "--max-tokens")
    add_compile_option(p)


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat with a model in the terminal",
                       description="Multi-turn chat with streaming replies and visible tool calls. Commands: "
                                   "/clear (forget the conversation), /temp=T (set the temperature), /quit. "
                                   "When stdin is not a terminal, each input line is one user message.")
    _common(p, max_tokens=256)
    p.add_argument("--temperature", type=float, default=0.6, metavar="T", help="0 = greedy, at most 2 (default: 0.6)")
    p.add_argument("--top-k", type=int, default=50, metavar="K", help="sample among the K most likely tokens (default: 50)")
    p.add_argument("--top-p", type=float, metavar="P", help="sample from the smallest set with probability >= P")
    p.add_argument("--system", metavar="TEXT", help="a system message that starts the conversation")
    p.add_argument("--prompt", metavar="TEXT", help="send this one message, print the reply and exit")
    p.add_argument("--memory", metavar="MEM",
                   help="answer from this memory folder (built for MODEL by `foundry memory init`): each message is "
                        "a question, answered greedily as `foundry memory ask` does, reading the entries retrieved "
                        "from the store's live entries at that moment")
    p.add_argument("--show-retrieval", action="store_true",
                   help="with --memory: print the retrieved entries' ids and texts under each answer "
                        "(/retrieved shows the last answer's)")
    add_run_options(p, seed_help="seed for reproducible replies")
    p.set_defaults(func=run_chat)

    e = sub.add_parser("eval-chat", help="evaluate a chat model on tasks",
                       description="Per-task accuracy and the aggregate (mean) on built-in tasks "
                                   "(arithmetic, spelling, count_letters, identity, facts; held-out split) "
                                   "or task files (GSM8K/MMLU/ARC/chat .jsonl, MMLU .csv).")
    _common(e, max_tokens=128)
    e.add_argument("--task", action="append", metavar="NAME|FILE",
                   help="a built-in task or a task file (repeatable; default: every built-in task)")
    e.add_argument("-n", "--num", type=int, metavar="N", help="questions per task (built-in default: 100; files: all)")
    e.add_argument("--split", default="heldout", choices=["heldout", "train"], help="built-in tasks' split (default: heldout)")
    e.add_argument("--lang", default="mixed", choices=["mixed", "en", "zh"], help="built-in tasks' language (default: mixed)")
    add_run_options(e, seed_help="seed of the built-in questions and of sampling at --temperature > 0 (default: 1234)")
    e.set_defaults(seed=1234)
    e.add_argument("--identity", metavar="NAME", help="the name the identity task expects (default: llm-foundry mini model)")
    e.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy, at most 2 (default: 0)")
    e.add_argument("--batch-size", type=int, default=32, metavar="B", help="prompts decoded together (default: 32)")
    e.add_argument("--samples", type=int, default=0, metavar="K", help="also print K example replies per task")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.set_defaults(func=run_eval_chat)


def _check(args) -> None:
    from ..config.sampling import check_sampling

    check_sampling(temperature=args.temperature, top_k=getattr(args, "top_k", None), top_p=getattr(args, "top_p", None),
                   max_new_tokens=args.max_tokens, seed=args.seed, as_flags=True)


# ---------------------------------------------------------------- chat
def run_chat(args: argparse.Namespace) -> int:
    from ..inference.engine import Engine
    from ..utils.errors import FoundryError

    _check(args)
    if args.memory is not None:
        return run_memory_chat(args)
    if args.show_retrieval:
        raise FoundryError("--show-retrieval goes with --memory MEM")
    engine = Engine.from_pretrained(args.model, device=args.device, precision=args.precision, tools=not args.no_tools,
                                    compile=args.compile)
    session = ChatSession(engine, args)
    if args.prompt is not None:
        session.reply(args.prompt)
        return 0
    interactive = sys.stdin.isatty()
    if interactive:
        tools = "off" if args.no_tools else "on"
        print(f"chatting with {args.model} (tools {tools}, temperature {session.temperature}); /clear, /temp=T, /quit",
              file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except (EOFError, KeyboardInterrupt):
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/quit", "/exit"):
            break
        if line == "/clear":
            session.clear()
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/temp"):
            session.set_temperature(line)
            continue
        if line.startswith("/"):
            print(f"unknown command {line.split()[0]} (use /clear, /temp=T, /quit)", file=sys.stderr)
            continue
        try:
            session.reply(line)
        except KeyboardInterrupt:
            # Ctrl-C stops this reply, not the chat.
            session.undo()
            print("\n(reply stopped)", file=sys.stderr)
        except FoundryError as e:
            session.undo()
            print(f"error: {e}", file=sys.stderr)
    return 0


def run_memory_chat(args: argparse.Namespace) -> int:
    """``chat MODEL --memory MEM``: each message is a question answered with the memory attached.

    The memory modules were trained on the question-answer layout (``memory ask``'s prompt), so
    each turn is answered on its own, greedily, exactly as ``memory ask`` answers it (one home:
    :class:`~llm_foundry.memory.ask.LiveAnswers`, which ``serve --memory`` answers with too); before
    every turn the bank takes in the store's edits since the last, so an edit made meanwhile
    (``foundry memory update`` in another shell) is read by the next question.
    """
    from ..memory.ask import LiveAnswers
    from ..memory.pipeline import open_memory
    from ..utils.errors import FoundryError

    device = None if args.device == "auto" else args.device
    memory = open_memory(args.memory, device=device, backbone=args.model)
    try:
        live = LiveAnswers(memory.model, memory.store, memory.cfg.modules.k, args.max_tokens,
                           memory.cfg.modules.hybrid)
        last: list = []

        def answer(question: str) -> None:
            nonlocal last
            got = live.ask(question)
            last = list(zip(got.retrieved, got.texts))
            print(got.answer, flush=True)
            if args.show_retrieval:
                _print_retrieved(last)

        if args.prompt is not None:
            answer(args.prompt)
            return 0
        interactive = sys.stdin.isatty()
        if interactive:
            print(f"asking {args.model} with memory {args.memory} ({len(memory.store)} entries); "
                  "/retrieved, /quit", file=sys.stderr)
        while True:
            try:
                line = input("you> " if interactive else "").strip()
            except (EOFError, KeyboardInterrupt):
                break
            if not line:
                continue
            if line in ("/quit", "/exit"):
                break
            if line == "/retrieved":
                _print_retrieved(last)
                continue
            if line.startswith("/"):
                print(f"unknown command {line.split()[0]} (use /retrieved, /quit)", file=sys.stderr)
                continue
            try:
                answer(line)
            except KeyboardInterrupt:
                print("\n(reply stopped)", file=sys.stderr)
            except FoundryError as e:
                print(f"error: {e}", file=sys.stderr)
    finally:
        memory.close()
    return 0


def _print_retrieved(found: list) -> None:
    if not found:
        print("(nothing retrieved yet)", file=sys.stderr)
    for i, text in found:
        print(f"  [{i}] {' '.join(text.split())}", flush=True)


class ChatSession:
    """A conversation with an engine: history, streaming output, the slash commands' state."""

    def __init__(self, engine, args: argparse.Namespace):
        self.engine = engine
        self.args = args
        self.temperature = args.temperature
        self.system = args.system
        self.color = sys.stdout.isatty()
        self.clear()

    def clear(self) -> None:
        self.messages: list[dict] = [{"role": "system", "content": self.system}] if self.system else []

    def undo(self) -> None:
        """Forget the last user message when its reply failed or was stopped."""
        if self.messages and self.messages[-1]["role"] == "user":
            self.messages.pop()

    def set_temperature(self, line: str) -> None:
        from ..config.sampling import MAX_TEMPERATURE, check_sampling
        from ..utils.errors import FoundryError

        value = line.partition("=")[2].strip()
        try:
            t = float(value)
            check_sampling(temperature=t)
        except (ValueError, FoundryError):
            print(f"usage: /temp=T with T from 0 to {MAX_TEMPERATURE:g} (now {self.temperature})", file=sys.stderr)
            return
        self.temperature = t
        print(f"(temperature {t})", file=sys.stderr)

    def _fit(self) -> None:
        """Drop the oldest exchanges until the prompt leaves room for a reply."""
        from ..data.chat import render_prompt
        from ..utils.errors import FoundryError

        ctx = self.engine.model.cfg.max_seq_len
        first = 1 if self.system else 0
        while len(render_prompt(self.engine.tokenizer, self.messages)) + min(self.args.max_tokens, ctx // 2) > ctx:
            if len(self.messages) - first <= 1:
                if len(render_prompt(self.engine.tokenizer, self.messages)) >= ctx:
                    raise FoundryError(f"the message is too long for the model's context of {ctx} tokens")
                return
            del self.messages[first:first + 2]

    def _style(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.color else text

    def reply(self, user_text: str) -> None:
        self.messages.append({"role": "user", "content": user_text})
        self._fit()
        parts: list[dict] = []
        out = sys.stdout
        out.write(self._style("assistant> ", "1") if self.color else "")
        for ev in self.engine.chat(self.messages, max_tokens=self.args.max_tokens, temperature=self.temperature,
                                   top_k=self.args.top_k, top_p=self.args.top_p, seed=self.args.seed):
            if ev["type"] == "text":
                out.write(ev["text"])
                if parts and parts[-1]["type"] == "text":
                    parts[-1]["text"] += ev["text"]
                else:
                    parts.append({"type": "text", "text": ev["text"]})
            elif ev["type"] == "tool_call":
                out.write(self._style(f"[calculator: {ev['text']}]", "36"))
                parts.append({"type": "python", "text": ev["text"]})
            elif ev["type"] == "tool_result":
                out.write(self._style(f"[= {ev['text']}]", "36"))
                parts.append({"type": "python_output", "text": ev["text"]})
            elif ev["type"] == "done" and ev["finish_reason"] == "length":
                out.write(self._style(" [cut off: --max-new-tokens reached]", "2"))
            out.flush()
        out.write("\n")
        out.flush()
        self.messages.append({"role": "assistant", "content": parts or ""})


# ---------------------------------------------------------------- eval-chat
def run_eval_chat(args: argparse.Namespace) -> int:
    from rich.progress import MofNCompleteColumn

    from ..data.synthetic import DEFAULT_IDENTITY
    from ..eval.tasks import BUILTIN_TASKS, evaluate_task, load_task
    from ..inference.engine import Engine
    from ..utils.errors import FoundryError
    from ..utils.progress import progress_bar

    _check(args)
    if args.batch_size < 1 or (args.num is not None and args.num < 1):
        raise FoundryError("--batch-size and -n must be >= 1")
    specs = args.task or list(BUILTIN_TASKS)
    tasks = [load_task(s, args.num, split=args.split, seed=args.seed, lang=args.lang,
                       identity=args.identity or DEFAULT_IDENTITY) if s in BUILTIN_TASKS else load_task(s, args.num)
             for s in specs]
    engine = Engine.from_pretrained(args.model, device=args.device, precision=args.precision, tools=not args.no_tools,
                                    compile=args.compile)
    results = []
    with progress_bar(True, MofNCompleteColumn()) as progress:
        for task in tasks:
            bar = progress.add_task(task.name, total=len(task.items))
            results.append(evaluate_task(engine, task, batch_size=args.batch_size, max_tokens=args.max_tokens,
                                         temperature=args.temperature, seed=args.seed,
                                         on_progress=lambda k, bar=bar: progress.advance(bar, k)))
    aggregate = sum(r.accuracy for r in results) / len(results)
    if args.json:
        print(json.dumps({"model": str(args.model), "tools": not args.no_tools, "split": args.split,
                          "tasks": [r.to_dict(with_samples=args.samples > 0) for r in results], "aggregate": aggregate},
                         ensure_ascii=False))
        return 0
    width = max(len(r.name) for r in results + []) if results else 8
    width = max(width, len("aggregate"))
    print(f"{'task':<{width}}  {'accuracy':>8}  {'correct':>9}   (tools {'off' if args.no_tools else 'on'})")
    for r in results:
        print(f"{r.name:<{width}}  {r.accuracy:>8.1%}  {r.correct:>4g}/{r.total:<4d}")
    print(f"{'aggregate':<{width}}  {aggregate:>8.1%}")
    for r in results:
        for s in r.samples[:args.samples]:
            mark = "✓" if s["score"] else "✗"
            print(f"\n[{r.name}] {mark} {s['prompt']!s}\n  -> {s['completion']!r} (answer {s['answer']!r})")
    return 0
