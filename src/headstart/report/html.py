"""A self-contained HTML page: inline CSS, images as base64 data URIs, nothing fetched from anywhere.

Every helper returns HTML that is safe to concatenate: text passes through `html.escape` here, so callers
never build markup from raw strings themselves (`raw` is only for the output of these helpers).
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Section", "cards", "details", "esc", "figure", "kv_table", "note", "page", "para", "table"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# System fonts only: a web font would be a network request.
_CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --alt: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: var(--bg);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
header, main { max-width: 1120px; margin: 0 auto; padding: 0 24px; }
header { padding-top: 24px; border-bottom: 1px solid var(--line); }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 0 0 12px; color: var(--muted); }
nav { display: flex; flex-wrap: wrap; gap: 4px 14px; padding-bottom: 12px; font-size: 14px; }
nav a { color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
section { padding: 8px 0 16px; border-bottom: 1px solid var(--line); }
h2 { font-size: 20px; margin: 16px 0 8px; }
h3 { font-size: 16px; margin: 12px 0 6px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; }
th, td { border: 1px solid var(--line); padding: 4px 10px; text-align: left; vertical-align: top; }
th { background: var(--alt); font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:nth-child(even) td { background: #fbfcfd; }
code, td.mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 13px; }
figure { margin: 8px 0 16px; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 13px; margin-top: 4px; }
.note { color: var(--muted); background: var(--alt); border-left: 3px solid var(--line); padding: 6px 10px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; margin: 12px 0; }
.card { border: 1px solid var(--line); border-radius: 6px; padding: 8px 14px; min-width: 140px; }
.card b { display: block; font-size: 20px; }
.card span { color: var(--muted); font-size: 13px; }
.scroll { overflow-x: auto; }
.side { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
details { margin: 8px 0 12px; }
summary { cursor: pointer; color: var(--accent); }
"""


@dataclass
class Section:
    """One <section>: `id` is its anchor, `body` is HTML built with this module's helpers, or a function
    returning it when the section waits for figures still being drawn (called once, as the page is written)."""

    id: str
    title: str
    body: str | Callable[[], str]

    def html(self) -> str:
        return self.body() if callable(self.body) else self.body


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> tuple[str, bool]:
    """(escaped text, is it a number) for a table cell; floats get 4 significant digits, ints separators."""
    if isinstance(value, bool) or value is None:
        return esc("" if value is None else value), False
    if isinstance(value, int):
        return f"{value:,}", True
    if isinstance(value, float):
        return ("–" if math.isnan(value) else f"{value:.4g}"), True
    if isinstance(value, (dict, list, tuple)):
        return esc(json.dumps(value)), False
    return esc(value), False


def table(header: Sequence[str], rows: Iterable[Sequence[object]], *, caption: str = "",
          align_numbers: bool = True) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for value in row:
            text, numeric = _cell(value)
            cells.append(f'<td class="num">{text}</td>' if numeric and align_numbers else f"<td>{text}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    return (f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table></div>')


def kv_table(mapping: Mapping[str, object], *, header: Sequence[str] = ("setting", "value"),
             columns: int = 1) -> str:
    """Name/value rows, left-aligned; `columns` > 1 splits a long list into tables side by side."""
    items = list(mapping.items())
    per = max(1, math.ceil(len(items) / columns))
    tables = [table(header, items[i:i + per], align_numbers=False) for i in range(0, len(items), per)]
    return tables[0] if len(tables) == 1 else f'<div class="side">{"".join(tables)}</div>'


def details(summary: str, body: str) -> str:
    """A closed block that opens on a click: `summary` (text) shows, `body` (HTML from these helpers) is
    inside. Long tables go here, so that the page reads from the top without scrolling past them."""
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def para(text: str) -> str:
    return f"<p>{esc(text)}</p>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


def cards(items: Sequence[tuple[str, str]]) -> str:
    """Headline numbers: (value, label) pairs."""
    inner = "".join(f'<div class="card"><b>{esc(v)}</b><span>{esc(k)}</span></div>' for v, k in items)
    return f'<div class="cards">{inner}</div>'


def figure(png: bytes | str | Path, alt: str, caption: str = "") -> str:
    """An <img> with the PNG inlined as a data URI; `png` is the bytes or a file path."""
    data = png if isinstance(png, bytes) else Path(png).read_bytes()
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError(f"not a PNG: {alt}")
    src = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    cap = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="{src}" alt="{esc(alt)}">{cap}</figure>'


def page(title: str, sections: Sequence[Section], *, subtitle: str = "", lead: str = "") -> str:
    """The whole document. `lead` is HTML shown under the title (e.g. `cards`)."""
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}">\n<h2>{esc(s.title)}</h2>\n{s.html()}\n</section>' for s in sections
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title>
<style>{_CSS}</style>
</head>
<body>
<header>
<h1>{esc(title)}</h1>
<p>{esc(subtitle)}</p>
{lead}
<nav>{nav}</nav>
</header>
<main>
{body}
</main>
</body>
</html>
"""
