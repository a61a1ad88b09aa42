"""The family adapter: one object that knows a multimodal model's layers, candidate
modules, input builders and sequence representation (spec dmole.md §2-§3)."""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as transformers_logging

from ..errors import UserError

# The stages draw their own progress bars; transformers' per-load and per-save bars would only add noise.
transformers_logging.disable_progress_bar()

IGNORE = -100
IMAGE_PLACEHOLDER = "<image>"  # how the data marks the image in the first human turn

# The three families' LMs (Llama, Qwen2, Qwen2-VL text) share these names.
LM_LAYERS = r"model\.language_model\.layers"
LM_ATTENTION = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o"}
LM_MLP = {"mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_up", "mlp.down_proj": "mlp_down"}
VIT_MLP = {"mlp.fc1": "mlp_up", "mlp.fc2": "mlp_down"}


class ModelFamilyError(UserError):
    """A user-facing, one-line error about a model folder or family."""


@dataclass(frozen=True)
class Candidate:
    """One nn.Linear that may host an expert."""

    name: str
    tower: str
    layer: int
    kind: str
    d_in: int
    d_out: int


@dataclass
class ChatExample:
    """One training sample: an image and (human, gpt) turns; turn 1 holds "<image>"."""

    image: Image.Image
    turns: list[tuple[str, str]]


def layers_reaching(feature_layer: int | list[int], n_layers: int) -> int:
    """How many leading encoder layers feed `hidden_states[feature_layer]` (index 0 = embeddings)."""
    indices = [feature_layer] if isinstance(feature_layer, int) else feature_layer
    return max(i if i >= 0 else n_layers + 1 + i for i in indices)


def _pad(rows: list[list[int]], value: int, left: bool, extra: int = 0) -> Tensor:
    width = max(map(len, rows)) + extra
    return torch.tensor([[value] * (width - len(r)) + r if left else r + [value] * (width - len(r)) for r in rows])


