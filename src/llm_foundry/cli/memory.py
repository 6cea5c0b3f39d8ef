"""`foundry memory`: an editable memory of facts (the store's edit commands; the model's come next).

Each action is one function ``run_<action>`` and one entry in :data:`ACTIONS`; the model-side
actions (``init --backbone``, ``train``, ``ask``, ``eval``) slot in the same way. Every edit
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


# One builder per action; the model-side actions join this table.
ACTIONS = (_add_create, _add_add, _add_update, _add_delete, _add_rollback, _add_list, _add_show)


def add_parser(sub) -> None:
    p = sub.add_parser("memory", help="an editable memory of facts: add, update, delete, rollback, list, show",
                       description="An editable memory of facts for a frozen model. Each edit is durable when the "
                                   "command returns and recorded in an append-only log (rollback restores any "
                                   "version). The model side (init, train, ask, eval) is coming.")
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
