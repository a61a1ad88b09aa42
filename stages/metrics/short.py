"""Short-answer exact match (spec §10, short answer)."""


def exact_match(pred: str, refs: str | list[str]) -> float:
    """1.0 if the stripped, lower-cased prediction equals some reference, else 0.0."""
    if isinstance(refs, str):
        refs = [refs]
    pred = pred.strip().lower()
    return float(any(pred == ref.strip().lower() for ref in refs))
