"""Reading ``params.yaml``, the single source of truth for every stage's settings.

Every value is checked where it is read (:class:`Section` and the ``check_*`` functions): its
type (an integer where an integer is meant) and its range (epochs >= 1, fractions in (0, 1],
sizes > 0), with one message naming the file and the dotted key, or the command-line option
when the value came from there."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """params.yaml is missing, malformed, lacks a section a stage needs, or holds a bad value
    (the message names the file and the dotted key, or the command-line option it came from)."""


def load_section(path: Path, *keys: str) -> dict[str, Any]:
    """The nested section ``keys`` of the YAML file at ``path`` (e.g. "synth", "nuscenes")."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: no such params file") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML ({exc})") from exc
    node: Any = data
    for i, key in enumerate(keys):
        if not isinstance(node, dict) or key not in node:
            raise ParamsError(f"{path}: missing section '{'.'.join(keys[: i + 1])}'")
        node = node[key]
    if not isinstance(node, dict):
        raise ParamsError(f"{path}: section '{'.'.join(keys)}' is not a mapping")
    return node


def with_profile(section: dict[str, Any], profile: str, dataset: str) -> dict[str, Any]:
    """``section`` with the overrides of ``section.profiles.<profile>.<dataset>`` applied
    (``model.profile: full`` switches every stage to the paper's settings in one step)."""
    merged = {k: v for k, v in section.items() if k != "profiles"}
    merged.update((section.get("profiles") or {}).get(profile, {}).get(dataset, {}) or {})
    return merged


def model_profile(params: Path, dataset: str) -> tuple[str, dict[str, Any]]:
    """(name, settings) of the model profile ``model.profile`` selects for ``dataset``."""
    sec = load_section(params, "model")
    name = str(sec.get("profile", "small"))
    try:
        return name, dict(sec["profiles"][name][dataset])
    except (KeyError, TypeError):
        raise ParamsError(f"{params}: no model profile '{name}' for {dataset}") from None


# ------------------------------------------------------------------------------------------------
# Values checked where they are read
# ------------------------------------------------------------------------------------------------

_MISSING: Any = object()


def _show(value: Any) -> str:
    return repr(value)


