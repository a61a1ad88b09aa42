"""Meteor 1.5's WordNet synonym module, in Python: which words it counts as synonyms (stages/metrics/meteor_python.py).

Meteor's ``SynonymDictionary`` (edu/cmu/meteor/aligner/SynonymDictionary.java) reads three files of its jar:
``synonym/english.exceptions`` (pairs of lines: a base form, then its irregular forms), ``synonym/english.synsets``
(pairs of lines: a word, then its WordNet synset numbers) and the relations file, which it does not use. A word's
sets are its own synsets and its base form's: the exceptions' bases where it is an irregular form, else WordNet 3's
detachment rules (``morph``: the first suffix rule whose result is a known word; a word of 2 letters or ending in
"ss" is its own base; "...ful" keeps its "ful"). ``SynonymMatcher`` then pairs two *different* words whose sets
share a synset. The data is read from the jar that pycocoevalcap ships, once.
"""

from __future__ import annotations

import zipfile
from functools import lru_cache
from pathlib import Path

# WordNet 3's morphy detachment rules as the jar lists them: (suffix, replacement), nouns, verbs, adjectives
_RULES = [
    ("s", ""),
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("s", ""),
    ("ies", "y"),
    ("es", "e"),
    ("es", ""),
    ("ed", "e"),
    ("ed", ""),
    ("ing", "e"),
    ("ing", ""),
    ("er", ""),
    ("est", ""),
    ("er", "e"),
    ("est", "e"),
]


def _pairs(text: str) -> dict[str, list[str]]:
    lines = text.split("\n")
    return {lines[k]: lines[k + 1].split() for k in range(0, len(lines) - 1, 2) if lines[k]}


@lru_cache(maxsize=1)
def _tables() -> tuple[dict[str, frozenset[int]], dict[str, list[str]]]:
    import pycocoevalcap.meteor.meteor as meteor_module

    jar = Path(meteor_module.__file__).with_name("meteor-1.5.jar")
    with zipfile.ZipFile(jar) as archive:
        synsets = {
            word: frozenset(int(n) for n in numbers)
            for word, numbers in _pairs(archive.read("synonym/english.synsets").decode("utf-8")).items()
        }
        bases: dict[str, list[str]] = {}
        for base, forms in _pairs(archive.read("synonym/english.exceptions").decode("utf-8")).items():
            for form in forms:
                bases.setdefault(form, []).append(base)
    return synsets, bases


def _morph(word: str, synsets: dict[str, frozenset[int]]) -> str:
    end = "ful" if word.endswith("ful") else ""
    if word.endswith("ss") or len(word) <= 2:
        return word
    for suffix, replacement in _RULES:
        if word.endswith(suffix):
            base = word[: len(word) - len(suffix)] + replacement
            if base in synsets:
                return base + end
    return ""


@lru_cache(maxsize=65536)
def synonym_sets(word: str) -> frozenset[int]:
    """The synsets Meteor compares for ``word`` (its own and its base form's)."""
    synsets, bases = _tables()
    own = synsets.get(word, frozenset())
    if word in bases:
        stem = frozenset().union(*(synsets.get(base, frozenset()) for base in bases[word]))
    else:
        stem = synsets.get(_morph(word, synsets), frozenset())
    return own | stem


def are_synonyms(a: str, b: str) -> bool:
    """Whether the synonym module pairs two words (never the same word: the exact module does)."""
    return a != b and not synonym_sets(a).isdisjoint(synonym_sets(b))
