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

# Where each family's adapter class lives (module.Class under stages/models). A family's module imports that
# family's transformers classes, so a process imports only the family it loads (registry.family_adapter).
ADAPTERS: dict[str, str] = {
    "llava": "llava.LlavaAdapter",
    "llava_next": "llava.LlavaNextAdapter",
    "llava_onevision": "llava.LlavaOnevisionAdapter",
    "internvl": "internvl.InternVLAdapter",
    "qwen2vl": "qwen.Qwen2VLAdapter",
    "qwen2_5_vl": "qwen.Qwen25VLAdapter",
    "qwen3_vl": "qwen.Qwen3VLAdapter",
    "smolvlm": "idefics3.SmolVLMAdapter",
    "idefics3": "idefics3.Idefics3Adapter",
    "gemma3": "gemma3.Gemma3Adapter",
}


def family_list() -> str:
    return ", ".join(MODEL_TYPES)
