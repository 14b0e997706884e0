"""Model input specifications: parse them from flags, synthesize inputs from them, load user data for them.

A spec is `name:1x3x224x224:float32` on the command line. Integer specs may carry a value range
(`input_ids:1x16:int64:0-32000`) so that synthetic token ids stay inside the vocabulary.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tools.errors import CorruptFileError, InputSpecError, UnsafeFileError, first_line

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float64": torch.float64,
    "int64": torch.int64,
    "int32": torch.int32,
    "int8": torch.int8,
    "uint8": torch.uint8,
    "bool": torch.bool,
}
_ALIASES = {
    "float": "float32",
    "fp32": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
    "long": "int64",
    "int": "int64",
    "double": "float64",
}
_SPEC_RE = re.compile(
    r"^(?P<name>[A-Za-z_][\w.\-/]*):(?P<shape>[0-9]+(?:x[0-9]+)*):(?P<dtype>\w+)(?::(?P<lo>-?\d+)-(?P<hi>-?\d+))?$"
)


class InputSpec(BaseModel):
    """One named model input: shape for batch 1, dtype, and for integer inputs the half-open value range."""

    model_config = ConfigDict(frozen=True)

    name: str = Field(description="Input name as the model's forward() or ONNX graph knows it.")
    shape: tuple[int, ...] = Field(description="Concrete shape used for measurement (batch first).")
    dtype: str = Field(default="float32", description="One of: " + ", ".join(DTYPES))
    low: int | None = Field(default=None, description="Inclusive lower bound for synthetic integer values.")
    high: int | None = Field(default=None, description="Exclusive upper bound for synthetic integer values.")
    prefix: tuple[int, ...] = Field(
        default=(),
        description="Fixed leading values of the last dimension (image placeholder tokens); the rest is synthetic.",
    )

    @field_validator("dtype")
    @classmethod
    def _known_dtype(cls, value: str) -> str:
        value = _ALIASES.get(value.lower(), value.lower())
        if value not in DTYPES:
            raise ValueError(f"unknown dtype {value!r}; use one of {', '.join(DTYPES)}")
        return value

    @field_validator("shape")
    @classmethod
    def _positive_shape(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(d <= 0 for d in value):
            raise ValueError(f"every dimension must be positive, got {value}")
        return value

    @property
    def torch_dtype(self) -> torch.dtype:
        """The torch dtype of this input."""
        return DTYPES[self.dtype]

    @property
    def is_integer(self) -> bool:
        """Whether values are integers (token ids, masks), which synthesis draws from [low, high)."""
        return not (self.torch_dtype.is_floating_point or self.torch_dtype == torch.bool)

    def to_flag(self) -> str:
        """Render back to the `--input-shape` syntax."""
        text = f"{self.name}:{'x'.join(map(str, self.shape))}:{self.dtype}"
        if self.low is not None and self.high is not None:
            text += f":{self.low}-{self.high}"
        return text


def parse_input_spec(text: str) -> InputSpec:
    """Parse `name:1x3x224x224:float32[:low-high]` into an InputSpec, or raise InputSpecError naming the flaw."""
    match = _SPEC_RE.match(text.strip())
    if not match:
        raise InputSpecError(
            f"cannot parse input spec {text!r}",
            hint="write NAME:DIMxDIM...:DTYPE, for example pixel_values:1x3x224x224:float32 or input_ids:1x16:int64:0-32000",
        )
    low, high = match["lo"], match["hi"]
    try:
        return InputSpec(
            name=match["name"],
            shape=tuple(int(d) for d in match["shape"].split("x")),
            dtype=match["dtype"],
            low=int(low) if low is not None else None,
            high=int(high) if high is not None else None,
        )
    except ValueError as exc:
        raise InputSpecError(f"invalid input spec {text!r}: {exc}") from None


def synthesize_inputs(specs: Iterable[InputSpec], seed: int = 0) -> dict[str, torch.Tensor]:
    """Make deterministic random inputs matching `specs` (normal floats, integers in [low, high))."""
    generator = torch.Generator().manual_seed(seed)
    inputs: dict[str, torch.Tensor] = {}
    for spec in specs:
        if spec.torch_dtype == torch.bool:
            inputs[spec.name] = torch.ones(spec.shape, dtype=torch.bool)
        elif spec.is_integer:
            low = spec.low if spec.low is not None else 0
            high = spec.high if spec.high is not None else 2
            values = torch.randint(low, high, spec.shape, generator=generator, dtype=spec.torch_dtype)
            if spec.prefix:
                values[..., : len(spec.prefix)] = torch.tensor(spec.prefix, dtype=spec.torch_dtype)
            inputs[spec.name] = values
        else:
            inputs[spec.name] = torch.randn(spec.shape, generator=generator).to(spec.torch_dtype)
    return inputs


def load_input_data(path: Path) -> dict[str, torch.Tensor]:
    """Load a user's tensor dict from `.npz`, `.safetensors` or a weights-only `.pt`; nothing is executed."""
    path = Path(path)
    if not path.is_file():
        raise InputSpecError(f"data file not found: {path}")
    with path.open("rb") as handle:
        head = handle.read(8)
    try:
        if path.suffix == ".npz" or (head.startswith(b"PK") and _zip_is_npz(path)):
            with np.load(path, allow_pickle=False) as archive:
                return {name: torch.from_numpy(np.array(archive[name])) for name in archive.files}
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return dict(load_file(str(path)))
        if path.suffix in {".pt", ".pth", ".bin"}:
            try:
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # noqa: BLE001 - torch raises many types for unsafe/corrupt pickles
                raise UnsafeFileError(
                    f"{path.name} is not a weights-only tensor dict: {first_line(exc, 200)}",
                    hint="save the data with torch.save({name: tensor}) or as .npz/.safetensors",
                ) from None
            if isinstance(loaded, torch.Tensor):
                return {"input": loaded}
            if isinstance(loaded, dict) and all(isinstance(v, torch.Tensor) for v in loaded.values()):
                return {str(k): v for k, v in loaded.items()}
            raise InputSpecError(f"{path.name} holds {type(loaded).__name__}, expected a dict of tensors")
    except (InputSpecError, UnsafeFileError):
        raise
    except ValueError as exc:
        raise CorruptFileError(f"cannot read data file {path.name}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - numpy/safetensors raise assorted errors on corrupt files
        raise CorruptFileError(f"cannot read data file {path.name}: {type(exc).__name__}: {exc}") from None
    raise InputSpecError(
        f"unsupported data file {path.name}",
        hint="give a tensor dict as .npz, .safetensors or weights-only .pt",
    )


def _zip_is_npz(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except zipfile.BadZipFile:
        return False
    return bool(names) and all(name.endswith(".npy") for name in names)


def safe_input_name(key: str) -> str:
    """The spelling every runtime accepts for a dotted feature key (`observation.state` -> `observation_state`)."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", key)
    return name if not name[:1].isdigit() else f"_{name}"


def align_data(
    specs: Iterable[InputSpec],
    data: dict[str, torch.Tensor],
    aliases: dict[str, str] | None = None,
    history_steps: int | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Match a user's arrays to the model's inputs; return the arrays under the inputs' names and what was done.

    An input is found under its own name, under its alias (`aliases`: input name -> the key its framework uses,
    e.g. LeRobot's `observation.images.top` for `observation_images_top`), or under any key whose safe
    spelling (`safe_input_name`) is the input's name. With `history_steps` (a policy that takes the last T
    observations, shape (N, T, ...)), single frames (N, ...) are stacked into T copies of themselves, the way
    LeRobot's observation queue starts an episode. Arrays that are not inputs (labels) are kept as they are.
    """
    specs = list(specs)
    aliases = dict(aliases or {})
    aligned = dict(data)
    notes: list[str] = []
    for spec in specs:
        if spec.name in aligned:
            continue
        candidates = [key for key in (aliases.get(spec.name),) if key is not None and key in data]
        candidates += [key for key in data if key not in candidates and safe_input_name(key) == spec.name]
        if len(candidates) == 1:
            aligned[spec.name] = aligned.pop(candidates[0])
            notes.append(f"data array {candidates[0]!r} feeds input {spec.name!r}")
        elif len(candidates) > 1:
            raise InputSpecError(
                f"data arrays {', '.join(map(repr, candidates))} all spell input {spec.name!r}",
                hint="keep one array per input",
            )
    if history_steps and history_steps > 1:
        for spec in specs:
            value = aligned.get(spec.name)
            frames = len(spec.shape) >= 2 and spec.shape[1] == history_steps
            if value is not None and frames and tuple(value.shape[1:]) == tuple(spec.shape[2:]):
                aligned[spec.name] = (
                    value.unsqueeze(1).expand(-1, history_steps, *value.shape[1:]).contiguous()
                )
                notes.append(
                    f"input {spec.name!r}: single frames stacked into a history of {history_steps} copies "
                    "(as LeRobot's observation queue starts an episode)"
                )
    check_data_matches(specs, aligned, aliases)
    return aligned, notes


def check_data_matches(
    specs: Iterable[InputSpec], data: dict[str, torch.Tensor], aliases: dict[str, str] | None = None
) -> None:
    """Raise InputSpecError when user data lacks an input the model needs or has a wrong trailing shape."""
    specs = list(specs)
    aliases = aliases or {}

    def spelled(name: str) -> str:
        return f"{aliases[name]!r} (or {name!r})" if name in aliases else repr(name)

    for spec in specs:
        if spec.name not in data:
            raise InputSpecError(
                f"data has no array for input {spelled(spec.name)}; has: {', '.join(sorted(data)) or 'nothing'}; "
                f"the model takes: {', '.join(spelled(item.name) for item in specs)}",
                hint="name the arrays after the model's inputs (a LeRobot policy's feature keys work too)",
            )
        got = tuple(data[spec.name].shape)
        if got[1:] != spec.shape[1:]:
            raise InputSpecError(
                f"data array for {spelled(spec.name)} has shape {got}, the model expects "
                f"(N, {', '.join(map(str, spec.shape[1:]))})"
            )
