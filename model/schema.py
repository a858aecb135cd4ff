"""The label schema: which image a Label Studio project shows and which single-choice questions it asks.

Any Label Studio labeling config with exactly one ``<Image>`` and one or more single-choice
``<Choices>`` over it can be served; each ``<Choices>`` becomes one classification head. A config that
cannot be served raises :class:`SchemaError` naming the tag and the reason, so that a lead sees at
once what to change in the project's settings.
"""

from __future__ import annotations

import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def _default_label_config() -> Path:
    """The weather project: the repository's top-level file, or the copy a wheel installs under share/."""
    here = Path(__file__).resolve().parent.parent / "label_config.xml"
    installed = Path(sys.prefix) / "share" / "weather-al" / "label_config.xml"
    return here if here.is_file() or not installed.is_file() else installed


#: The weather project shipped at the repository's top level.
DEFAULT_LABEL_CONFIG = _default_label_config()

_SINGLE_CHOICE = {"single", "single-radio"}


class SchemaError(ValueError):
    """A label config this backend cannot serve."""


@dataclass(frozen=True)
class Head:
    """One single-choice question: a ``<Choices name=...>`` and its class values, in config order."""

    name: str
    classes: tuple[str, ...]

    def index(self, value: str) -> int:
        """Class index of ``value``; :class:`KeyError` names the head and its classes when unknown."""
        try:
            return self.classes.index(value)
        except ValueError:
            raise KeyError(f"{value!r} is not a class of {self.name!r} (classes: {', '.join(self.classes)})") from None


@dataclass(frozen=True)
class LabelSchema:
    """The image field and the heads of a project.

    ``image_name`` is the ``<Image name>`` that results point ``to_name`` at; ``image_key`` is the task
    data key the image URL is read from (``value="$image"`` gives ``image``).
    """

    image_name: str
    image_key: str
    heads: tuple[Head, ...]

    @property
    def head_names(self) -> list[str]:
        return [h.name for h in self.heads]

    def head(self, name: str) -> Head:
        for h in self.heads:
            if h.name == name:
                return h
        raise KeyError(f"no head named {name!r} (heads: {', '.join(self.head_names)})")

    @classmethod
    def from_xml(cls, xml: str) -> LabelSchema:
        """Parse a Label Studio labeling config; raise :class:`SchemaError` for one it cannot serve."""
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as exc:
            raise SchemaError(f"the label config is not valid XML: {exc}") from None
        images = [el for el in root.iter() if el.tag == "Image"]
        if not images:
            raise SchemaError(
                '<Image>: the label config has no <Image> tag; add one, e.g. <Image name="image" value="$image"/>'
            )
        if len(images) > 1:
            image_names = ", ".join(el.get("name", "?") for el in images)
            raise SchemaError(
                f"<Image>: the label config has {len(images)} <Image> tags ({image_names}); exactly one is supported"
            )
        image = images[0]
        image_name, value = image.get("name"), image.get("value", "")
        if not image_name:
            raise SchemaError("<Image>: the tag has no name attribute")
        if not value.startswith("$") or len(value) < 2:
            raise SchemaError(f'<Image name="{image_name}">: value must name a task field like "$image", got {value!r}')

        heads: list[Head] = []
        for el in root.iter("Choices"):
            heads.append(_parse_choices(el, image_name))
        if not heads:
            raise SchemaError(
                "<Choices>: the label config has no <Choices> tag over the image; "
                "add at least one single-choice <Choices>"
            )
        names = [h.name for h in heads]
        if len(set(names)) != len(names):
            raise SchemaError(f"<Choices>: names must be unique, got {names}")
        return cls(image_name=image_name, image_key=value[1:], heads=tuple(heads))

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_LABEL_CONFIG) -> LabelSchema:
        return cls.from_xml(Path(path).read_text(encoding="utf-8"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_name": self.image_name,
            "image_key": self.image_key,
            "heads": [{"name": h.name, "classes": list(h.classes)} for h in self.heads],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabelSchema:
        return cls(
            image_name=d["image_name"],
            image_key=d["image_key"],
            heads=tuple(Head(h["name"], tuple(h["classes"])) for h in d["heads"]),
        )


def _parse_choices(el: ET.Element, image_name: str) -> Head:
    name = el.get("name")
    if not name:
        raise SchemaError("<Choices>: a <Choices> tag has no name attribute")
    where = f'<Choices name="{name}">'
    to_name = el.get("toName")
    if to_name != image_name:
        raise SchemaError(
            f"{where}: toName is {to_name!r}, but only Choices over the image {image_name!r} are supported"
        )
    mode = el.get("choice", "single")
    if mode not in _SINGLE_CHOICE:
        raise SchemaError(
            f'{where}: choice="{mode}" is not supported; each head must be single-choice (choice="single")'
        )
    classes: list[str] = []
    for choice in el.iter("Choice"):
        label = choice.get("alias") or choice.get("value")
        if not label:
            raise SchemaError(f"{where}: a <Choice> has no value")
        classes.append(label)
    if len(classes) < 2:
        raise SchemaError(f"{where}: needs at least two <Choice> values, found {len(classes)}")
    if len(set(classes)) != len(classes):
        raise SchemaError(f"{where}: duplicate choice values {classes}")
    return Head(name=name, classes=tuple(classes))
