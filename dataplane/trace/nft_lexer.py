"""``nft -f`` scripts split into tokens, for :mod:`.nft_parser`."""
from __future__ import annotations

import re
from dataclasses import dataclass

from .model import TraceError


@dataclass(frozen=True, slots=True)
class Tok:
    """A token: a word, a quoted string (``quoted``), or one of ``{ } ; , :`` and newline ``\\n``."""

    text: str
    line: int
    quoted: bool = False

    def is_(self, *words: str) -> bool:
        return not self.quoted and self.text in words


_TOKEN = re.compile(r"""
    (?P<nl>\n)
  | (?P<space>[ \t\r]+ | \\\n)
  | (?P<comment>\#[^\n]*)
  | "(?P<string>[^"\n]*)"
  | (?P<single>[{};,])
  | (?P<word>[^ \t\r\n"\#{};,]+)
  | (?P<bad>")
""", re.VERBOSE)


def tokenize(text: str) -> list[Tok]:
    """Split an nft script into tokens; ``#`` comments are dropped, newlines kept."""
    toks: list[Tok] = []
    line = 1
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            toks.append(Tok("\n", line))
            line += 1
        elif kind == "space":
            line += m.group().count("\n")
        elif kind == "string":
            toks.append(Tok(m.group("string"), line, quoted=True))
        elif kind == "single":
            toks.append(Tok(m.group(), line))
        elif kind == "word":
            word = m.group()
            if word.endswith(":") and word[:-1].isdigit():  # "0:" in a map literal
                toks += [Tok(word[:-1], line), Tok(":", line)]
            else:
                toks.append(Tok(word, line))
        elif kind == "bad":
            raise TraceError(f"line {line}: unterminated string")
    return toks
