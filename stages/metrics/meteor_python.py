"""A Java-free METEOR, for machines without java: Meteor 1.5's scoring with its exact-match module only.

pycocoevalcap's ``Meteor`` runs ``meteor-1.5.jar - - -stdio -l en -norm`` (Denkowski & Lavie, "Meteor Universal",
WMT 2014). Its score for a hypothesis h against a reference r, with English's parameters α = 0.85, β = 0.20,
γ = 0.60, δ = 0.75 and module weights w = (exact 1.0, stem 0.6, synonym 0.8, paraphrase 0.6):

    P = Σ_modules w·(δ·content matches in h + (1−δ)·function-word matches in h)
        / (δ·|h content| + (1−δ)·|h function|)
    R = the same over r
    Fmean = P·R / (α·P + (1−α)·R)
    Pen = γ·(chunks / mean matches)^β   (0 when h and r match whole, in one chunk)
    score = Fmean·(1 − Pen)

against several references the best one's statistics are kept, and the corpus score is this formula on the sums
of every segment's statistics (the jar's ``EVAL`` line, which pycocoevalcap reports), a segment matched whole in one
chunk adding no chunk (the jar zeroes its chunk count while scoring it).

Here the exact module aligns words, then the stem module (Snowball's English stemmer, from the snowballstemmer
package) aligns the words left, then the synonym module (the jar's WordNet synsets, meteor_synonyms.py) the words
left after that, each reference word taken greedily; the jar instead resolves all modules' candidate matches at
once. Its paraphrase module (a 62 MB phrase table) is not reproduced, so a hypothesis that says "rides along" for
"riding on" earns less than under java.
The function-word list is read from the jar that pycocoevalcap ships (``function/english.words``). The alignment
keeps the most matches and, among those, the fewest chunks, then the smallest total distance (the jar's order of
preference), searched exhaustively up to a node budget. ``bench/meteor_agreement.py`` measures the difference
from the jar on shared captions (docs/metrics.md).
"""

from __future__ import annotations

import re
import zipfile
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

ALPHA, BETA, GAMMA, DELTA = 0.85, 0.20, 0.60, 0.75
EXACT_WEIGHT, STEM_WEIGHT, SYNONYM_WEIGHT = 1.0, 0.6, 0.8
_SEARCH_BUDGET = 20000  # alignment nodes visited per segment before the best alignment so far is kept

# Meteor's -norm tokenisation (after NIST mteval): these symbols become tokens of their own; hyphens and
# apostrophes stay inside words; periods and commas split off unless a digit is on that side.
_SYMBOLS = re.compile(r"([{-~\[-` -&(-+:-@/])")
_PERIOD_COMMA_AFTER = re.compile(r"([^0-9])([.,])")
_PERIOD_COMMA_BEFORE = re.compile(r"([.,])([^0-9])")
_DASH_AFTER_DIGIT = re.compile(r"([0-9])(-)")


@lru_cache(maxsize=1)
def function_words() -> frozenset[str]:
    """English function words of Meteor 1.5, from the jar inside pycocoevalcap."""
    import pycocoevalcap.meteor.meteor as meteor_module

    jar = Path(meteor_module.__file__).with_name("meteor-1.5.jar")
    with zipfile.ZipFile(jar) as archive:
        text = archive.read("function/english.words").decode("utf-8")
    return frozenset(text.split())


def normalize(text: str) -> list[str]:
    """Lower-case and tokenise as Meteor's ``-norm`` does (the NIST rules)."""
    text = f" {text.lower()} "
    text = _SYMBOLS.sub(r" \1 ", text)
    text = _PERIOD_COMMA_AFTER.sub(r"\1 \2 ", text)
    text = _PERIOD_COMMA_BEFORE.sub(r" \1 \2", text)
    text = _DASH_AFTER_DIGIT.sub(r"\1 \2 ", text)
    return text.split()


@dataclass(frozen=True)
class Stats:
    """Sufficient statistics of one segment (or, summed, of a corpus)."""

    test_length: int = 0
    ref_length: int = 0
    test_function: int = 0
    ref_function: int = 0
    test_matched: float = 0.0  # Σ module weight × (δ for a content word, 1−δ for a function word), hypothesis
    ref_matched: float = 0.0  # the same, reference side
    chunks: int = 0
    matches: int = 0  # aligned word pairs

    def __add__(self, other: Stats) -> Stats:
        return Stats(*(a + b for a, b in zip(self.__dict__.values(), other.__dict__.values())))

    def score(self) -> float:
        """Meteor's score of these statistics."""
        if self.matches == 0:
            return 0.0
        test_weighted = DELTA * (self.test_length - self.test_function) + (1 - DELTA) * self.test_function
        ref_weighted = DELTA * (self.ref_length - self.ref_function) + (1 - DELTA) * self.ref_function
        precision, recall = self.test_matched / test_weighted, self.ref_matched / ref_weighted
        fmean = precision * recall / (ALPHA * precision + (1 - ALPHA) * recall)
        fragmentation = 0.0 if self.whole() else self.chunks / self.matches
        return fmean * (1 - GAMMA * fragmentation**BETA)

    def whole(self) -> bool:
        """Every word of both sides matched, in one chunk."""
        return self.matches == self.test_length == self.ref_length and self.chunks == 1

    def for_corpus(self) -> Stats:
        """These statistics as the jar adds them up: scoring a whole-matched segment sets its chunks to 0."""
        return replace(self, chunks=0) if self.whole() else self


