"""Typed options of lambda-control: training conditions and class pairs.

The command line keeps its short syntax (``--set conditions=baseline,global,selective:4,9``,
``--set pairs=4v9,3v8``); the text is turned into these types once, when the config is
validated, and everything after that works with :class:`Condition` and :class:`ClassPair`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

NUM_CLASSES = 10
ClassIndex = Annotated[int, Field(ge=0, lt=NUM_CLASSES)]
PairRole = Literal["targeted", "untargeted", "mixed"]

_SELECTIVE = re.compile(r"^selective:(\d+(?:[,+]\d+)*)$")


class Condition(BaseModel):
    """Which training samples the derivative penalty sees, chosen by their (noisy) label.

    ``baseline``: none; ``global``: all; ``selective``: labels in ``classes``. Written and
    stored as text (``selective:4,9``), labelled in tables as the notebook does
    (``selective_49``). Equal to its text form, so ``condition == "global"`` reads naturally.
    """

    model_config = ConfigDict(frozen=True)

    kind: Literal["baseline", "global", "selective"]
    classes: tuple[ClassIndex, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        return _parse_condition(value) if isinstance(value, str) else value

    @field_validator("classes")
    @classmethod
    def _sorted_unique(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(sorted(set(value)))

    @model_validator(mode="after")
    def _classes_fit_kind(self) -> Condition:
        if (self.kind == "selective") != bool(self.classes):
            raise ValueError("only a selective condition names classes, and it needs one or more")
        return self

    @classmethod
    def parse(cls, value: str | Condition) -> Condition:
        return value if isinstance(value, Condition) else cls.model_validate(value)

    @property
    def targets(self) -> tuple[int, ...] | None:
        """Penalized labels as ``class_selective_loss`` takes them: None = all, () = none."""
        return None if self.kind == "global" else self.classes

    @property
    def label(self) -> str:
        """Table and file label: ``baseline``, ``global``, ``selective_49``."""
        return "selective_" + "".join(map(str, self.classes)) if self.classes else self.kind

    def role(self, pair: tuple[int, int]) -> PairRole:
        """``targeted`` if both classes of ``pair`` are penalized, ``untargeted`` if neither."""
        if self.kind == "global":
            return "targeted"
        inside = sum(c in self.classes for c in pair)
        return "targeted" if inside == 2 else "untargeted" if inside == 0 else "mixed"

    def __str__(self) -> str:
        return f"selective:{','.join(map(str, self.classes))}" if self.classes else self.kind

    @model_serializer
    def _as_text(self) -> str:
        return str(self)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            try:
                other = Condition.parse(other)
            except ValueError:
                return False
        return isinstance(other, Condition) and str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def _parse_condition(text: str) -> dict[str, Any]:
    text = text.strip().lower().replace(" ", "")
    if text in ("baseline", "global"):
        return {"kind": text}
    match = _SELECTIVE.match(text)
    if not match:
        raise ValueError(
            f"condition {text!r} is not 'baseline', 'global' or 'selective:<classes>'"
            " (e.g. selective:4,9)"
        )
    body = match.group(1)
    parts = re.split(r"[,+]", body) if re.search(r"[,+]", body) else list(body)  # 49 = 4,9
    return {"kind": "selective", "classes": tuple(int(p) for p in parts)}


def conditions_from_cli(value: Any) -> Any:
    """``--set conditions=baseline,selective:4,9`` arrives as ``["baseline", "selective:4", 9]``:
    integers after a ``selective:`` entry belong to it. Duplicates are an error."""
    if isinstance(value, str | Condition):
        value = [value]
    merged: list[Any] = []
    for item in value:
        if isinstance(item, int) and merged and str(merged[-1]).startswith("selective:"):
            merged[-1] = f"{merged[-1]},{item}"
        else:
            merged.append(item)
    parsed = [Condition.parse(item) for item in merged]
    for i, condition in enumerate(parsed):
        if condition in parsed[:i]:
            raise ValueError(f"condition {str(condition)!r} is listed twice")
    return parsed


class ClassPair(NamedTuple):
    """Two different classes whose decision boundary λ is measured; labelled ``4v9``."""

    first: ClassIndex
    second: ClassIndex

    @property
    def label(self) -> str:
        return f"{self.first}v{self.second}"


def _pair_from_text(item: Any) -> Any:
    if isinstance(item, str):
        parts = [p for p in re.split(r"[v,\-x]", item.strip().lower()) if p]
        if len(parts) != 2:
            raise ValueError(
                f"a class pair needs two classes, got {item!r} (write e.g. 4v9 or 4,9)"
            )
        return tuple(int(p) for p in parts)
    if isinstance(item, list | tuple) and len(item) != 2:
        raise ValueError(f"a class pair needs two classes, got {item!r} (write e.g. 4v9 or 4,9)")
    return item


def _distinct(pair: ClassPair) -> ClassPair:
    if pair.first == pair.second:
        raise ValueError(f"a class pair needs two different classes, got {list(pair)}")
    return pair


Pair = Annotated[ClassPair, BeforeValidator(_pair_from_text), AfterValidator(_distinct)]


def pairs_from_cli(value: Any) -> Any:
    """Pairs from ``"4v9"``, ``"4,9 3,8"`` (space or ``;`` between pairs), ``[4, 9]``,
    ``[[4, 9], [3, 8]]``, ``["4v9", "3v8"]`` or a flat list of classes taken two at a time
    (what ``--set pairs=4,9,3,8`` parses to)."""
    if isinstance(value, str):
        return [c for c in re.split(r"[\s;]+", value.strip()) if c]
    items = list(value)
    if items and all(isinstance(v, int) for v in items):
        if len(items) % 2:
            raise ValueError(f"a flat list of classes must have even length, got {items}")
        return [items[i : i + 2] for i in range(0, len(items), 2)]
    out: list[Any] = []
    for item in items:
        out.extend(pairs_from_cli(item) if isinstance(item, str) else [item])
    return out