def check_int(value: Any, where: str, minimum: int | None = None) -> int:
    """``value`` as an int, else ParamsError ``<where>: <value> is not an integer`` (a bool, a
    float such as 2.5 or 2.0, a string such as ``four`` are refused: YAML reads ``epochs: 2.5``
    as a float, and a silent ``int()`` would train 2 epochs). ``minimum``: the least value allowed.
    ``where`` names the source: ``params.yaml: pretrain.epochs`` or ``--epochs``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ParamsError(f"{where}: {_show(value)} is not an integer")
    if minimum is not None and value < minimum:
        raise ParamsError(f"{where}: {_show(value)} is not >= {minimum}")
    return int(value)


def check_float(value: Any, where: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False) -> float:
    """``value`` as a finite float within [low, high] (``low_open`` / ``high_open``: that end
    excluded), else ParamsError naming ``where``. A number or a string that reads as one (PyYAML
    reads ``1e-3`` without a dot as a string); a bool, NaN or inf is refused."""
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ParamsError(f"{where}: {_show(value)} is not a number") from None
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise ParamsError(f"{where}: {_show(value)} is not a number")
    number = float(number)
    if not math.isfinite(number):
        raise ParamsError(f"{where}: {_show(value)} is not a finite number")
    below = low is not None and (number <= low if low_open else number < low)
    above = high is not None and (number >= high if high_open else number > high)
    if below or above:
        if low is not None and high is not None:
            span = f"in {'(' if low_open else '['}{_num(low)}, {_num(high)}{')' if high_open else ']'}"
        elif low is not None:
            span = f"{'>' if low_open else '>='} {_num(low)}"
        else:
            span = f"{'<' if high_open else '<='} {_num(high)}"
        raise ParamsError(f"{where}: {_show(value)} is not {span}")
    return number


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def check_fraction(value: Any, where: str) -> float:
    """A fraction in (0, 1] (of frames, of scenes), else ParamsError naming ``where``."""
    return check_float(value, where, 0.0, 1.0, low_open=True)


def check_positive(value: Any, where: str) -> float:
    """A finite float > 0 (a learning rate, a voxel edge in metres), else ParamsError naming ``where``."""
    return check_float(value, where, 0.0, low_open=True)


def check_bool(value: Any, where: str) -> bool:
    """``true`` / ``false`` only (YAML's booleans), else ParamsError naming ``where``."""
    if not isinstance(value, bool):
        raise ParamsError(f"{where}: {_show(value)} is not true or false")
    return value


def check_list(value: Any, where: str, length: int | None = None) -> list[Any]:
    """``value`` as a list (of ``length`` entries when given), else ParamsError naming ``where``."""
    if not isinstance(value, list | tuple):
        raise ParamsError(f"{where}: {_show(value)} is not a list")
    if length is not None and len(value) != length:
        raise ParamsError(f"{where}: {_show(value)} has {len(value)} entries, not {length}")
    return list(value)


def check_voxel_size(value: Any, where: str) -> tuple[float, float, float]:
    """A voxel size, (x, y, z) edges in metres, each > 0: else ParamsError naming ``where``
    (a zero edge would divide the grid by zero; the convert stage reads ``convert.<dataset>.voxel_size``)."""
    sizes = check_list(value, where, 3)
    for i, v in enumerate(sizes):
        check_positive(v, f"{where}[{i}]")
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


@dataclass(frozen=True)
class Section:
    """A params section (a model profile's overrides applied) that knows where each value came
    from, so a bad value is reported as ``params.yaml: pretrain.epochs: 0 is not >= 1`` (or, for a
    profile's override, ``params.yaml: pretrain.profiles.full.nuscenes.epochs``), and a value given
    on the command line instead as the option (``--epochs: 0 is not >= 1``).

    Each typed reader (:meth:`integer`, :meth:`number`, ...) takes the key, the bounds, an optional
    ``default`` (the key may be absent) and an optional command-line ``override`` with its
    ``option`` name: the override, when not None, is checked and returned instead of the key."""

    path: Path
    name: str  # the section's dotted key: "pretrain", "finetune.detection"
    values: dict[str, Any]
    origins: dict[str, str] = field(default_factory=dict)  # key -> its dotted key, where not name.key

    @classmethod
    def load(cls, path: Path, *keys: str, profile: str | None = None, dataset: str | None = None) -> Section:
        """Section ``keys`` of the params file ``path``; with ``profile`` and ``dataset`` the
        overrides of its ``profiles.<profile>.<dataset>`` applied (as :func:`with_profile`)."""
        base = load_section(path, *keys)
        name = ".".join(keys)
        if profile is None or dataset is None:
            return cls(Path(path), name, dict(base))
        over = (base.get("profiles") or {}).get(profile, {}).get(dataset, {}) or {}
        return cls(Path(path), name, with_profile(base, profile, dataset),
                   {k: f"{name}.profiles.{profile}.{dataset}.{k}" for k in over})

    @classmethod
    def of(cls, values: Section | dict[str, Any], name: str, path: Path = Path("params.yaml")) -> Section:
        """``values`` as a Section named ``name`` (a Section is returned as it is): the task
        settings take either, so a caller with a plain mapping gets the same checks."""
        return values if isinstance(values, Section) else cls(Path(path), name, dict(values))

    def key(self, key: str) -> str:
        """The dotted key ``key`` is read from."""
        return self.origins.get(key, f"{self.name}.{key}")

    def where(self, key: str) -> str:
        """How messages name ``key``: ``<file>: <dotted key>``."""
        return f"{self.path}: {self.key(key)}"

    def __contains__(self, key: str) -> bool:
        return key in self.values

    def raw(self, key: str, default: Any = _MISSING) -> Any:
        """The unchecked value of ``key`` (ParamsError naming the key when absent and no default)."""
        if key in self.values and self.values[key] is not None:
            return self.values[key]
        if key in self.values and default is _MISSING:
            return None
        if default is _MISSING:
            raise ParamsError(f"{self.path}: missing key '{self.key(key)}'")
        return default

    def sub(self, key: str) -> Section:
        """The nested mapping ``key`` as a Section (``pretrain.mask``)."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise ParamsError(f"{self.where(key)}: {_show(value)} is not a mapping")
        return Section(self.path, self.key(key), dict(value))

    def _pick(self, key: str, default: Any, override: Any, option: str | None) -> tuple[Any, str]:
        if override is not None:
            return override, option or f"--{key.replace('_', '-')}"
        return self.raw(key, default), self.where(key)

    def integer(self, key: str, minimum: int | None = None, default: Any = _MISSING, override: Any = None,
            option: str | None = None) -> int:
        value, where = self._pick(key, default, override, option)
        return check_int(value, where, minimum)

    def number(self, key: str, low: float | None = None, high: float | None = None, low_open: bool = False,
              high_open: bool = False, default: Any = _MISSING, override: Any = None,
              option: str | None = None) -> float:
        value, where = self._pick(key, default, override, option)
        return check_float(value, where, low, high, low_open, high_open)

    def positive(self, key: str, default: Any = _MISSING, override: Any = None, option: str | None = None) -> float:
        value, where = self._pick(key, default, override, option)
        return check_positive(value, where)

    def fraction(self, key: str, default: Any = _MISSING, override: Any = None, option: str | None = None) -> float:
        value, where = self._pick(key, default, override, option)
        return check_fraction(value, where)

    def flag(self, key: str, default: Any = _MISSING, override: Any = None, option: str | None = None) -> bool:
        value, where = self._pick(key, default, override, option)
        return check_bool(value, where)

    def text(self, key: str, default: Any = _MISSING, override: Any = None, option: str | None = None) -> str:
        value, where = self._pick(key, default, override, option)
        if not isinstance(value, str):
            raise ParamsError(f"{where}: {_show(value)} is not a string")
        return value

    def integers(self, key: str, minimum: int | None = None, length: int | None = None) -> tuple[int, ...]:
        """A list of integers (a bare integer is a list of one)."""
        value, where = self.raw(key), self.where(key)
        items = [value] if isinstance(value, int) and not isinstance(value, bool) else check_list(value, where, length)
        return tuple(check_int(v, f"{where}[{i}]", minimum) for i, v in enumerate(items))

    def numbers(self, key: str, low: float | None = None, high: float | None = None, length: int | None = None,
               high_open: bool = False) -> tuple[float, ...]:
        value, where = self.raw(key), self.where(key)
        return tuple(check_float(v, f"{where}[{i}]", low, high, high_open=high_open)
                     for i, v in enumerate(check_list(value, where, length)))

    def voxel_size(self, key: str = "voxel_size") -> tuple[float, float, float]:
        return check_voxel_size(self.raw(key), self.where(key))
