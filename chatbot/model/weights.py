"""The weights files of a model folder, checked before a model is built from them.

- `check_config_fits_weights`: config.json's sizes against the tensor shapes in the safetensors
  headers (read without reading a tensor), so a config that does not describe its weights is
  named field by field instead of failing deep in transformers, or building a model of the
  config's size first.
- `write_checksums` / `verify_checksums`: every weights file chatbot writes is listed with its
  SHA-256 in `weights.sha256` (the format `sha256sum -c` reads), and verified when the folder is
  loaded, so flipped bytes are reported, not trained on or chatted with. A folder without that
  file (another tool's, or one saved before chatbot wrote it) loads unchecked, as it always did.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from safetensors import SafetensorError, safe_open

CHECKSUMS = "weights.sha256"
_CHECKSUM_LINE = re.compile(r"([0-9a-f]{64}) [ *]([^/\\]+)")  # sha256sum's "<hex>  <name>"
_LAYER = re.compile(r"h\.(\d+)\.")
# save_pretrained's, shards too, and a LoRA adapter's (chatbot.model.lora)
_WEIGHTS_NAME = re.compile(r"model.*\.safetensors|pytorch_model.*\.bin|adapter_model\.safetensors")
_CHUNK = 1 << 20
_COPY_AGAIN = "copy the folder again from where it came from, or use another checkpoint"


def weights_files(folder: Path) -> list[Path]:
    """The weights files in `folder`: model.safetensors or its shards, pytorch_model.bin, or a LoRA
    adapter's adapter_model.safetensors."""
    return sorted(p for p in folder.iterdir() if p.is_file() and _WEIGHTS_NAME.fullmatch(p.name))


def header_shapes(folder: Path) -> dict[str, list[int]]:
    """Tensor name -> shape, from the headers of the folder's safetensors files ({} if it has none).

    Names lose a leading `transformer.`, as GPT2Model and GPT2LMHeadModel save them with and without.

    Raises:
        ValueError: naming a file whose header cannot be read.
    """
    shapes = {}
    for file in (p for p in weights_files(folder) if p.suffix == ".safetensors"):
        try:
            with safe_open(file, "pt") as f:
                for name in f.keys():
                    shapes[name.removeprefix("transformer.")] = f.get_slice(name).get_shape()
        except SafetensorError as e:
            raise ValueError(f"{file} could not be read ({' '.join(str(e).split())}); it may be truncated or "
                             f"damaged: {_COPY_AGAIN}") from None
    return shapes


def check_config_fits_weights(config, config_file: Path, shapes: dict[str, list[int]]) -> None:
    """Compare config.json's n_layer, n_embd, vocab_size, n_positions and n_inner with the weights'
    `header_shapes` (pytorch_model.bin has no header to read: transformers checks it as it loads).

    Raises:
        ValueError: naming `config_file`, the field, both values and the fix.
    """
    found = {}  # field -> (the value the weights were saved with, the tensor that shows it)
    layers = {int(m.group(1)) for name in shapes if (m := _LAYER.match(name))}
    if layers:
        found["n_layer"] = (max(layers) + 1, f"layers h.0 to h.{max(layers)}")
    for name in ("wte.weight", "tokens_embed.weight"):
        if name in shapes:
            found["vocab_size"] = (shapes[name][0], f"{name} of shape {shapes[name]}")
            found["n_embd"] = (shapes[name][1], f"{name} of shape {shapes[name]}")
    for name in ("wpe.weight", "positions_embed.weight"):
        if name in shapes:
            found["n_positions"] = (shapes[name][0], f"{name} of shape {shapes[name]}")
    if hasattr(config, "n_inner") and "h.0.mlp.c_fc.weight" in shapes:
        found["n_inner"] = (shapes["h.0.mlp.c_fc.weight"][1], f"h.0.mlp.c_fc.weight of shape "
                                                            f"{shapes['h.0.mlp.c_fc.weight']}")
    for field, (saved, shown_by) in found.items():
        value = getattr(config, field)
        if field == "n_inner" and value is None:
            value = 4 * config.n_embd  # GPT-2's default MLP width
        if value != saved:
            raise ValueError(
                f"{config_file}: {field} is {value}, but the weights were saved with {field} "
                f"{saved} ({shown_by}). Set \"{field}\": {saved} in config.json, or put back the "
                "config.json these weights came with")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB chunks (no more of it in memory at once)."""
    digest, buffer = hashlib.sha256(), bytearray(_CHUNK)
    view = memoryview(buffer)
    with open(path, "rb") as f:
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def weights_digests(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of every weights file in `folder`."""
    return {file.name: file_sha256(file) for file in weights_files(folder)}


def write_checksums(folder: Path) -> None:
    """List every weights file in `folder` with its SHA-256 in `CHECKSUMS`."""
    lines = [f"{digest}  {name}\n" for name, digest in weights_digests(folder).items()]
    (folder / CHECKSUMS).write_text("".join(lines), encoding="utf-8")


def recorded_checksums(folder: Path) -> dict[str, str] | None:
    """File name -> SHA-256 as `folder`'s `CHECKSUMS` records them; None if it has no such file.

    Raises:
        ValueError: for a malformed `CHECKSUMS`.
    """
    manifest = folder / CHECKSUMS
    if not manifest.is_file():
        return None
    recorded = {}
    for number, line in enumerate(manifest.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        match = _CHECKSUM_LINE.fullmatch(line)
        if match is None:
            raise ValueError(f"{manifest}: line {number} is not `<64 hex digits>  <file name>` as chatbot "
                             f"writes it ({line[:80]!r}); it is damaged: {_COPY_AGAIN} (or delete "
                             f"{CHECKSUMS} to load the weights unchecked)")
        recorded[match.group(2)] = match.group(1)
    return recorded


def verify_checksums(folder: Path) -> None:
    """Check each weights file listed in `folder`'s `CHECKSUMS` against its recorded SHA-256.

    Nothing to check (and no error) if the folder has no such file.

    Raises:
        ValueError: naming the damaged or missing weights file, or a malformed `CHECKSUMS`.
    """
    for name, expected in (recorded_checksums(folder) or {}).items():
        file = folder / name
        if not file.is_file():
            raise ValueError(f"{file} is missing: {CHECKSUMS} lists it as part of this model; {_COPY_AGAIN}")
        if file_sha256(file) != expected:
            raise ValueError(
                f"{file} is damaged: its SHA-256 differs from the one recorded in {CHECKSUMS} when chatbot "
                f"saved it, so some of its bytes changed since; {_COPY_AGAIN} (if you replaced the weights "
                f"on purpose, delete {CHECKSUMS})")


def verified_digests(folder: Path) -> dict[str, str]:
    """File name -> SHA-256 of the weights of a folder `verify_checksums` has just checked: those its
    `CHECKSUMS` records, read instead of hashing the weights a second time; without one, computed."""
    return recorded_checksums(folder) or weights_digests(folder)