def _chunks(pairs: list[tuple[int, int]]) -> int:
    """Runs of matches adjacent and in order on both sides; ``pairs`` sorted by hypothesis position."""
    return sum(1 for k, (i, j) in enumerate(pairs) if k == 0 or (i, j) != (pairs[k - 1][0] + 1, pairs[k - 1][1] + 1))


def align(test: list, ref: list, fixed: tuple[tuple[int, int], ...] = ()) -> list[tuple[int, int]]:
    """Pairs of equal keys (None never matches) with the most matches, then the fewest chunks of these pairs and
    ``fixed`` together, then the smallest total distance; ``fixed`` are an earlier module's pairs."""
    positions: dict[str, list[int]] = {}
    for j, key in enumerate(ref):
        if key is not None:
            positions.setdefault(key, []).append(j)
    keys = [k for k in test if k is not None]
    need = {k: min(c, len(positions.get(k, []))) for k, c in Counter(keys).items()}
    left_in_test = Counter(keys)
    best: list = [None, None]  # (chunks, distance), pairs
    visited = 0

    def search(i: int, pairs: list[tuple[int, int]], used: set[int], chunks: int, distance: int) -> None:
        nonlocal visited
        visited += 1
        if best[0] is not None and (visited > _SEARCH_BUDGET or (not fixed and (chunks, distance) >= best[0])):
            return
        if i == len(test):
            if fixed:
                chunks = _chunks(sorted([*fixed, *pairs]))
            if best[0] is None or (chunks, distance) < best[0]:
                best[0], best[1] = (chunks, distance), list(pairs)
            return
        key = test[i]
        if key is None:
            search(i + 1, pairs, used, chunks, distance)
            return
        left_in_test[key] -= 1
        if need[key] > 0:
            last = pairs[-1] if pairs else None
            options = [j for j in positions[key] if j not in used]
            options.sort(key=lambda j: (not (last and last == (i - 1, j - 1)), abs(i - j)))  # continue a chunk first
            for j in options:
                need[key] -= 1
                used.add(j)
                pairs.append((i, j))
                search(i + 1, pairs, used, chunks + (not (last and last == (i - 1, j - 1))), distance + abs(i - j))
                pairs.pop()
                used.discard(j)
                need[key] += 1
        if left_in_test[key] >= need[key]:  # leaving this one unmatched still allows the most matches
            search(i + 1, pairs, used, chunks, distance)
        left_in_test[key] += 1

    search(0, [], set(), 0, 0)
    return best[1]


@lru_cache(maxsize=1)
def _stemmer():
    """Snowball's English stemmer, the algorithm of the jar's stem module (org.tartarus.snowball)."""
    import snowballstemmer

    return snowballstemmer.stemmer("english")


def _synonym_pairs(h: list[str], r: list[str], taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """WordNet-synonym pairs among the words still unaligned, left to right: each hypothesis word takes the
    reference word that continues a chunk, else the nearest."""
    from .meteor_synonyms import are_synonyms

    pairs = sorted(taken)
    h_free = [i for i in range(len(h)) if i not in {i for i, _ in taken}]
    r_free = {j for j in range(len(r))} - {j for _, j in taken}
    found = []
    for i in h_free:
        options = [j for j in r_free if are_synonyms(h[i], r[j])]
        if options:
            aligned = dict(pairs)
            j = min(options, key=lambda j: (aligned.get(i - 1) != j - 1, abs(i - j)))
            found.append((i, j))
            pairs = sorted([*pairs, (i, j)])
            r_free.discard(j)
    return found


def segment_stats(test: str, ref: str) -> Stats:
    """Statistics of one hypothesis against one reference: exact matches, then stem matches of the rest, then
    synonym matches of the rest (module weights 1.0, 0.6, 0.8)."""
    h, r, function = normalize(test), normalize(ref), function_words()
    exact = align(h, r)
    h_left, r_left = {i for i, _ in exact}, {j for _, j in exact}
    stem = _stemmer().stemWords
    stems = align(
        [None if i in h_left else s for i, s in enumerate(stem(h))],
        [None if j in r_left else s for j, s in enumerate(stem(r))],
        tuple(exact),
    )
    synonyms = _synonym_pairs(h, r, exact + stems)
    pairs = sorted(exact + stems + synonyms)

    def weighted(side: list[str], positions: list[int]) -> float:
        return sum(DELTA if side[p] not in function else 1 - DELTA for p in positions)

    def matched(k: int) -> float:
        """Weighted matches on side k (0: hypothesis, 1: reference)."""
        side = (h, r)[k]
        return (
            EXACT_WEIGHT * weighted(side, [pair[k] for pair in exact])
            + STEM_WEIGHT * weighted(side, [pair[k] for pair in stems])
            + SYNONYM_WEIGHT * weighted(side, [pair[k] for pair in synonyms])
        )

    return Stats(
        test_length=len(h),
        ref_length=len(r),
        test_function=sum(w in function for w in h),
        ref_function=sum(w in function for w in r),
        test_matched=matched(0),
        ref_matched=matched(1),
        chunks=_chunks(pairs),
        matches=len(pairs),
    )


def best_stats(test: str, refs: list[str]) -> Stats:
    """The statistics against the reference that scores highest (the first on a tie)."""
    return max((segment_stats(test, ref) for ref in refs), key=lambda s: s.score())


def meteor_python(predictions: list[str], references: list[list[str]]) -> tuple[float, list[float]]:
    """Corpus METEOR (0-1, from summed statistics) and each segment's, as pycocoevalcap's Meteor returns them."""
    stats = [best_stats(p, refs) for p, refs in zip(predictions, references)]
    total = sum((s.for_corpus() for s in stats), Stats())
    return total.score(), [s.score() for s in stats]
