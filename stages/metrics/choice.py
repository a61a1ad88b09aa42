"""Multiple-choice formatting, reply parsing and letter accuracy (spec §10)."""

from . import MetricError

LETTERS = "ABCDE"


def option_letters(n: int) -> str:
    """The letters of n options, in order ("ABC" for 3); 1 to 5 options."""
    if not 1 <= n <= len(LETTERS):
        raise MetricError(f"multiple choice needs 1 to {len(LETTERS)} options, got {n}")
    return LETTERS[:n]


def format_choices(choices: list[str]) -> str:
    """Options as lines "A. first", "B. second", ..."""
    return "\n".join(f"{letter}. {text}" for letter, text in zip(option_letters(len(choices)), choices))


def parse_choice(reply: str, choices: list[str]) -> str | None:
    """The letter a reply picks among this sample's options, or None if unparsed."""
    reply = reply.strip()
    letters = option_letters(len(choices))
    if len(reply) == 1:
        return reply
    if reply and reply[0] in letters:
        return reply[0]
    for letter, text in zip(letters, choices):
        if text and text in reply:
            return letter
    return None


def choice_accuracy(reply: str, choices: list[str], gold_index: int) -> float:
    """1.0 if the parsed letter is the gold option's letter, else 0.0."""
    if not 0 <= gold_index < len(choices):
        raise MetricError(f"gold index {gold_index} is outside {len(choices)} options")
    return float(parse_choice(reply, choices) == option_letters(len(choices))[gold_index])
