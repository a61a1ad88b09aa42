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
# A rendered conversation: its text, the character spans to supervise, where an EOS was inserted.
Rendered = tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]]

# The language models of every supported family (Llama, Mistral, Qwen2/3, Gemma 3) share these names.
LM_ATTENTION = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o"}
LM_MLP = {"mlp.gate_proj": "mlp_gate", "mlp.up_proj": "mlp_up", "mlp.down_proj": "mlp_down"}
# CLIP and SigLIP encoder layers.
CLIP_ATTENTION = {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.out_proj": "o"}
VIT_MLP = {"mlp.fc1": "mlp_up", "mlp.fc2": "mlp_down"}


class ModelFamilyError(UserError):
    """A user-facing, one-line error about a model folder or family."""


@dataclass(frozen=True)
class Candidate:
    """One nn.Linear that may host an expert, or a group of them read as one projection (``members``).

    A group is a layer's q, k and v projections fused back into the one input projection of the checkpoint they
    were split from (InternLM2's ``wqkv``, InternViT's ``attn.qkv``): named ``<attention>.qkv``, kind ``qkv``, with
    the shared input width and the summed output widths, so it scores, allocates and costs as the fused module.
    """

    name: str
    tower: str
    layer: int
    kind: str
    d_in: int
    d_out: int
    members: tuple[str, ...] = ()  # the nn.Linear modules of a group; empty: the candidate is the module ``name``

    @property
    def modules(self) -> tuple[str, ...]:
        """The nn.Linear modules this candidate is made of."""
        return self.members or (self.name,)


QKV = ("q", "k", "v")


def fuse_qkv(candidates: list[Candidate]) -> list[Candidate]:
    """Each layer's q, k and v candidates as one ``qkv`` group, in the place of its q; other candidates unchanged."""
    parts: dict[tuple[str, int], list[Candidate]] = {}
    for c in candidates:
        if c.kind in QKV:
            parts.setdefault((c.tower, c.layer), []).append(c)
    fused = []
    for c in candidates:
        if c.kind not in QKV:
            fused.append(c)
            continue
        group = sorted(parts[(c.tower, c.layer)], key=lambda m: QKV.index(m.kind))
        if c is not group[0]:
            continue
        if [m.kind for m in group] != list(QKV) or len({m.d_in for m in group}) != 1:
            raise ModelFamilyError(
                f"{c.tower} layer {c.layer}: q, k and v projections with one input width are "
                f"needed to fuse them, found {[(m.name, m.d_in) for m in group]}"
            )
        fused.append(
            Candidate(
                c.name.rsplit(".", 1)[0] + ".qkv",
                c.tower,
                c.layer,
                "qkv",
                c.d_in,
                sum(m.d_out for m in group),
                tuple(m.name for m in group),
            )
        )
    return fused


@dataclass
class ChatExample:
    """One training sample: an image and (human, gpt) turns; turn 1 holds "<image>"."""

    image: Image.Image
    turns: list[tuple[str, str]]


def layers_reaching(feature_layer: int | list[int], n_layers: int) -> int:
    """How many leading encoder layers feed `hidden_states[feature_layer]` (index 0 = embeddings)."""
    indices = [feature_layer] if isinstance(feature_layer, int) else feature_layer
    return max(i if i >= 0 else n_layers + 1 + i for i in indices)


def _prepend_padding(batch: dict[str, Tensor], pad_id: int) -> dict[str, Tensor]:
    """One more left padding column on every per-token tensor (ids take the pad id, masks 0)."""
    width = batch["input_ids"].shape
    return {
        key: torch.nn.functional.pad(value, (1, 0), value=pad_id if key == "input_ids" else 0)
        if value.shape == width
        else value
        for key, value in batch.items()
    }


def expand_to_square(image: Image.Image, fill: tuple[int, ...]) -> Image.Image:
    """The image centred on a square canvas of its longer side, the rest ``fill`` (LLaVA-1.5's
    ``--image_aspect_ratio pad``: nothing is cropped away by a square-resizing processor)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), fill)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


class FamilyAdapter:
    """Family-independent logic over the checkpoint's own model and processor.

    A family is a declaration: its classes, where its layer lists are, which projections are candidates
    and which vision layers reach the projector. Prompts, image inputs (tiling included) and labels come
    from the processor, so input ids equal ``processor.apply_chat_template(..., tokenize=True)``.
    """

    family: ClassVar[str]
    model_class: ClassVar[type[PreTrainedModel]]
    processor_class: ClassVar[type]
    vision_layers_path: ClassVar[str]  # regex of the vision layers' ModuleList
    vision_attention: ClassVar[dict[str, str]]  # module suffix -> kind
    vision_mlp: ClassVar[dict[str, str]] = VIT_MLP
    lm_path: ClassVar[str] = "model.language_model"  # the decoder stack with its final norm
    lm_input_norm: ClassVar[str] = "input_layernorm"
    # the modules (or parameters) that carry the vision features into the LM: what is tuned as "the projector"
    projector_paths: ClassVar[tuple[str, ...]] = ("model.multi_modal_projector",)
    image_handling: ClassVar[str]  # one line for the docs' family table

    def __init__(
        self, model: PreTrainedModel, processor, *, max_tiles: int | None = None, pad_to_square: bool = False
    ) -> None:
        self.model = model
        self.processor = processor
        self.pad_to_square = pad_to_square
        self._rendered: dict[tuple[tuple[str, str], ...], Rendered] = {}
        if max_tiles is not None:
            self._cap_tiles(max_tiles)

    def _rgb(self, images: list[Image.Image]) -> list[Image.Image]:
        """What the processor receives: RGB, padded to a square with its mean colour when asked."""
        rgb = [image.convert("RGB") for image in images]
        if not self.pad_to_square:
            return rgb
        fill = tuple(int(round(255 * m)) for m in self.image_processor.image_mean)
        return [expand_to_square(image, fill) for image in rgb]

    # ---- family hooks --------------------------------------------------------------
    def _cap_tiles(self, max_tiles: int) -> None:
        """Let the image processor cut an image into at most ``max_tiles`` tiles (no-op without tiling)."""

    def _thumbnail_inputs(self, images: list[Image.Image]) -> dict[str, Tensor]:
        """Vision-encoder inputs for one whole-image view per image (no tiles)."""
        return self.image_processor(images, return_tensors="pt")

    def _run_vision(self, pixels: dict[str, Tensor]) -> None:
        """Run the vision encoder on `_thumbnail_inputs` output (its last layer is hooked)."""
        self.model.model.get_image_features(**pixels)

    def _vision_layers_used(self) -> int:
        """Leading vision layers whose output reaches the projector."""
        return len(self.vision_layers())

    def vision_row_samples(self, batch: dict[str, Tensor]) -> Tensor | None:  # noqa: ARG002  (families override it)
        """Sample index of each row of the vision tower's activations, when rows are not samples
        (tiles, packed patches). None means one image per sample along the batch axis."""
        return None

    # ---- model structure -----------------------------------------------------------
    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.processor.tokenizer

    @property
    def image_processor(self):
        return self.processor.image_processor

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
    def d_vision(self) -> int:
        """Width of the vision encoder's layer states: what its attention output projection writes."""
        layer = self.vision_layers()[-1]
        suffix = next(s for s, kind in self.vision_attention.items() if kind == "o")
        return layer.get_submodule(suffix).out_features

    @property
    def lm_body(self) -> nn.Module:
        """The decoder stack with its final norm, without the LM head."""
        return self.model.get_submodule(self.lm_path)

    def _module_list(self, path: str) -> nn.ModuleList:
        found = [m for n, m in self.model.named_modules() if re.fullmatch(path, n) and isinstance(m, nn.ModuleList)]
        if len(found) != 1:
            raise ModelFamilyError(f"{self.family}: expected one layer list matching {path!r}, found {len(found)}")
        return found[0]

    @property
    def _lm_layers_path(self) -> str:
        return re.escape(self.lm_path) + r"\.layers"

    def vision_layers(self) -> nn.ModuleList:
        return self._module_list(self.vision_layers_path)

    def language_layers(self) -> nn.ModuleList:
        return self._module_list(self._lm_layers_path)

    def candidates(self, include_mlp: bool = False, fuse: bool = False) -> list[Candidate]:
        """Attention in/out projections (and optionally MLPs) of every layer of both towers; with ``fuse``, each
        layer's q, k and v as one ``qkv`` group (`fuse_qkv`)."""
        towers = [
            ("vision", self.vision_layers_path, self.vision_attention | (self.vision_mlp if include_mlp else {})),
            ("language", self._lm_layers_path, LM_ATTENTION | (LM_MLP if include_mlp else {})),
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
        ordered = [c for _, c in sorted(ranked, key=lambda item: item[0])]
        return fuse_qkv(ordered) if fuse else ordered

    # ---- chat template ---------------------------------------------------------------
    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @staticmethod
    def _user(text: str, image: bool) -> dict:
        parts = [{"type": "text", "text": text.replace(IMAGE_PLACEHOLDER, "").strip()}]
        return {"role": "user", "content": ([{"type": "image"}] if image else []) + parts}

    @staticmethod
    def _assistant(text: str) -> dict:
        return {"role": "assistant", "content": [{"type": "text", "text": text}]}

    @property
    def end_token_ids(self) -> list[int]:
        """Tokens that end an answer: the generation config's EOS ids and the tokenizer's EOS."""
        configured = self.model.generation_config.eos_token_id
        ids = configured if isinstance(configured, list) else [configured]
        return list(dict.fromkeys(i for i in [*ids, self.tokenizer.eos_token_id] if i is not None))

    def _through_turn_end(self, ids: list[int]) -> list[int]:
        """Cut ids after the first end-of-turn token (kept whole if there is none)."""
        ends = [ids.index(end) for end in self.end_token_ids if end in ids]
        return ids[: min(ends) + 1] if ends else ids

    def training_text(self, turns: list[tuple[str, str]]) -> Rendered:
        """The conversation as the chat template renders it, the character spans to supervise (each answer
        through the token that ends it), and where an EOS was inserted because the template writes none
        after an answer (llava-1.5's, as LLaVA's own training code does).

        Remembered per conversation: rendering is a pure function of the turns and the template, and it was a
        fifth to a quarter of building a training batch, so a sample is rendered in its first epoch only (under
        DataLoader workers, once per worker that builds it)."""
        key = tuple((human, gpt) for human, gpt in turns)
        rendered = self._rendered.get(key)
        if rendered is None:
            rendered = self._rendered[key] = self._render_training_text(key)
        return rendered

    def _render_training_text(self, turns: tuple[tuple[str, str], ...]) -> Rendered:
        ends = [self.tokenizer.convert_ids_to_tokens(i) for i in self.end_token_ids]
        messages: list[dict] = []
        rendered, text, spans, inserted = "", "", [], []
        for i, (human, gpt) in enumerate(turns):
            answer = gpt.strip()
            messages.append(self._user(human, image=i == 0))
            asked = self._render(messages, generation_prompt=False)
            messages.append(self._assistant(answer))
            full = self._render(messages, generation_prompt=False)
            found_at = full.find(answer, len(asked)) if answer else -1
            if not (asked.startswith(rendered) and full.startswith(asked)) or found_at < 0:
                raise ModelFamilyError(
                    f"{self.family}: the chat template does not render turns in order with each answer written verbatim"
                )
            stop = found_at + len(answer)
            # Supervise from the end of the generation prompt (a space before the answer is the model's to
            # write), or from the answer itself where the template renders the prompt differently.
            prompt = self._render(messages[:-1], generation_prompt=True)
            start = len(prompt) if full.startswith(prompt) and len(prompt) <= found_at else found_at
            found = [(full.find(end, stop), end) for end in ends if end in full[stop:]]
            text += full[len(rendered) : start]
            if found:
                at, end = min(found)
                spans.append((len(text), len(text) + at + len(end) - start))
                text += full[start:]
            else:
                inserted.append(len(text) + stop - start)
                spans.append((len(text), inserted[-1] + len(self.tokenizer.eos_token)))
                text += full[start:stop] + self.tokenizer.eos_token + full[stop:]
            rendered = full
        return text, tuple(spans), tuple(inserted)

    def user_turn_ids(self, text: str) -> list[int]:
        """The user turn alone as the template renders it, through its end-of-turn token."""
        before = [self._user("x", image=False), self._assistant("x")]
        head = self._render(before, generation_prompt=False)
        full = self._render([*before, self._user(text, image=False)], generation_prompt=False)
        return self._through_turn_end(self._ids(full[len(head) :]))

    # ---- batches -------------------------------------------------------------------
    def _process(self, texts: list[str], images: list[Image.Image], *, left: bool, **kwargs) -> dict:
        """The processor on rendered texts, one image each, exactly as its apply_chat_template calls it:
        special tokens are added unless the template already starts with BOS."""
        bos = self.tokenizer.bos_token
        return self.processor(
            text=texts,
            images=[[im] for im in self._rgb(images)],
            padding=True,
            padding_side="left" if left else "right",
            return_tensors="pt",
            add_special_tokens=not (bos and texts[0].startswith(bos)),
            **kwargs,
        )

    def train_batch(self, examples: list[ChatExample], max_length: int | None = None) -> dict[str, Tensor]:
        """`train_inputs` on the model's device."""
        return self.on_device(self.train_inputs(examples, max_length))

    def train_inputs(self, examples: list[ChatExample], max_length: int | None = None) -> dict[str, Tensor]:
        """Right-padded inputs (on the CPU) with labels on answer tokens and the token that ends each answer,
        each row cut to ``max_length`` tokens but never inside its image tokens (see `_truncate`)."""
        rendered = [self.training_text(ex.turns) for ex in examples]
        out = self._process(
            [text for text, _, _ in rendered],
            [ex.image for ex in examples],
            left=False,
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
        )
        offsets = out.pop("offset_mapping").tolist()
        replacements = out.pop("text_replacement_offsets")
        labels = torch.full_like(out["input_ids"], IGNORE)
        for row, (_, spans, _) in enumerate(rendered):
            for start, stop in (_expanded(span, replacements[row]) for span in spans):
                hit = [k for k, (a, b) in enumerate(offsets[row]) if a < stop and b > start]
                labels[row, hit] = out["input_ids"][row, hit]
        batch = {**out, "labels": labels}
        return self._truncate(batch, max_length) if max_length else batch

    def _truncate(self, batch: dict[str, Tensor], max_length: int) -> dict[str, Tensor]:
        """Cut each row after ``max_length`` tokens, or after its last image token if that comes later: the
        model needs every image token its pixels produce, and the text after the image is what may go."""
        ids = batch["input_ids"]
        image = ids == self.model.config.image_token_id
        last_image = torch.where(image.any(dim=1), image.int().cumsum(dim=1).argmax(dim=1) + 1, 0)
        keep = torch.clamp(last_image, min=max_length)
        cut = torch.arange(ids.shape[1])[None, :] >= keep[:, None]
        fill = {"input_ids": self.tokenizer.pad_token_id, "labels": IGNORE}
        width = int(torch.minimum(keep, batch["attention_mask"].sum(dim=1)).max())
        return {
            key: value.masked_fill(cut, fill.get(key, 0))[:, :width] if value.shape == ids.shape else value
            for key, value in batch.items()
        }

    def generation_batch(self, images: list[Image.Image], prompts: list[str]) -> dict[str, Tensor]:
        """Left-padded prompts ending with the generation prompt."""
        texts = [self._render([self._user(p, image=True)], generation_prompt=True) for p in prompts]
        # One more padding column always, for the reason given in text_features: a prompt then
        # decodes identically alone and in any batch.
        return self.on_device(
            _prepend_padding(dict(self._process(texts, images, left=True)), self.tokenizer.pad_token_id)
        )

    def on_device(self, tensors: dict[str, Tensor]) -> dict[str, Tensor]:
        """Move to the model's device (asynchronously from pinned memory); floating tensors also take its dtype."""
        return {
            k: v.to(self.device, self.dtype, non_blocking=True)
            if v.is_floating_point()
            else v.to(self.device, non_blocking=True)
            for k, v in tensors.items()
        }

    def decode_new_tokens(self, output_ids: Tensor, prompt_len: int) -> list[str]:
        texts = self.tokenizer.batch_decode(output_ids[:, prompt_len:], skip_special_tokens=True)
        return [t.strip() for t in texts]

    # ---- sequence representation (spec §3) ----------------------------------------
    @contextmanager
    def _eval_mode(self):
        if not self.model.training:  # already (a recursive eval() per batch cost a tenth of `embed`)
            yield
            return
        self.model.eval()
        try:
            yield
        finally:
            self.model.train()

    @torch.no_grad()
    def vision_features(self, images: list[Image.Image]) -> Tensor:
        """[B, d_V] fp32: last encoder layer (pre post-norm, pre projector) on the whole-image view
        (the thumbnail, never the tiles), max over all tokens."""
        captured: list[Tensor] = []
        hook = self.vision_layers()[-1].register_forward_hook(
            lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)
        )
        try:
            with self._eval_mode():
                self._run_vision(self.on_device(dict(self._thumbnail_inputs(self._rgb(images)))))
        finally:
            hook.remove()
        states = captured[-1].reshape(len(images), -1, captured[-1].shape[-1])  # packed families: one row a patch
        return states.amax(dim=1).float()

    @torch.no_grad()
    def text_features(self, texts: list[str]) -> Tensor:
        """[B, d_L] fp32: the user turn alone through the LM body, max over non-padding positions."""
        rows = [self.user_turn_ids(t) for t in texts]
        # One padding column always: attention then always takes its masked path, so a
        # text's feature is bit-identical alone or in any batch (sdpa's unmasked causal
        # path rounds differently).
        ids = _pad(rows, self.tokenizer.pad_token_id, extra=1).to(self.device)
        mask = _pad([[1] * len(r) for r in rows], 0, extra=1).to(self.device)
        with self._eval_mode():
            states = self.lm_body(input_ids=ids, attention_mask=mask).last_hidden_state
        return states.float().masked_fill(~mask.bool()[..., None], float("-inf")).amax(dim=1)

    # ---- the vision side's output, with gradients ------------------------------------
    def image_inputs(self, image: Image.Image) -> dict[str, Tensor]:
        """One image's whole-view encoder inputs, on the CPU; `image_tokens` takes a list of them."""
        return dict(self._thumbnail_inputs(self._rgb([image])))

    def image_tokens(self, inputs: list[dict[str, Tensor]], model: PreTrainedModel | None = None) -> list[Tensor]:
        """[tokens, d_L] per image: what the language model receives for each whole view (the projector's
        output), from ``model`` (default: this adapter's; a training loop passes the one it prepared). Inputs
        concatenate along their first axis: a batch axis, or packed patches with their grids. For the families
        whose whole view is all the projector needs, those `dmole synth` builds (LLaVA-1.5, InternVL, Qwen2-VL);
        tiling families also need their tiles' sizes."""
        batch = {key: torch.cat([one[key] for one in inputs]) for key in inputs[0]}
        return list((model or self.model).model.get_image_features(**self.on_device(batch)).pooler_output)

    def language_side(self) -> list[nn.Parameter]:
        """The language model's parameters: its body and output head (the rest is the vision side)."""
        return [p for _, p in self.named_language_side()]

    def named_language_side(self) -> list[tuple[str, nn.Parameter]]:
        """``language_side`` with the names ``model.named_parameters()`` gives them (a tied head appears once)."""
        head = self.model.get_output_embeddings()
        ours = {id(p) for p in [*self.lm_body.parameters(), *head.parameters()]}
        return [(n, p) for n, p in self.model.named_parameters() if id(p) in ours]

    def named_projector(self) -> list[tuple[str, nn.Parameter]]:
        """The projector's parameters by name, from the family's ``projector_paths``."""
        found = [
            (n, p)
            for n, p in self.model.named_parameters()
            if any(n == path or n.startswith(f"{path}.") for path in self.projector_paths)
        ]
        if not found:
            raise ModelFamilyError(f"{self.family}: no parameter under {', '.join(self.projector_paths)}")
        return found

    # ---- persistence ---------------------------------------------------------------
    def save(self, out_dir: Path) -> None:
        """A normal HF folder: model and processor (tokenizer with chat template, image processor)."""
        self.model.save_pretrained(out_dir)
        self.processor.save_pretrained(out_dir)


def _pad(rows: list[list[int]], value: int, extra: int = 0) -> Tensor:
    """Right-pad to the longest row plus ``extra`` columns."""
    width = max(map(len, rows)) + extra
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def _expanded(span: tuple[int, int], replacements: list[dict]) -> tuple[int, int]:
    """A character span of the rendered text moved past the placeholders the processor expanded before it."""

    def moved(char: int) -> int:
        return char + sum(r["new_span"][1] - r["span"][1] for r in replacements if r["span"][1] <= char)

    return moved(span[0]), moved(span[1])
