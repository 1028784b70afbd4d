"""Emergency alert videos without a model: template data (10 types x 5 variations) and a renderer.

    from aiprod.emergency import AlertRequest, render_alert, emergency_types
    alert = render_alert(AlertRequest("cyclone", language="hi", region="पुरी"))   # alert.mp4: bytes
"""

from aiprod.emergency.render import Alert, AlertRequest, CardRenderer, render_alert, renderer_for
from aiprod.emergency.templates import TemplateError, TemplateLibrary, load_library
from aiprod.emergency.text import UnsupportedText, raqm_available


def emergency_types(templates_dir: str | None = None) -> list[str]:
    return load_library(templates_dir).types()


__all__ = [
    "Alert",
    "AlertRequest",
    "CardRenderer",
    "TemplateError",
    "TemplateLibrary",
    "UnsupportedText",
    "emergency_types",
    "load_library",
    "raqm_available",
    "render_alert",
    "renderer_for",
]