class FamilyAdapter:
    """Family-independent logic; subclasses name their modules and build pixel inputs."""

    family: ClassVar[str]
    model_type: ClassVar[str]  # config.json `model_type`
    model_class: ClassVar[type[PreTrainedModel]]
    image_processor_class: ClassVar[type]
    vision_layers_path: ClassVar[str]  # regex of the vision layers' ModuleList
    vision_attention: ClassVar[dict[str, str]]  # module suffix -> kind
    vision_mlp: ClassVar[dict[str, str]] = VIT_MLP
    image_markup: ClassVar[str]  # what the chat template writes for one image

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, image_processor) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    # ---- family hooks --------------------------------------------------------------
    def _pixels(self, images: list[Image.Image]) -> tuple[dict[str, Tensor], list[int]]:
        """Model pixel inputs for one thumbnail per image, and each image's feature count."""
        raise NotImplementedError

    def _image_span(self, n_features: int) -> str:
        """The text that replaces `image_markup` for an image with n features."""
        raise NotImplementedError

    def _run_vision(self, pixels: dict[str, Tensor]) -> None:
        """Run the vision encoder on `_pixels` output (its last layer is hooked)."""
        raise NotImplementedError

    def _extra_inputs(self, input_ids: Tensor) -> dict[str, Tensor]:
        """Inputs besides ids, mask and pixels that the family's forward needs."""
        return {}

    def _thumbnail_size(self) -> int:
        """Side of the encoder's native square input."""
        raise NotImplementedError

    def _vision_layers_used(self) -> int:
        """Leading vision layers whose output reaches the projector."""
        return len(self.vision_layers())

    @property
    def d_vision(self) -> int:
        """Width of the vision encoder's layer states."""
        return self.model.config.vision_config.hidden_size

    # ---- model structure -----------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def d_language(self) -> int:
        return self.model.config.text_config.hidden_size

    @property
    def lm_body(self) -> nn.Module:
        """The decoder stack with its final norm, without the LM head."""
        return self.model.model.language_model

    def _module_list(self, path: str) -> nn.ModuleList:
        found = [m for n, m in self.model.named_modules() if re.fullmatch(path, n) and isinstance(m, nn.ModuleList)]
        if len(found) != 1:
            raise ModelFamilyError(f"{self.family}: expected one layer list matching {path!r}, found {len(found)}")
        return found[0]

    def vision_layers(self) -> nn.ModuleList:
        return self._module_list(self.vision_layers_path)

    def language_layers(self) -> nn.ModuleList:
        return self._module_list(LM_LAYERS)

    def candidates(self, include_mlp: bool = False) -> list[Candidate]:
        """Attention in/out projections (and optionally MLPs) of every layer of both towers."""
        towers = [
            ("vision", self.vision_layers_path, self.vision_attention | (self.vision_mlp if include_mlp else {})),
            ("language", LM_LAYERS, LM_ATTENTION | (LM_MLP if include_mlp else {})),
        ]
        modules = dict(self.model.named_modules())
        used_vision = self._vision_layers_used()
        ranked: list[tuple[tuple[int, int, int], Candidate]] = []
        for rank, (tower, path, kinds) in enumerate(towers):
            for order, (suffix, kind) in enumerate(kinds.items()):
                pattern = re.compile(rf"{path}\.(\d+)\.{re.escape(suffix)}")
                hits = [(int(m.group(1)), name) for name in modules if (m := pattern.fullmatch(name))]
                if not hits:
                    raise ModelFamilyError(f"{self.family}: no module matches {pattern.pattern!r}")
                for layer, name in hits:
                    module = modules[name]
                    if not isinstance(module, nn.Linear):
                        raise ModelFamilyError(f"{self.family}: {name} is {type(module).__name__}, not nn.Linear")
                    if tower == "vision" and layer >= used_vision:
                        continue
                    candidate = Candidate(name, tower, layer, kind, module.in_features, module.out_features)
                    ranked.append(((rank, layer, order), candidate))
        return [c for _, c in sorted(ranked, key=lambda item: item[0])]

    # ---- prompts and token ids -----------------------------------------------------
    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _user(text: str, image: bool) -> dict:
        parts = [{"type": "text", "text": text.replace(IMAGE_PLACEHOLDER, "").strip()}]
        return {"role": "user", "content": ([{"type": "image"}] if image else []) + parts}

    @staticmethod
    def _assistant(text: str) -> dict:
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    def _through_turn_end(self, ids: list[int]) -> list[int]:
        """Cut ids after the first end-of-turn token (kept whole if there is none)."""
        end = self.tokenizer.eos_token_id
        return ids[: ids.index(end) + 1] if end in ids else ids

    def _expand_image(self, text: str, n_features: int) -> str:
        if text.count(self.image_markup) != 1:
            raise ModelFamilyError(f"{self.family}: the chat template must write {self.image_markup!r} exactly once")
        return text.replace(self.image_markup, self._image_span(n_features))

    def _segments(self, turns: list[tuple[str, str]]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is_answer) pieces, in order."""
        messages: list[dict] = []
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, (human, gpt) in enumerate(turns):
            messages.append(self._user(human, image=i == 0))
            prompt = self._render(messages, generation_prompt=True)
            messages.append(self._assistant(gpt))
            full = self._render(messages, generation_prompt=False)
            if not (prompt.startswith(done) and full.startswith(prompt)):
                raise ModelFamilyError(f"{self.family}: chat template renders turns inconsistently")
            pieces += [(prompt[len(done):], False), (full[len(prompt):], True)]
            done = full
        return pieces

    def user_turn_ids(self, text: str) -> list[int]:
        """The user turn alone as the template renders it, through its end-of-turn token."""
        before = [self._user("x", image=False), self._assistant("x")]
        head = self._render(before, generation_prompt=False)
        full = self._render([*before, self._user(text, image=False)], generation_prompt=False)
        return self._through_turn_end(self._ids(full[len(head):]))

    # ---- batches -------------------------------------------------------------------
    def train_batch(self, examples: list[ChatExample]) -> dict[str, Tensor]:
        """Right-padded inputs with labels on answer tokens and their end-of-turn token."""
        pixels, counts = self._pixels([ex.image for ex in examples])
        rows, labels = [], []
        for ex, n in zip(examples, counts):
            ids, lab = [], []
            for k, (text, answer) in enumerate(self._segments(ex.turns)):
                piece = self._ids(self._expand_image(text, n) if k == 0 else text)
                kept = len(self._through_turn_end(piece)) if answer else 0
                ids += piece
                lab += piece[:kept] + [IGNORE] * (len(piece) - kept)
            rows.append(ids)
            labels.append(lab)
        return self._batch(rows, pixels, left=False, labels=labels)

    def generation_batch(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Tensor]:
        """Left-padded prompts ending with the generation prompt."""
        pixels, counts = self._pixels(images)
        rows = [
            self._ids(self._expand_image(self._render([self._user(p, image=True)], generation_prompt=True), n))
            for p, n in zip(prompts, counts)
        ]
        return self._batch(rows, pixels, left=True)

    def _batch(self, rows, pixels, left: bool, labels=None) -> dict[str, Tensor]:
        # Generation prompts always get one padding column, for the reason given in
        # text_features: a prompt then decodes identically alone and in any batch.
        extra = 1 if left else 0
        input_ids = _pad(rows, self.tokenizer.pad_token_id, left, extra)
        batch = {
            "input_ids": input_ids,
            "attention_mask": _pad([[1] * len(r) for r in rows], 0, left, extra),
            **pixels,
            **self._extra_inputs(input_ids),
        }
        if labels is not None:
            batch["labels"] = _pad(labels, IGNORE, left)
        return self._on_device(batch)

    def _on_device(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Move to the model's device; floating tensors also take its dtype."""
        return {k: v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)
                for k, v in tensors.items()}

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor | None:
        """Sample index of each row of the vision tower's activations, when rows are not samples.

        None means one image per sample along the batch axis (LLaVA, InternVL without tiling).
        """
        return None

    def decode_new_tokens(self, output_ids: Tensor, prompt_len: int) -> list[str]:
        texts = self.tokenizer.batch_decode(output_ids[:, prompt_len:], skip_special_tokens=True)
        return [t.strip() for t in texts]

    # ---- sequence representation (spec §3) ----------------------------------------
    @contextmanager
    def _eval_mode(self):
        was_training = self.model.training
        self.model.eval()
        try:
            yield
        finally:
            self.model.train(was_training)

    @torch.no_grad()
    def vision_features(self, images: list[Image.Image]) -> Tensor:
        """[B, d_V] fp32: last encoder layer (pre post-norm, pre projector), max over all tokens."""
        side = self._thumbnail_size()
        thumbs = [im.convert("RGB").resize((side, side), Image.Resampling.BICUBIC) for im in images]
        captured: list[Tensor] = []
        hook = self.vision_layers()[-1].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            with self._eval_mode():
                self._run_vision(self._on_device(self._pixels(thumbs)[0]))
        finally:
            hook.remove()
        states = captured[-1].reshape(len(images), -1, captured[-1].shape[-1])  # Qwen2-VL packs images
        return states.amax(dim=1).float()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> Tensor:
        """[B, d_L] fp32: the user turn alone through the LM body, max over non-padding positions."""
        rows = [self.user_turn_ids(t) for t in texts]
        # One padding column always: attention then always takes its masked path, so a
        # text's feature is bit-identical alone or in any batch (sdpa's unmasked causal
        # path rounds differently).
        ids = _pad(rows, self.tokenizer.pad_token_id, left=False, extra=1).to(self.device)
        mask = _pad([[1] * len(r) for r in rows], 0, left=False, extra=1).to(self.device)
        with self._eval_mode():
            states = self.lm_body(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.float().masked_fill(~mask.bool()[..., None], float("-inf")).amax(dim=1)

    # ---- persistence ---------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        """A normal HF folder: model, tokenizer (with chat template), image processor."""
        self.model.save_pretrained(out_dir)
        self.tokenizer.save_pretrained(out_dir)
        self.image_processor.save_pretrained(out_dir)
