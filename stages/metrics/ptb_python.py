"""A Java-free equivalent of pycocoevalcap's PTB caption tokenizer (spec §10), for machines without java.

pycocoevalcap runs the Stanford PTBTokenizer (CoreNLP 3.4.1, ``-preserveLines -lowerCase``) and then drops
the tokens in its punctuation list. This module writes those conventions down for caption text:

- lower case; ``n't`` and the clitics 's 're 've 'll 'd 'm are split off ("can't" -> "ca n't"), as are the
  halves of "cannot", "gonna", "gotta", "wanna";
- a word keeps its period when it is an abbreviation (a single letter, an initialism such as u.s. or t.v., or
  a listed abbreviation such as st. or etc.), and periods, colons and commas inside numbers stay (4:07, 3.69);
- a period joining two words with no space stays inside the token (track.passengers), as does a hyphen, a
  slash or an apostrophe between letters (t-shirt, black/white, o'clock);
- every other symbol is a token of its own; brackets become -lrb- -rrb- -lsb- -rsb- -lcb- -rcb- (lower-cased,
  so pycocoevalcap's list, which names them in upper case, keeps them), quotes become `` and '';
- then the punctuation tokens pycocoevalcap removes are removed.

Java's lexer also reads past the end of a caption into the next one: a caption-final upper-case initial
("a P.") keeps its period when the next caption starts in lower case and loses it otherwise. Captions are
tokenised one at a time here, as if the next one were capitalised, as most are.

It is a re-statement of the rules, not the lexer: ``bench/ptb_agreement.py`` measures how often it and the
Java tokenizer agree on a shared caption set, and by how much CIDEr-D differs (docs/dmole.md).
"""

from __future__ import annotations

import re

# pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS: tokens removed after tokenisation
REMOVED = frozenset(
    {"''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"}
)

# Words the PTB lexer keeps a period on: titles, street and company words, months, US states, Latin.
ABBREVIATIONS = frozenset(
    """
mr mrs ms dr prof sr jr st rev gov sen lt sgt capt cmdr adm maj hon messrs mme mlle
ave blvd rd hwy mt ft corp inc ltd bros dept univ assn
jan feb apr jun jul aug sep sept oct nov dec
ariz ark calif colo conn fla ga kan kans ky la md mich minn okla penn tenn tex va vt wis wyo
etc vs viz cf al approx esp nos figs
""".split()
)
# Abbreviations that are also words: their period is kept inside a caption, but ends it at its end.
WORDLIKE_ABBREVIATIONS = frozenset(
    "ala co col del fig gen ill ind mar mass miss mo mont neb nev no ore pa rep wash".split()
)

BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}

_QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
_SPLIT_WORDS = re.compile(r"\b(can)(not)\b|\b(gon|got|wan)(na|ta)\b", re.IGNORECASE)
_CLITICS = re.compile(r"(n't|'(?:s|re|ve|ll|d|m))\b", re.IGNORECASE)
_A = r"[^\W_]"  # a letter or digit, in any script
_TOKEN = re.compile(
    rf"""
    (?P<number>(?<!{_A})[+-]\d+(?:[.,:/]\d+)*|\d+(?:[.,:/]\d+)+)   # +9  4:07  3.69  1,000  1/2
  | (?P<initials>{_A}(?:\.{_A})+\.?(?!{_A}))              # U.S.  t.v.  p.m.  d.v.d
  | (?P<word>{_A}+(?:(?:[-/&.]|'(?={_A})){_A}+)*(?:\.(?!{_A}))?)   # t-shirt o'clock track.passengers St.
  | (?P<clitic>n't|'(?:s|re|ve|ll|d|m)\b)
  | (?P<dots>\.\.\.|--)
  | (?P<other>\S)
""",
    re.VERBOSE | re.IGNORECASE,
)
_ALNUM = re.compile(_A)


def _keeps_period(stem: str, last: bool) -> bool:
    """Whether a word (as written) ending in a period keeps it: an abbreviation does; at the caption's end an
    upper-case initial or a word-like abbreviation ends the sentence instead, and "I." never keeps it."""
    lower = stem.lower()
    if len(stem) == 1 and stem.isalpha():
        return lower != "i" and not (last and stem.isupper())
    return lower in ABBREVIATIONS or (lower in WORDLIKE_ABBREVIATIONS and not last)


def ptb_python_tokenize(text: str) -> str:
    """One caption, tokenised as pycocoevalcap's PTB tokenizer does; tokens joined by single spaces."""
    text = _SPLIT_WORDS.sub(lambda m: " ".join(g for g in m.groups() if g), text.translate(_QUOTES))
    text = _CLITICS.sub(r" \1", text)
    tokens: list[str] = []
    for match in _TOKEN.finditer(text):
        kind, value = match.lastgroup, match.group()
        if (
            kind == "word"
            and value.endswith(".")
            and not _keeps_period(value[:-1], last=_ALNUM.search(text, match.end()) is None)
        ):
            tokens += [value[:-1], "."]
        elif kind == "other":
            tokens.append(BRACKETS.get(value, "''" if value == '"' else value))
        else:
            tokens.append(value)
    return " ".join(token.lower() for token in tokens if token not in REMOVED)
