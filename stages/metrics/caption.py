"""Caption tokenisation and CIDEr-D (spec §10, captions)."""

import re
import shutil

from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from . import MetricError
from .ptb_python import ptb_python_tokenize

CAPTION_TOKENIZERS = ("simple", "ptb", "ptb-python")
# Not a tokenizer but a choice between two: ptb where java is, else ptb-python (said in one line).
PTB_ELSE_PYTHON = "ptb-else-python"

_CLITIC = re.compile(r"(n't|'s|'re|'ve|'ll|'d|'m)\b")
_PUNCT = re.compile(r"[,?!:;\"`()\[\]{}]|(?<!\d)\.|\.(?!\d)")
_DROPPED = {"-", "--", "...", "'"}


def simple_tokenize(text: str) -> str:
    """Tokenise with the Python `simple` tokenizer; tokens joined by single spaces."""
    text = _CLITIC.sub(r" \1 ", text.lower())
    text = _PUNCT.sub(" ", text)
    return " ".join(tok for tok in text.split() if tok not in _DROPPED)


def ptb_tokenize(texts: list[str]) -> list[str]:
    """Tokenise with pycocoevalcap's Stanford PTB tokenizer (needs java)."""
    if shutil.which("java") is None:
        raise MetricError(
            "the 'ptb' caption tokenizer needs java on PATH; use --caption-tokenizer ptb-python (its rules without "
            "java) or simple"
        )
    tokenized = PTBTokenizer().tokenize({i: [{"caption": t}] for i, t in enumerate(texts)})
    return [tokenized[i][0] for i in range(len(texts))]


def resolve_caption_tokenizer(name: str) -> tuple[str, str | None]:
    """The tokenizer ``name`` stands for, and a one-line notice when ``ptb-else-python`` falls back without java."""
    if name != PTB_ELSE_PYTHON:
        return name, None
    if shutil.which("java") is not None:
        return "ptb", None
    return "ptb-python", (
        "caption tokenizer: java is not on PATH, so CIDEr uses ptb-python (the PTB rules in "
        "Python; docs/dmole.md gives its measured difference from ptb) instead of ptb"
    )


def tokenize_captions(texts: list[str], tokenizer: str = "simple") -> list[str]:
    """Tokenise many captions with the named tokenizer ("simple", "ptb" or "ptb-python")."""
    if tokenizer == "simple":
        return [simple_tokenize(t) for t in texts]
    if tokenizer == "ptb":
        return ptb_tokenize(texts)
    if tokenizer == "ptb-python":
        return [ptb_python_tokenize(t) for t in texts]
    raise MetricError(f"unknown caption tokenizer {tokenizer!r}; choose one of {CAPTION_TOKENIZERS}")


def cider_d(
    predictions: list[str], references: list[list[str]], tokenizer: str = "simple"
) -> tuple[float, list[float]]:
    """CIDEr-D ×100 of the corpus and of each sample; IDF comes from these references."""
    if len(predictions) != len(references):
        raise MetricError(f"{len(predictions)} predictions but {len(references)} reference lists")
    if not predictions:
        raise MetricError("CIDEr-D needs at least one sample")
    if any(not refs for refs in references):
        raise MetricError("every caption sample needs at least one reference")
    flat_refs = [ref for refs in references for ref in refs]
    tokens = tokenize_captions(list(predictions) + flat_refs, tokenizer)
    preds, ref_tokens = tokens[: len(predictions)], iter(tokens[len(predictions) :])
    gts = {i: [next(ref_tokens) for _ in refs] for i, refs in enumerate(references)}
    res = {i: [pred] for i, pred in enumerate(preds)}
    score, scores = Cider(n=4, sigma=6.0).compute_score(gts, res)
    return float(score) * 100.0, [float(s) * 100.0 for s in scores]
