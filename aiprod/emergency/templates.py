"""Emergency alert templates as data: one YAML file per emergency type plus shared layouts,
icons, fonts and phrases (files starting with `_`). Loaded and cross-checked once per directory.

    library = load_library()            # aiprod/emergency/templates
    library.types()                     # ['chemical_accident', 'cyclone', ...]
    library.get("flood").variations[2]  # palette, layout, icon, motion, slots, wording
"""

from __future__ import annotations

import functools
import re
import string
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

TEMPLATES_DIR = Path(__file__).parent / "templates"
HEX_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
SLOT_FIELDS = {"headline", "instructions", "region", "label"}


class TemplateError(ValueError):
    """A template data file that is missing, malformed or refers to something undefined."""


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Palette(_Data):
    background: str
    text: str
    accent: str
    accent_text: str
    panel: str
    panel_text: str
    border: str

    @field_validator("*")
    @classmethod
    def _hex(cls, value: str) -> str:
        if not HEX_COLOUR.match(value):
            raise ValueError(f"colours are #RRGGBB, got {value!r}")
        return value

    def rgb(self, key: str) -> tuple[int, int, int]:
        value = getattr(self, key)
        return tuple(int(value[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


class Wording(_Data):
    headline: str = Field(min_length=1)
    instructions: str = Field(min_length=1)


class WordingOverride(_Data):
    headline: str | None = None
    instructions: str | None = None


class Motion(_Data):
    pulse_hz: float = Field(1.0, gt=0, description="border pulses per second")
    ticker_speed: float = Field(0.25, gt=0, description="ticker scroll, frame widths per second")
    ticker_gap: float = Field(0.3, ge=0, description="space between ticker repeats, frame widths")
    border: float = Field(0.02, gt=0, lt=0.2, description="pulsing border width, fraction of the short side")


class Slots(_Data):
    """Format strings of what each text element shows; {field} names a request field or phrase."""

    headline: str = "{headline}"
    instructions: str = "{instructions}"
    region: str = "{area}: {region}"
    ticker: list[str] = Field(default_factory=lambda: ["{official}", "{label}", "{region}", "{follow}"])


class Variation(_Data):
    name: str
    layout: str
    icon: str
    palette: Palette
    motion: Motion = Field(default_factory=Motion)
    slots: Slots = Field(default_factory=Slots)
    wording: dict[str, WordingOverride] = Field(default_factory=dict)


class EmergencyTemplate(_Data):
    type: str
    label: dict[str, str]
    wording: dict[str, Wording]
    variations: list[Variation] = Field(min_length=1)

    @field_validator("wording")
    @classmethod
    def _has_english(cls, value: dict[str, Wording]) -> dict[str, Wording]:
        if "en" not in value:
            raise ValueError("needs English ('en') wording: it is the fallback for every language")
        return value

    def wording_for(self, variation: int, language: str) -> tuple[Wording, bool]:
        """(headline + instructions in `language`, True) or the English ones and False."""
        base = self.wording.get(language)
        found = base is not None
        base = base or self.wording["en"]
        override = self.variations[variation].wording.get(language if found else "en")
        if override is not None:
            base = Wording(
                headline=override.headline or base.headline,
                instructions=override.instructions or base.instructions,
            )
        return base, found


class LayoutElement(_Data):
    kind: Literal["panel", "stripes", "icon", "text", "ticker"]
    box: tuple[float, float, float, float]
    slot: Literal["headline", "instructions", "region", "ticker"] | None = None
    color: str = "text"
    fill: str = "background"
    fg: str = "accent"
    bg: str = "background"
    align: Literal["left", "center", "right"] = "left"
    bold: bool = False
    max_lines: int = Field(1, ge=1)

    @field_validator("box")
    @classmethod
    def _inside_frame(cls, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"box must be [x0, y0, x1, y1] within [0, 1] with x0 < x1 and y0 < y1, got {list(box)}")
        return box


class IconShape(_Data):
    polygon: list[tuple[float, float]] | None = None
    ellipse: tuple[float, float, float, float] | None = None
    line: list[tuple[float, float]] | None = None
    arc: tuple[float, float, float, float] | None = None
    start: float = 0.0
    end: float = 360.0
    width: float = Field(0.05, gt=0, le=0.5)
    fill: Literal["fg", "bg"] = "fg"

    def kind(self) -> str:
        kinds = [k for k in ("polygon", "ellipse", "line", "arc") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"an icon shape needs exactly one of polygon/ellipse/line/arc, got {kinds or 'none'}")
        return kinds[0]


class TemplateLibrary(_Data):
    templates: dict[str, EmergencyTemplate]
    layouts: dict[str, list[LayoutElement]]
    icons: dict[str, list[IconShape]]
    fonts: dict[str, dict[Literal["regular", "bold"], str]]
    phrases: dict[str, dict[str, str]]
    directory: str

    def types(self) -> list[str]:
        return sorted(self.templates)

    def get(self, emergency_type: str) -> EmergencyTemplate:
        try:
            return self.templates[emergency_type]
        except KeyError:
            raise TemplateError(
                f"unknown emergency_type {emergency_type!r}; known: {', '.join(self.types())}"
            ) from None

    def phrase(self, name: str, language: str) -> str:
        table = self.phrases.get(name, {})
        return table.get(language) or table.get("en", "")


def _read(path: Path) -> object:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TemplateError(f"templates: cannot read {path}: {exc}") from exc


_SHARED_FILES = {"layouts": "_layouts.yaml", "icons": "_icons.yaml", "fonts": "_fonts.yaml", "phrases": "_common.yaml"}


def _validate(model, data: object, filename: str | None = None):
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = list(first["loc"])
        if filename is None:  # the library: its first key says which shared file
            filename = _SHARED_FILES.get(str(loc[0]), "(templates)")
            loc = loc[1:]
        where = ".".join(str(p) for p in loc) or "(top)"
        raise TemplateError(f"templates: {filename}: {where}: {first['msg']}") from None


def _slot_fields(fmt: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(fmt) if name}


def _cross_check(library: TemplateLibrary) -> None:
    for name, shapes in library.icons.items():
        for i, shape in enumerate(shapes):
            try:
                shape.kind()
            except ValueError as exc:
                raise TemplateError(f"templates: _icons.yaml: {name}.{i}: {exc}") from None
    known_fields = SLOT_FIELDS | set(library.phrases)
    for type_name, template in library.templates.items():
        if template.type != type_name:
            raise TemplateError(f"templates: {type_name}.yaml: type is {template.type!r}, expected {type_name!r}")
        for i, variation in enumerate(template.variations):
            where = f"templates: {type_name}.yaml: variations.{i}"
            if variation.layout not in library.layouts:
                raise TemplateError(f"{where}: layout {variation.layout!r} is not in _layouts.yaml")
            if variation.icon not in library.icons:
                raise TemplateError(f"{where}: icon {variation.icon!r} is not in _icons.yaml")
            slots = variation.slots
            for fmt in [slots.headline, slots.instructions, slots.region, *slots.ticker]:
                unknown = _slot_fields(fmt) - known_fields
                if unknown:
                    raise TemplateError(f"{where}: slot {fmt!r} uses unknown fields {sorted(unknown)}")


@functools.lru_cache(maxsize=8)
def load_library(directory: str | Path | None = None) -> TemplateLibrary:
    """Every template in `directory` (default: the packaged ones), validated and cross-checked."""
    root = Path(directory) if directory else TEMPLATES_DIR
    if not root.is_dir():
        raise TemplateError(f"templates: directory {root} does not exist")
    shared = {}
    for name in ("_layouts", "_icons", "_fonts", "_common"):
        path = root / f"{name}.yaml"
        if not path.is_file():
            raise TemplateError(f"templates: {path} is missing")
        shared[name] = _read(path) or {}
    templates = {}
    for path in sorted(root.glob("[!_]*.yaml")):
        templates[path.stem] = _validate(EmergencyTemplate, _read(path), path.name)
    if not templates:
        raise TemplateError(f"templates: no emergency type files (*.yaml) in {root}")
    library = _validate(
        TemplateLibrary,
        {
            "templates": templates,
            "layouts": shared["_layouts"],
            "icons": shared["_icons"],
            "fonts": shared["_fonts"],
            "phrases": (shared["_common"] or {}).get("phrases", {}),
            "directory": str(root),
        },
    )
    _cross_check(library)
    return library
