"""The Lab speaks English and Chinese: the learner's language and the one helper that picks a text.

Module texts carry both languages (``{en: ..., zh: ...}``); the engine's own words are written
inline as ``say(lang, "English", "中文")`` next to where they are used, so a message and its
translation are read (and changed) together.
"""

from __future__ import annotations

import os

LANGS = ("en", "zh")


def default_lang() -> str:
    """``zh`` when the locale (``LC_ALL``, ``LC_MESSAGES``, ``LANG``) is Chinese, else ``en``."""
    for var in ("LC_ALL", "LC_MESSAGES", "LANG"):
        value = os.environ.get(var, "")
        if value:
            return "zh" if value.lower().startswith("zh") else "en"
    return "en"


def say(lang: str, en: str, zh: str) -> str:
    """``zh`` for a Chinese reader, else ``en``."""
    return zh if lang == "zh" else en


def pick(texts: dict | str, lang: str) -> str:
    """A module's ``{en, zh}`` text in ``lang`` (the other language when one is missing)."""
    if isinstance(texts, str):
        return texts
    return texts.get(lang) or texts.get("en") or next(iter(texts.values()), "")
