"""Text generation with a trained language model: :func:`sample` and :func:`generate`.

The model reads a fixed window of ``T`` token ids (its input shape ``[T]``) and
outputs one row of scores (logits) per position, shape ``(T, K)``. Sampling
repeats: take the last ``T`` tokens of prompt plus text so far (a shorter
context is right-padded; a causal model's score at the last real position does
not depend on the padding), divide the scores at that position by the
temperature, keep the ``top_k`` largest, and draw the next token from their softmax.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np

from layerkit.errors import DataError, LayerkitError

if TYPE_CHECKING:
    from layerkit.api.model import Model


class GenerateError(LayerkitError):
    """A generate request that cannot be carried out: bad settings, or a model that is no language model."""


def check_settings(length: int, temperature: float, top_k: int | None) -> None:
    """Refuse a negative length, a temperature that is not a positive finite number, a top-k under 1."""
    problems = []
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        problems.append(f"length: {length!r}; give the number of tokens to generate (0 or more)")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        problems.append(f"temperature: {temperature!r}; give a number above 0 (1 samples the model's own "
                        f"probabilities, lower is greedier)")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        problems.append(f"top_k: {top_k!r}; give 1 or more (1 always takes the most likely token)")
    if problems:
        raise GenerateError("\n".join(problems))


def sample(predict: Callable[[np.ndarray], np.ndarray], prompt: np.ndarray, length: int, window: int, *,
           temperature: float = 1.0, top_k: int | None = None, seed: int | None = None, pad: int = 0) -> np.ndarray:
    """``length`` token ids drawn after ``prompt`` (int64, at least one id). ``predict`` maps an int64
    batch ``(1, window)`` to scores ``(1, window, K)``; ``pad`` fills a context shorter than the window."""
    check_settings(length, temperature, top_k)
    tokens = [int(t) for t in np.asarray(prompt, dtype=np.int64).ravel()]
    if not tokens:
        raise GenerateError("the prompt is empty; give at least one token to start from")
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(length):
        context = tokens[-window:]
        x = np.full((1, window), pad, dtype=np.int64)
        x[0, :len(context)] = context
        scores = np.asarray(predict(x))
        if scores.ndim != 3 or scores.shape[:2] != (1, window):
            raise GenerateError(f"the model outputs {tuple(scores.shape[1:])} per sample, not one row of scores per "
                                f"token ({window}, K): generate needs a language model")
        logits = scores[0, len(context) - 1].astype(np.float64) / temperature
        if top_k is not None and top_k < len(logits):
            cut = np.partition(logits, -top_k)[-top_k]
            logits = np.where(logits >= cut, logits, -np.inf)
        logits -= logits.max()
        p = np.exp(logits)
        p /= p.sum()
        token = int(rng.choice(len(p), p=p))
        tokens.append(token)
        out.append(token)
    return np.asarray(out, dtype=np.int64)


def generate(model: Model, prompt: str, length: int = 200, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None) -> str:
    """The text ``model`` (a trained language model) writes after ``prompt`` (see :meth:`Model.generate`)."""
    check_settings(length, temperature, top_k)
    pre = model.preprocessing
    vocab = None if pre is None else pre.vocabulary
    if vocab is None:
        raise GenerateError(f"{model.source}: model {model.name!r} has no vocabulary (it was not trained on the text "
                            f"dataset), so there is no text to generate; train a language model on text first")
    if vocab.unit == "token":
        raise GenerateError(f"{model.source}: model {model.name!r} was trained on a synthetic task's tokens, not "
                            f"on text; generate writes text")
    if len(model.input_shape) != 1:
        raise GenerateError(f"{model.source}: model {model.name!r} takes inputs of shape {list(model.input_shape)}, "
                            f"not a window of tokens [T]")
    if not isinstance(prompt, str):
        raise GenerateError(f"prompt: expected text, got {type(prompt).__name__}")
    if not prompt:
        raise GenerateError("prompt: empty; give at least one character to start from")
    try:
        ids = vocab.encode(prompt, "prompt")
    except DataError as exc:
        raise GenerateError(str(exc)) from None
    model._warn_if_untrained("its text")
    window = int(model.input_shape[0])
    out = sample(lambda x: model.net.predict(x, 1), ids, length, window, temperature=temperature, top_k=top_k,
                 seed=seed, pad=vocab.padding or 0)
    return vocab.decode(out)


__all__ = ["GenerateError", "generate", "sample", "check_settings"]
