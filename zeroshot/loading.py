"""Model, tokenizer and config loading from a hub id or a local directory, with revision.

Never `trust_remote_code`; safetensors are preferred when the repository has them.
"""

from __future__ import annotations

import os

from zeroshot.errors import ModelLoadError


def _explain(model: str, revision: str | None, what: str, exc: Exception) -> ModelLoadError:
    where = f"{model!r}" + (f" at revision {revision!r}" if revision else "")
    if os.path.isdir(model):
        hint = f"the directory exists but holds no usable {what} ({exc})."
    else:
        hint = (
            "it is not a local directory, and the Hugging Face Hub could not be reached or has "
            f"no such repository ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            "Download it where the hub is reachable (huggingface-cli download "
            f"{model} --local-dir DIR) and pass the local path instead, e.g. --model DIR, "
            "or point HF_HOME at a cache that holds it."
        )
    return ModelLoadError(f"cannot load the {what} of {where}: {hint}")


def load_config(model: str, revision: str | None = None):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(model, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _explain(model, revision, "config", exc) from exc


def load_tokenizer(model: str, revision: str | None = None):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _explain(model, revision, "tokenizer", exc) from exc


def load_model(model: str, revision: str | None, device, dtype):
    """The sequence-classification model, on `device` in `dtype`, in eval mode."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A per-tensor progress bar in every replica's and actor's log is noise, not information.
    hf_logging.disable_progress_bar()
    try:
        m = AutoModelForSequenceClassification.from_pretrained(
            model, revision=revision, dtype=dtype, trust_remote_code=False
        )
    except (OSError, ValueError) as exc:
        raise _explain(model, revision, "weights", exc) from exc
    return m.to(device).eval()
