"""Named graders: dmole's own (families.py), MCITlib's (mcitlib_rules.py) and CoIN's (coin_rules.py); and the rules
they and the plain text rules (text_rules.py: strict, normalised, numeric, token-f1) are scored with.

A grader picks a rule for each task: MCITlib's and CoIN's by the task's name in their benchmarks (UCIT, MLLM-DCL,
CoIN), else by dmole's task family where the toolkit's scripts grade that kind of answer the same way (MCITlib:
captions with its caption average, short answers and choices with its exact match; CoIN: 10-answer VQA with its
TextVQA rule, choices with its ScienceQA rule). ``score_rule`` returns what ``families.score_family`` returns:
(score 0-100, per-sample scores 0-100, parsed replies).
"""

from __future__ import annotations

from functools import partial

from . import GRADERS, MetricError, coin_rules, mcitlib_rules, text_rules
from .choice import option_letters
from .coco_caption import java_present
from .families import FAMILIES, score_family

Scored = tuple[float, list[float], list[str | None]]

_FAMILY_RULES = {
    "mcitlib": {"caption": mcitlib_rules.CAPTION_RULE, "short": "mcitlib-exact", "choice": "mcitlib-exact"},
    "coin": {"vqa10": "coin-textvqa", "choice": "coin-scienceqa"},
}
_TEXT_RULES = {name: partial(text_rules.score, name) for name in text_rules.RULES}  # (reply, sample) -> 0-1
_TASK_RULES = {"mcitlib": mcitlib_rules.TASK_RULES, "coin": coin_rules.TASK_RULES}
RULES = (
    *(f"dmole-{f}" for f in FAMILIES),
    *mcitlib_rules.RULES,
    mcitlib_rules.CAPTION_RULE,
    *coin_rules.RULES,
    *text_rules.RULES,
)


def rule_for(grader: str, family: str, task: str | None = None) -> str:
    """The rule ``grader`` scores a task of ``family`` (named ``task`` in its benchmark) with."""
    if grader == "dmole":
        return f"dmole-{family}"
    if grader not in _TASK_RULES:
        raise MetricError(f"unknown grader {grader!r}; choose one of {GRADERS}")
    if task in _TASK_RULES[grader]:
        return _TASK_RULES[grader][task]
    if family in _FAMILY_RULES[grader]:
        return _FAMILY_RULES[grader][family]
    raise MetricError(
        f"the {grader!r} grader has no rule for a {family!r} task"
        + (f" named {task!r}" if task else "")
        + "; its scripts grade no such answers"
    )


def check_name(name: str) -> str:
    """``name`` when it is a grader's or a rule's, else a one-line error listing both."""
    if name not in GRADERS and name not in RULES:
        raise MetricError(f"unknown grader or rule {name!r}; graders: {', '.join(GRADERS)}; rules: {', '.join(RULES)}")
    return name


def rule_named(name: str, family: str, task: str | None = None) -> str:
    """The rule ``name`` scores a task of ``family`` (named ``task``) with: a grader's rule for it, or the rule
    ``name`` itself."""
    return rule_for(name, family, task) if check_name(name) in GRADERS else name


def caption_backends() -> tuple[str, str, str | None]:
    """(tokenizer, METEOR) the caption rules use here, and a one-line notice when java is missing."""
    if java_present():
        return "ptb", "java", None
    return (
        "ptb-python",
        "python",
        (
            "caption metrics: java is not on PATH, so the PTB tokenizer and METEOR run "
            "in Python (docs/metrics.md gives their measured difference from java)"
        ),
    )


def caption_setting(rule: str, tokenizer: str) -> tuple[str, str | None]:
    """The caption tokenizer ``rule`` scores with when dmole's caption rule is given ``tokenizer`` ("" for a rule that
    scores no captions), and the notice ``caption_backends`` gives when MCITlib's runs without java."""
    if rule == "dmole-caption":
        return tokenizer, None
    if rule == mcitlib_rules.CAPTION_RULE:
        backend, _, notice = caption_backends()
        return backend, notice
    return "", None


def _gold_text(sample: dict) -> dict:
    """A dmole choice sample's gold index as its option letter, the answer MCITlib's files hold."""
    if isinstance(sample.get("answer"), int) and "choices" in sample:
        return {**sample, "answer": option_letters(len(sample["choices"]))[sample["answer"]]}
    return sample


def _best_answer(rule, reply: str, sample: dict) -> float:
    """A rule's 0-1 score of ``reply``; where the sample's ``answer`` is a list (dmole's short answers: the field's
    files hold one), its best over them."""
    if isinstance(sample.get("answer"), list):
        return max(rule(reply, {**sample, "answer": answer}) for answer in sample["answer"])
    return rule(reply, sample)


def _parsed(rule: str, reply: str) -> str | None:
    if rule in text_rules.RULES:
        return text_rules.parsed(rule, reply)
    if rule == "coin-scienceqa":
        return coin_rules.scienceqa_letter(reply)
    if rule == "coin-grounding":
        box = coin_rules.grounding_box(reply)
        return None if box is None else "[" + ", ".join(f"{v:g}" for v in box) + "]"
    return reply


def score_rule(
    rule: str, predictions: list[str], samples: list[dict], *, tokenizer: str | None = None, meteor: str | None = None
) -> Scored:
    """Score replies with a named rule; caption rules use ``caption_backends()`` unless told."""
    if len(predictions) != len(samples):
        raise MetricError(f"{len(predictions)} predictions but {len(samples)} samples")
    if not samples:
        raise MetricError(f"no samples to score with {rule!r}")
    if rule.startswith("dmole-"):
        return score_family(rule.removeprefix("dmole-"), predictions, samples, tokenizer or caption_backends()[0])
    if rule == mcitlib_rules.CAPTION_RULE:
        default_tokenizer, default_meteor, _ = caption_backends()
        refs = [s["references"] if "references" in s else s.get("answers") for s in samples]
        if any(not r for r in refs):
            raise MetricError("MCITlib's caption rule needs each sample's 'references'")
        score, per_sample, _ = mcitlib_rules.caption(
            predictions, refs, tokenizer=tokenizer or default_tokenizer, meteor=meteor or default_meteor
        )
        return score, per_sample, list(predictions)
    table = {**mcitlib_rules.RULES, **coin_rules.RULES, **_TEXT_RULES}
    if rule not in table:
        raise MetricError(f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    if rule.startswith("mcitlib-"):
        samples = [_gold_text(s) for s in samples]
    per_sample = [100.0 * _best_answer(table[rule], p, s) for p, s in zip(predictions, samples)]
    return sum(per_sample) / len(per_sample), per_sample, [_parsed(rule, p) for p in predictions]
