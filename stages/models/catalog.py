"""The supported families and the config.json `model_type`s each one reads, without importing torch
(so `dmole init --help` can list them at once)."""

MODEL_TYPES: dict[str, tuple[str, ...]] = {
    "llava": ("llava",),
    "llava_next": ("llava_next",),
    "llava_onevision": ("llava_onevision",),
    "internvl": ("internvl",),
    "qwen2vl": ("qwen2_vl",),
    "qwen2_5_vl": ("qwen2_5_vl",),
    "qwen3_vl": ("qwen3_vl",),
    "smolvlm": ("smolvlm",),
    "idefics3": ("idefics3",),
    "gemma3": ("gemma3",),
}


def family_list() -> str:
    return ", ".join(MODEL_TYPES)
