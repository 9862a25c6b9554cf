"""A multimodal model loaded through mlx-vlm, prepared for the engine's generation loop.

``load_vlm(path, lazy_encoders=True)`` returns a ``VlmModel`` whose ``language`` is an
mlx-lm-shaped model (see ``language.py``) and whose ``tokenizer`` is mlx-lm's
``TokenizerWrapper``: text requests run exactly as for an mlx-lm model. A request with media
calls ``prepare(prompt_text, media)`` on the worker thread: it loads the towers it needs (once),
runs the model's processor (placeholder expansion, image resizing, audio features), encodes the
media and returns the expanded token ids plus the merged input embeddings for
``generate_step(..., input_embeddings=...)``.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

from ...errors import InvalidRequestError, ModelLoadError
from .inputs import AudioClip, MediaInputs
from .towers import TowerSet

log = logging.getLogger("lib_mlx.vlm")

_DEFAULT_SAMPLE_RATE = 16_000


@dataclass
class PreparedPrompt:
    """A prompt with its media encoded. ``input_embeddings`` is ``(len(tokens), hidden)``."""

    tokens: list[int]
    input_embeddings: Any  # mx.array | None
    image_tokens: int = 0  # placeholder (soft) tokens that carry image features
    audio_tokens: int = 0
    towers_loaded: list[str] = field(default_factory=list)  # loaded by this request
    # Models with bidirectional attention over an image need each image inside one prefill
    # chunk; None means the engine's default chunking is fine.
    prefill_step_size: int | None = None


def resample(samples: Any, rate: int, target: int) -> Any:
    """Polyphase resampling of mono float32 samples (scipy ships with mlx-vlm)."""
    import numpy as np

    if rate == target:
        return np.asarray(samples, dtype=np.float32)
    from scipy.signal import resample_poly

    g = gcd(int(rate), int(target))
    return resample_poly(np.asarray(samples, dtype=np.float32), target // g, rate // g).astype(np.float32)


class VlmModel:
    """One multimodal model: mlx-vlm's model and processor, its towers' residency, and the
    mlx-lm-shaped language model the engine generates with."""

    def __init__(
        self,
        path: Path,
        config: dict[str, Any],
        model: Any,
        processor: Any,
        tokenizer: Any,
        *,
        lazy_encoders: bool,
    ) -> None:
        from .language import LanguageModel

        self.path = path
        self.config = config
        self.model = model
        self.processor = processor
        self.tokenizer = tokenizer
        self.lazy_encoders = lazy_encoders
        self.towers = TowerSet(model, lazy=lazy_encoders, path=path)
        mc = model.config
        self.image_token_id: int | None = getattr(mc, "image_token_id", None)
        self.audio_token_id: int | None = getattr(mc, "audio_token_id", None)
        self.video_token_id: int | None = getattr(mc, "video_token_id", None)
        self.language = LanguageModel(model, (self.image_token_id, self.audio_token_id, self.video_token_id))
        hf_tok = getattr(processor, "tokenizer", processor)
        self.image_placeholder: str = getattr(processor, "image_token", None) or getattr(hf_tok, "image_token", "")
        self.audio_placeholder: str = getattr(processor, "audio_token", None) or getattr(hf_tok, "audio_token", "")
        kinds = self.towers.kinds
        self.capabilities = frozenset(m for m, k in (("image", "vision"), ("audio", "audio")) if k in kinds)
        fe = getattr(processor, "feature_extractor", None)
        self.audio_sample_rate: int = int(getattr(fe, "sampling_rate", _DEFAULT_SAMPLE_RATE) or _DEFAULT_SAMPLE_RATE)
        self.media_requests = 0

    # --- status (any thread; plain values only) -------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "capabilities": sorted(self.capabilities),
            "lazy_encoders": self.lazy_encoders,
            "towers": self.towers.status(),
            "media_requests": self.media_requests,
        }

    # --- worker thread ----------------------------------------------------------------------
    def check_media(self, media: MediaInputs) -> None:
        """Raise ``InvalidRequestError`` for media this model cannot take (no MLX needed)."""
        missing = sorted(media.kinds - self.capabilities)
        if missing:
            raise InvalidRequestError(
                f"this model does not accept {' or '.join(missing)} input (it accepts: "
                f"{', '.join(sorted(self.capabilities)) or 'text only'})",
                param="messages",
                code="unsupported_media",
            )

    def prepare(self, text: str, media: MediaInputs) -> PreparedPrompt:
        """Expand placeholders, encode the media and merge them into the prompt embeddings.

        ``text`` is the rendered chat prompt with one placeholder (``<|image|>``/``<|audio|>``
        for Gemma 4) per item of ``media``, in order. Runs on the engine's worker thread."""
        import mlx.core as mx

        self.check_media(media)  # before any tower loads for media the model cannot take
        loaded = self.towers.ensure_for_media(media.kinds)
        if loaded:
            log.info("loaded %s tower(s) for the first media request", ", ".join(loaded))
        inputs = self._processed(text, media)
        input_ids = inputs["input_ids"]
        kwargs = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        features = self.model.get_input_embeddings(input_ids=input_ids, **kwargs)
        embeddings = getattr(features, "inputs_embeds", features)[0]
        mx.eval(embeddings)
        tokens = input_ids[0].tolist()
        self.media_requests += 1
        n_image = tokens.count(self.image_token_id) if self.image_token_id is not None else 0
        n_audio = tokens.count(self.audio_token_id) if self.audio_token_id is not None else 0
        step = len(tokens) if n_image and self.language.bidirectional_vision else None
        return PreparedPrompt(
            tokens=tokens,
            input_embeddings=embeddings,
            image_tokens=n_image,
            audio_tokens=n_audio,
            towers_loaded=loaded,
            prefill_step_size=step,
        )

    def count_tokens(self, text: str, media: MediaInputs) -> int:
        """The prompt's length with its media expanded to their soft tokens (the processor
        only: no tower runs or loads)."""
        return int(self._processed(text, media)["input_ids"].shape[-1])

    def _processed(self, text: str, media: MediaInputs) -> dict[str, Any]:
        """The processor's inputs: placeholders expanded, images resized, audio features."""
        from mlx_vlm.utils import prepare_inputs

        self.check_media(media)
        for kind, items, placeholder in (
            ("image", media.images, self.image_placeholder),
            ("audio", media.audios, self.audio_placeholder),
        ):
            found = text.count(placeholder) if placeholder else 0
            if items and found != len(items):
                raise InvalidRequestError(
                    f"the prompt has {found} {kind} placeholder(s) for {len(items)} {kind} input(s); "
                    "the chat template must render every media part",
                    param="messages",
                )
        audios = [self._to_model_rate(clip) for clip in media.audios]
        try:
            return prepare_inputs(
                self.processor,
                images=list(media.images) or None,
                audio=audios or None,
                prompts=text,
                add_special_tokens=False,
                padding=False,
            )
        except (ValueError, TypeError, OSError) as exc:
            raise InvalidRequestError(f"the media could not be processed: {exc}", param="messages") from None

    def _to_model_rate(self, clip: AudioClip) -> Any:
        return resample(clip.samples, clip.sample_rate, self.audio_sample_rate)


def load_vlm(path: str | Path, *, lazy_encoders: bool = True) -> VlmModel:
    """Load a multimodal model directory with mlx-vlm. With ``lazy_encoders`` the vision and
    audio towers stay unread on disk until the first request with media."""
    path = Path(path)
    try:
        import mlx_vlm
        from mlx_lm.utils import load_tokenizer
    except ImportError as exc:  # the optional dependency is missing
        raise ModelLoadError(
            f"{path.name} has vision/audio towers and needs mlx-vlm (pip install 'lib_mlx[vision]'): {exc}"
        ) from None
    try:
        config = json.loads((path / "config.json").read_text())
        with warnings.catch_warnings():
            # Gemma 4's (real) audio settings: 128 mel bins over a 512-point FFT leave the
            # lowest filters empty, and transformers says so on every load.
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            model, processor = mlx_vlm.load(str(path), lazy=True)
        eos = config.get("eos_token_id") or (config.get("text_config") or {}).get("eos_token_id")
        tokenizer = load_tokenizer(path, eos_token_ids=eos)
        return VlmModel(path, config, model, processor, tokenizer, lazy_encoders=lazy_encoders)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load multimodal model from {path}: {type(exc).__name__}: {exc}") from None
