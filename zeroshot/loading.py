"""Model, tokenizer and config loading from a hub id or a local directory, with revision.

Never `trust_remote_code`; safetensors are preferred when the repository has them.

The Hugging Face Hub is asked once per process whether it answers at all (`hub_problem`), with
one short request and no retries, before anything is loaded from it. Without that, a machine
with no route to the hub waits through the hub client's retries on every file (about 25 s for
each of config, tokenizer and weights) before it learns what it could have learned at once.
When the hub does not answer, a model in the local cache loads from there; one that is not
there fails in seconds with the command that fixes it.
"""

from __future__ import annotations

import os
from typing import Any

from zeroshot.errors import ModelLoadError

# One request, no retries: refused or unresolvable fails at once, a black hole in this long.
PROBE_TIMEOUT_S = 5.0

# endpoint -> why the hub did not answer ("" when it did): asked once per process.
_probed: dict[str, str] = {}


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_problem() -> str | None:
    """Why the hub at HF_ENDPOINT cannot be reached (None when it answered, whatever the
    status): one HEAD request per process and endpoint, through the hub client's own HTTP
    session (its proxies and certificates)."""
    endpoint = _endpoint()
    if endpoint not in _probed:
        from huggingface_hub.utils import get_session

        try:
            get_session().head(f"{endpoint}/", timeout=PROBE_TIMEOUT_S)
            _probed[endpoint] = ""
        except Exception as exc:  # noqa: BLE001 - any failure to get an answer is the answer
            reason = str(exc).splitlines()[0][:200] if str(exc) else ""
            _probed[endpoint] = f"{type(exc).__name__}: {reason}".rstrip(": ")
    return _probed[endpoint] or None


def _cached(model: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(model, "config.json", revision=revision), str)
    except Exception:  # noqa: BLE001 - not a valid repo id: certainly not cached
        return False


def _where(model: str, revision: str | None) -> str:
    return f"{model!r}" + (f" at revision {revision!r}" if revision else "")


def download_hint(model: str, revision: str | None = None) -> str:
    """How to get the model onto this machine: THE wording every loading error uses."""
    rev = f" --revision {revision}" if revision else ""
    return (
        f"Download it where the hub is reachable (hf download {model}{rev} --local-dir DIR) "
        "and load the directory instead (--model DIR on the command line, the directory as "
        "the model in Python or a config); or fill this machine's cache "
        f"(hf download {model}{rev}, HF_HOME says where) and set HF_HUB_OFFLINE=1 so nothing "
        "asks the hub."
    )


def _source(model: str, revision: str | None) -> dict[str, Any]:
    """Extra `from_pretrained` arguments for where `model` can come from; raises at once when
    it can come from nowhere."""
    if os.path.isdir(model):
        return {}
    if model.startswith(("/", "./", "../", "~")):
        raise ModelLoadError(f"cannot load {_where(model, revision)}: no such directory.")
    if _offline():
        return {}  # the hub client will not ask the hub either
    problem = hub_problem()
    if problem is None:
        return {}
    if _cached(model, revision):
        # The cache has it; asking the hub for each file would only wait out its retries.
        return {"local_files_only": True}
    raise ModelLoadError(
        f"cannot load {_where(model, revision)}: it is not a local directory, it is not in "
        f"the local cache, and the Hugging Face Hub at {_endpoint()} does not answer "
        f"({problem}). " + download_hint(model, revision)
    )


def _explain(model: str, revision: str | None, what: str, exc: Exception) -> ModelLoadError:
    where = _where(model, revision)
    if os.path.isdir(model):
        hint = f"the directory exists but holds no usable {what} ({exc})."
    else:
        hint = (
            "it is not a local directory, and the Hugging Face Hub could not be reached or has "
            f"no such repository ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). "
            + download_hint(model, revision)
        )
    return ModelLoadError(f"cannot load the {what} of {where}: {hint}")


def check_model(model: str, revision: str | None = None) -> None:
    """Raise the `ModelLoadError` that `load_config` would, without importing transformers
    (which imports torch: seconds a process that only checks, like `zeroshot serve`'s driver
    before it starts Ray, should not spend): the config must be found and be JSON."""
    import json

    source = _source(model, revision)
    try:
        if os.path.isdir(model):
            path = os.path.join(model, "config.json")
        else:
            from huggingface_hub import hf_hub_download

            path = hf_hub_download(model, "config.json", revision=revision, **source)
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except Exception as exc:  # noqa: BLE001 - missing, unreachable or not JSON: explained
        raise _explain(model, revision, "config", exc) from exc


def load_config(model: str, revision: str | None = None):
    from transformers import AutoConfig

    source = _source(model, revision)
    try:
        return AutoConfig.from_pretrained(
            model, revision=revision, trust_remote_code=False, **source
        )
    except (OSError, ValueError) as exc:
        raise _explain(model, revision, "config", exc) from exc


def load_tokenizer(model: str, revision: str | None = None):
    from transformers import AutoTokenizer

    source = _source(model, revision)
    try:
        return AutoTokenizer.from_pretrained(
            model, revision=revision, trust_remote_code=False, **source
        )
    except (OSError, ValueError) as exc:
        raise _explain(model, revision, "tokenizer", exc) from exc


def load_model(model: str, revision: str | None, device, dtype):
    """The sequence-classification model, on `device` in `dtype`, in eval mode."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    # A per-tensor progress bar in every replica's and actor's log is noise, not information.
    hf_logging.disable_progress_bar()
    source = _source(model, revision)
    try:
        m = AutoModelForSequenceClassification.from_pretrained(
            model, revision=revision, dtype=dtype, trust_remote_code=False, **source
        )
    except (OSError, ValueError) as exc:
        raise _explain(model, revision, "weights", exc) from exc
    return m.to(device).eval()
