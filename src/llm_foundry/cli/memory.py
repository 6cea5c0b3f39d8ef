"""`foundry memory`: an editable memory of facts and the model that reads it.

Each action is one function ``run_<action>`` and one entry in :data:`ACTIONS`: the store's edits
(``create``, ``add``, ``update``, ``delete``, ``rollback``, ``list``, ``show``) and the model side
(``backbone``, ``init``, ``train``, ``ask``, ``eval``, in ``memory/pipeline.py``, ``ask.py``, ``evaluate.py``). Every edit
is one transaction: a refused command leaves the store exactly as it was.
"""

from __future__ import annotations

import argparse
import json
import sys

from ..utils.errors import FoundryError


def _mem(p: argparse.ArgumentParser) -> None:
    p.add_argument("mem", metavar="MEM", help="the memory folder")


def _entry_id(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", metavar="ID", type=int, help="an entry id (as `add` and `list` print them)")


def _add_create(actions) -> None:
    p = actions.add_parser("create", help="make an empty memory folder (scripts and tests; `init` will bind a backbone)",
                           description="Make an empty memory folder: the store and its edit log, no model yet.")
    p.add_argument("mem", metavar="MEM", help="the memory folder to create (new, or an empty folder)")
    p.add_argument("--backbone-fingerprint", metavar="HEX",
                   help="record the backbone fingerprint the folder is built for (the model side computes it)")
    p.set_defaults(func=run_create)


def _add_add(actions) -> None:
    p = actions.add_parser("add", help="add entries; prints their ids",
                           description="Add entries, all or none (a bad one refuses the whole batch); prints "
                                       "the new ids, one a line.")
    _mem(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", action="append", metavar="TEXT", help="an entry's text (repeat for several)")
    src.add_argument("--file", metavar="FACTS.jsonl",
                     help='a .jsonl file: {"text": ...} or {"subject": ..., "relation": ..., "object": ...} a line')
    p.add_argument("--json", action="store_true", help='print one {"id", "text"} object a line')
    p.set_defaults(func=run_add)


def _add_update(actions) -> None:
    p = actions.add_parser("update", help="replace an entry's text", description="Replace a live entry's text.")
    _mem(p)
    _entry_id(p)
    p.add_argument("--text", required=True, metavar="TEXT", help="the new text")
    p.set_defaults(func=run_update)


def _add_delete(actions) -> None:
    p = actions.add_parser("delete", help="delete an entry (a tombstone: rollback can restore it)",
                           description="Delete an entry: it is hidden from retrieval at once and kept in the "
                                       "edit log, so a rollback can restore it.")
    _mem(p)
    _entry_id(p)
    p.set_defaults(func=run_delete)


def _add_rollback(actions) -> None:
    p = actions.add_parser("rollback", help="restore every entry to its state at a version",
                           description="Restore every entry to its state at VERSION by appending the inverse "
                                       "edits (the log is never rewritten: a rollback can be rolled back). "
                                       "Version 0 is the empty memory.")
    _mem(p)
    p.add_argument("version", metavar="VERSION", type=int, help="a version, as `list --json` and `show` print them")
    p.set_defaults(func=run_rollback)


def _add_list(actions) -> None:
    p = actions.add_parser("list", help="list the entries", description="List the live entries, one `ID<TAB>TEXT` a line.")
    _mem(p)
    p.add_argument("--grep", metavar="WORD", help="only entries whose text contains WORD (ASCII letters in any case)")
    p.add_argument("--all", action="store_true", help="deleted entries too, marked")
    p.add_argument("--json", action="store_true",
                   help='print one {"id", "text", "version", "deleted"} object a line (version: its last edit)')
    p.set_defaults(func=run_list)


def _add_show(actions) -> None:
    p = actions.add_parser("show", help="an entry's text and its history",
                           description="Print an entry's text, whether it is live, and every edit of it.")
    _mem(p)
    _entry_id(p)
    p.set_defaults(func=run_show)


def _preset(p: argparse.ArgumentParser, default: str | None) -> None:
    p.add_argument("--preset", default=default, metavar="NAME|FILE",
                   help="a memory preset: cpu (this machine), gpu (a Qwen3 backbone), or a YAML file"
                        + (f" (default: {default})" if default else " (default: the folder's own config)"))
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. router.steps=50")


def _add_backbone(actions) -> None:
    p = actions.add_parser("backbone", help="train a small backbone that knows the fact world's language",
                           description="Train a small MiniLLM (our Trainer, byte tokenizer) on the built-in fact "
                                       "world's train entities only: their statements and question/answer lines, "
                                       "English and Chinese. It learns the format and the values, nothing about "
                                       "memory-only entities. Any model folder of ours or a local Hugging Face "
                                       "Llama/Qwen3 folder can be a backbone as well.")
    p.add_argument("--out", required=True, metavar="DIR", help="the model folder to write")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    _preset(p, "cpu")
    p.set_defaults(func=run_backbone)


def _add_init(actions) -> None:
    p = actions.add_parser("init", help="make a memory folder for a backbone",
                           description="Make a memory folder for a backbone: an empty store bound to the backbone's "
                                       "fingerprint, the memory modules at initialisation (the model answers as the "
                                       "backbone alone), and the config.")
    p.add_argument("--backbone", required=True, metavar="DIR",
                   help="one of our model folders, or a local Hugging Face Llama/Qwen3 folder")
    p.add_argument("--out", required=True, metavar="MEM", help="the memory folder to create (must not exist)")
    _preset(p, "cpu")
    p.set_defaults(func=run_init)


def _add_train(actions) -> None:
    p = actions.add_parser("train", help="train the memory modules (router, fusion, joint, memory)",
                           description="Train the memory modules on the fact world's train entities, the backbone "
                                       "frozen. Stages run in order; each checkpoints into MEM/train/ and Ctrl-C "
                                       "saves, so the same command with --resume continues exactly.")
    _mem(p)
    p.add_argument("--stage", default="all", choices=["router", "fusion", "joint", "memory", "all"],
                   help="the stage to train (default: all four in order)")
    p.add_argument("--resume", action="store_true", help="skip finished stages, continue an interrupted one")
    p.add_argument("--json", action="store_true", help="print one {stage, step, loss} object per stage")
    _preset(p, None)
    p.set_defaults(func=run_train)


def _add_ask(actions) -> None:
    p = actions.add_parser("ask", help="answer questions from the memory",
                           description="Answer questions greedily, reading the entries the gate retrieves from the "
                                       "store's live entries (an edit is visible to the next question).")
    _mem(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--question", action="append", metavar="TEXT", help="a question (repeat for several)")
    src.add_argument("--file", metavar="QUESTIONS.jsonl", help='a .jsonl file of {"question": ..., "answer": ...}')
    p.add_argument("--no-memory", action="store_true", help="the backbone alone (nothing retrieved)")
    p.add_argument("--show-retrieval", action="store_true", help="print the retrieved entries under each answer")
    p.add_argument("--hybrid", type=float, metavar="W",
                   help="BM25 weight in retrieval (default: the memory's modules.hybrid)")
    p.add_argument("--max-tokens", type=int, default=32, metavar="N", help="longest answer (default: 32)")
    p.add_argument("--json", action="store_true", help='print one {"question", "answer", "retrieved"} object a line')
    p.set_defaults(func=run_ask)


def _add_eval(actions) -> None:
    p = actions.add_parser("eval", help="evaluate the memory on memory-only facts; writes MEM/eval.md",
                           description="Ask about the fact world's memory-only entities with a store filled by "
                                       "distractors: backbone alone, memory (dense, hybrid), oracle, in-context "
                                       "RAG with the same retriever, held-out phrasings, unseen relations, edits, "
                                       "deletes, locality, counterfactual entries, and the perplexity of "
                                       "memory-free text with the memory off and on; --scales adds exact match "
                                       "and retrieval latency per store size. The table goes to MEM/eval.md.")
    _mem(p)
    p.add_argument("--store-size", type=int, metavar="N", help="entries in the store (default: the config's eval.store_size)")
    p.add_argument("--max-questions", type=int, metavar="N",
                   help="questions per row (default: the config's eval.questions; 0: all)")
    p.add_argument("--facts", metavar="FACTS.jsonl", help="your own facts instead of the fact world's (with --questions)")
    p.add_argument("--questions", metavar="QUESTIONS.jsonl",
                   help='your own {"question", "answer"} lines (with --facts): rows backbone, memory, in-context RAG')
    p.add_argument("--scales", metavar="N,N,...",
                   help="also measure exact match and retrieval latency at these store sizes, e.g. "
                        "1000,10000,100000,1000000 (slow at 1M: every entry is encoded)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON object")
    p.set_defaults(func=run_eval)


# One builder per action.
ACTIONS = (_add_create, _add_add, _add_update, _add_delete, _add_rollback, _add_list, _add_show,
           _add_backbone, _add_init, _add_train, _add_ask, _add_eval)


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="an editable memory of facts for a frozen model: init, train, ask, eval, edits",
                       description="An editable memory of facts for a frozen model. Each edit is durable when the "
                                   "command returns and recorded in an append-only log (rollback restores any "
                                   "version). A backbone reads the memory through trained modules: init, train, ask, eval.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for build in ACTIONS:
        build(actions)


def _open(path: str):
    from ..memory.store import MemoryStore

    return MemoryStore.open(path)


def run_create(args: argparse.Namespace) -> int:
    from ..memory.store import MemoryStore

    if args.backbone_fingerprint is not None and not args.backbone_fingerprint.strip():
        raise FoundryError("--backbone-fingerprint is empty")
    with MemoryStore.create(args.mem, backbone_fingerprint=args.backbone_fingerprint):
        pass
    print(f"created memory folder {args.mem}")
    return 0


def run_add(args: argparse.Namespace) -> int:
    if args.file is not None:
        from ..memory.facts import read_facts_jsonl  # (only here: reading files pulls in the data package)

        texts = read_facts_jsonl(args.file)
    else:
        texts = args.text
    from ..memory.store import check_entry_text

    with _open(args.mem) as store:
        ids = store.add(texts)
    for entry_id, text in zip(ids, texts):
        # The text as stored (stripped), which is what `list` shows.
        print(json.dumps({"id": entry_id, "text": check_entry_text(text)}, ensure_ascii=False) if args.json else entry_id)
    return 0


def run_update(args: argparse.Namespace) -> int:
    with _open(args.mem) as store:
        version = store.update(args.id, args.text)
    print(f"updated entry {args.id} (version {version})")
    return 0


def run_delete(args: argparse.Namespace) -> int:
    with _open(args.mem) as store:
        version = store.delete(args.id)
    print(f"deleted entry {args.id} (version {version})")
    return 0


def run_rollback(args: argparse.Namespace) -> int:
    with _open(args.mem) as store:
        before = store.version
        version = store.rollback(args.version)
    changed = version - before
    print(f"rolled back to version {args.version}: {changed} entr{'y' if changed == 1 else 'ies'} changed "
          f"(version {version})")
    return 0


def run_list(args: argparse.Namespace) -> int:
    with _open(args.mem) as store:
        entries = store.list(grep=args.grep, include_deleted=args.all)
    out = sys.stdout
    for e in entries:
        if args.json:
            out.write(json.dumps({"id": e.id, "text": e.text, "version": e.updated, "deleted": e.deleted},
                                 ensure_ascii=False) + "\n")
        else:
            out.write(f"{e.id}\t{'(deleted) ' if e.deleted else ''}{_one_line(e.text)}\n")
    return 0


def run_show(args: argparse.Namespace) -> int:
    import time

    with _open(args.mem) as store:
        entry = store.get(args.id)
        history = store.history(args.id)
    state = "deleted" if entry.deleted else "live"
    print(f"entry {entry.id} ({state}; added at version {entry.created}, last edited at version {entry.updated})")
    print(entry.text)
    print("history:")
    for h in history:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.time))
        after = "(deleted)" if h.new_text is None else _one_line(h.new_text)
        print(f"  version {h.version}  {h.op:<8}  {when}  {after}")
    return 0


def _one_line(text: str) -> str:
    """A text on one line of a listing (an entry may hold newlines)."""
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


# ----------------------------------------------------------------------------- the model side
def _config(args: argparse.Namespace):
    from ..config.memory import load_memory_config

    return load_memory_config(args.preset, args.overrides) if args.preset else None


def run_backbone(args: argparse.Namespace) -> int:
    from ..memory.pipeline import train_backbone
    from ..utils.progress import console

    summary = train_backbone(args.out, _config(args), resume=args.resume)
    console.print(f"backbone in {args.out}: {summary['step']} steps, {summary['parameters'] / 1e6:.2f}M parameters")
    return 0


def run_init(args: argparse.Namespace) -> int:
    from ..memory.pipeline import init_memory

    memory = init_memory(args.backbone, args.out, _config(args))
    fp = memory.model.backbone.fingerprint()
    memory.close()
    print(f"created memory folder {args.out} for backbone {args.backbone} (fingerprint {fp})")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from ..config.memory import STAGE_NAMES
    from ..memory.pipeline import train_memory

    if not args.preset and args.overrides:
        raise FoundryError("config overrides need --preset (the folder's own config is used as saved)")
    stages = list(STAGE_NAMES) if args.stage == "all" else [args.stage]
    results = train_memory(args.mem, stages, _config(args), resume=args.resume)
    for r in results:
        if args.json:
            print(json.dumps(r))
        else:
            note = " (already finished)" if r.get("skipped") else ""
            loss = "n/a" if r["loss"] is None else f"{r['loss']:.4f}"
            print(f"{r['stage']}: {r['step']} steps, last loss {loss}{note}")
    return 0


def run_ask(args: argparse.Namespace) -> int:
    from ..config.schema import require_int, require_real
    from ..memory.ask import Answerer, live_bank
    from ..memory.pipeline import open_memory

    if args.hybrid is not None:
        require_real(args.hybrid, "--hybrid", 0, 1)
    require_int(args.max_tokens, "--max-tokens", 1, 4096)
    if args.file is not None:
        from ..memory.facts import read_questions_jsonl

        questions = [q.question for q in read_questions_jsonl(args.file)]
    else:
        questions = args.question
    if any(not q.strip() for q in questions):
        raise FoundryError("a question is empty")
    memory = open_memory(args.mem)
    try:
        bank = None if args.no_memory else live_bank(memory.model, memory.store)
        hybrid = memory.cfg.modules.hybrid if args.hybrid is None else args.hybrid
        answers = Answerer(memory.model, args.max_tokens).ask(questions, bank, memory.cfg.modules.k, hybrid)
    finally:
        memory.close()
    for a in answers:
        if args.json:
            print(json.dumps(a.to_dict(), ensure_ascii=False))
        else:
            print(a.answer)
        if args.show_retrieval:
            for i, text, score in zip(a.retrieved, a.texts, a.scores):
                print(f"  [{i}] {score:.3f} {_one_line(text)}", file=sys.stderr if args.json else sys.stdout)
    return 0


def run_eval(args: argparse.Namespace) -> int:
    from ..memory.evaluate import EvalStore, evaluate, parse_scales, perplexity, scaling, write_report
    from ..memory.pipeline import open_memory

    if args.store_size is not None and args.store_size < 1:
        raise FoundryError("--store-size must be positive")
    if args.max_questions is not None and args.max_questions < 0:
        raise FoundryError("--max-questions must be >= 0")
    if (args.facts is None) != (args.questions is None):
        raise FoundryError("--facts and --questions go together (your facts, and questions about them)")
    scales = parse_scales(args.scales) if args.scales is not None else []
    if scales and args.facts is not None:
        raise FoundryError("--scales measures the built-in fact world; leave out --facts/--questions")
    user, ppl, measured = None, None, []
    if args.facts is not None:
        from ..memory.facts import read_facts_jsonl, read_questions_jsonl

        user = read_facts_jsonl(args.facts), read_questions_jsonl(args.questions)
    memory = open_memory(args.mem)
    try:
        if user is not None:
            from ..memory.evaluate import evaluate_user

            size = max(args.store_size or 0, len(user[0]))
            rows = evaluate_user(memory, *user, store_size=size)
            path = write_report(memory, rows, size, f"Questions of {args.questions}")
        else:
            size = args.store_size or memory.cfg.eval.store_size
            store = EvalStore.build(memory, size)  # encoded once, shared by the table and the perplexity
            rows = evaluate(memory, size, args.max_questions, store=store)
            ppl = perplexity(memory, size, args.max_questions, store=store)
            measured = scaling(memory, scales, args.max_questions) if scales else []
            path = write_report(memory, rows, size, ppl=ppl, scales=measured)
    finally:
        memory.close()
    if args.json:
        out = {"store_size": size, "rows": [r.to_dict() for r in rows]}
        if ppl is not None:
            out["perplexity"] = ppl.to_dict()
        if measured:
            out["scaling"] = [s.to_dict() for s in measured]
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(path.read_text(encoding="utf-8"), end="")
    return 0
