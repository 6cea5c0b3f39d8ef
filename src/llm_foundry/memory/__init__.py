"""Explicit memory: a frozen backbone that reads facts from an editable memory bank.

The parts (see docs/en/memory.md): a backbone adapter that never changes a backbone
weight, a store whose entries' text is the source of truth (SQLite, an append-only edit
log), a trained retrieval gate, a fusion that injects the retrieved entries into a few
upper layers, the four training stages, and the evaluation protocol.
"""
