"""Self-contained HTML pages from Jinja2 templates: one base template and one stylesheet for all.

A foundation layer: imports only jinja2, the standard library, ``cxrlab.errors`` and ``cxrlab.runs``.
Callers build a plain context dict (numbers, strings, lists, dicts, ``Path`` objects of PNG/SVG files)
and call :func:`render` or :func:`write_page`; the template named ``KIND.html`` renders a page whose
``<meta name="cxrlab-page">`` is ``KIND``. Autoescape is on and undefined names raise.
"""

from __future__ import annotations

import base64
import math
import re
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup, escape

from cxrlab.runs import atomic_write

TEMPLATES = Path(__file__).parent / "templates"
SHARED = ("base.html", "macros.html", "subgroups.html", "style.css")


def fmt(value: Any, digits: int = 3) -> str:
    """Numbers to fixed digits; None as an em dash; anything else as text."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def ci(values: Any, digits: int = 3) -> str:
    """A 95% CI as '[lo, hi]'; '' when missing."""
    if not values or values[0] is None or values[1] is None:
        return ""
    return f"[{values[0]:.{digits}f}, {values[1]:.{digits}f}]"


def thousands(value: Any) -> str:
    """An integer with thousands separators (1,234,567); None as an em dash."""
    if value is None:
        return "—"
    return f"{int(value):,}"


def sci(value: Any, digits: int = 3) -> str:
    """A number in ``g`` notation with ``digits`` significant digits (p-values); None as an em dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}g}"


#: What a browser is given for each plot file: SVG as it is, a PDF as the PNG rendition saved beside it.
_IMAGE_TYPES = {".png": "image/png", ".svg": "image/svg+xml"}
#: An SVG plot is shown as large as its PNG at the default 150 dpi would be (pixels per point: 150 / 72).
_SVG_PX_PER_PT = 150 / 72
_SVG_WIDTH = re.compile(rb'<svg[^>]*?\swidth="([0-9.]+)pt"')


def _svg_width(data: bytes) -> str:
    """`` width="N"`` for an SVG whose root gives its width in points (matplotlib's), else ''."""
    found = _SVG_WIDTH.search(data[:4000])
    return f' width="{round(float(found.group(1)) * _SVG_PX_PER_PT)}"' if found else ""


def png(path: Any, caption: str = "") -> Markup:
    """A PNG or SVG file embedded as a base64 data URI in a captioned <figure> (a ``.pdf`` plot: the PNG of
    the same name beside it, see :func:`cxrlab.figures.save_figure`); nothing if it is missing."""
    if not path:
        return Markup("")
    file = Path(path)
    if file.suffix.lower() == ".pdf":
        file = file.with_suffix(".png")
    if not file.is_file():
        return Markup("")
    mime = _IMAGE_TYPES.get(file.suffix.lower(), "image/png")
    raw = file.read_bytes()
    width = _svg_width(raw) if mime == "image/svg+xml" else ""
    data = base64.b64encode(raw).decode("ascii")
    text = escape(caption)
    return Markup(
        f'<figure><img alt="{text}"{width} src="data:{mime};base64,{data}">'
        f'<figcaption class="muted">{text}</figcaption></figure>'
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, ci=ci, png=png, thousands=thousands, sci=sci)
    return env


ENV = _environment()


def page_kinds() -> list[str]:
    """Every page kind: one template per kind (all templates but the shared ones)."""
    return sorted(p.stem for p in TEMPLATES.glob("*.html") if p.name not in SHARED)


def render(template: str, **context: Any) -> str:
    """Render ``templates/<template>`` (e.g. ``"audit.html"``); its page kind is the file's stem."""
    context.setdefault("page_kind", Path(template).stem)
    return ENV.get_template(template).render(**context)


def write_page(path: str | Path, template: str, **context: Any) -> Path:
    """Render ``template`` and write it to ``path`` atomically; return the path."""
    path = Path(path)
    atomic_write(path, render(template, **context))
    return path
