"""audit.html: the review page. One self-contained file (thumbnails inlined, no network): a section per kind
of finding, the images side by side, a score, and a keep / relabel / exclude choice per finding that the page
saves as fixes.json (a download), the same document `check --deep --accept-suggested` writes."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from headstart.audit.features import load_images
from headstart.audit.fixes import FIXES_FORMAT
from headstart.data.dataset import data_base
from headstart.report.html import Section, cards, esc, note, page, table

__all__ = ["SHOWN", "render_page"]

SHOWN = 200  # findings per section on the page; all of them are in audit.json
THUMB = 160

_CSS = """<style>
.finding { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 10px 0; }
.finding .imgs { display: flex; flex-wrap: wrap; gap: 10px; }
.finding figure { margin: 0; max-width: 180px; }
.finding figure img { width: auto; max-height: 160px; image-rendering: auto; }
.finding figcaption { word-break: break-all; }
.finding .choice { margin-top: 6px; display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: center; }
.score { font-variant-numeric: tabular-nums; color: var(--muted); }
#save { font-size: 15px; padding: 6px 14px; margin: 6px 0 12px; cursor: pointer; }
</style>"""

# Builds fixes.json from the choices, as audit/report.py's _fix does from the suggestions.
_SCRIPT = """<script>
(() => {
  const data = JSON.parse(document.getElementById('audit-data').textContent);
  const byId = Object.fromEntries(data.findings.map(f => [f.id, f]));
  function fixes() {
    const out = [];
    for (const box of document.querySelectorAll('.finding')) {
      const f = byId[box.dataset.id];
      const action = box.querySelector('input[type=radio]:checked').value;
      if (action === 'relabel') {
        out.push({path: f.path, action: 'relabel', label: box.querySelector('select').value, reason: f.kind,
                  given: f.given});
      } else if (action === 'exclude') {
        const fix = {path: f.path, action: 'exclude', reason: f.kind};
        if (f.other && f.kind !== 'outlier') fix.duplicate_of = f.other;
        out.push(fix);
      }
    }
    return {format: data.format, root: data.root, fixes: out};
  }
  function count() {
    const n = fixes().fixes.length;
    document.getElementById('count').textContent = n + ' change(s) chosen';
  }
  document.addEventListener('change', count);
  document.getElementById('save').addEventListener('click', () => {
    const blob = new Blob([JSON.stringify(fixes(), null, 2) + '\\n'], {type: 'application/json'});
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'fixes.json';
    document.body.appendChild(a);
    a.click();
    a.remove();
  });
  window.headstartFixes = fixes;
  count();
})();
</script>"""

_TITLES = {"label_issue": ("labels", "Label issues"), "leakage": ("leakage", "Leakage across splits"),
           "near_duplicate": ("duplicates", "Near-duplicates within a split"), "outlier": ("outliers", "Outliers")}
_EXPLAIN = {
    "label_issue": "Images whose given label the other images contradict: each was scored by a linear head that never "
                   "saw it. Shown beside a typical image of the given and of the suggested class.",
    "leakage": "The same picture in two splits: evaluation would score images the model trained on. Excluding the "
               "val/test copy keeps the scores honest (train does this by itself unless --strict).",
    "near_duplicate": "Near copies within one split: they count twice. Excluding one copy is usually right.",
    "outlier": "Images far from every class: off-topic, placeholders, screenshots. Check they belong.",
}


def render_page(report) -> str:
    """The whole page for an AuditReport."""
    base = data_base(report.check.root)
    findings = report.findings
    shown = {kind: [f for f in findings if f.kind == kind][:SHOWN] for kind in _TITLES}
    wanted = sorted({p for fs in shown.values() for f in fs
                     for p in [f.path, *([f.other] if f.other else []), *f.typical.values()]})
    thumbs = _thumbnails(base, wanted)
    health = report.health
    counts = {kind: sum(1 for f in findings if f.kind == kind) for kind in _TITLES}
    lead = cards([(str(report.images), "images"), (str(counts["label_issue"]), "label issues"),
                  (str(counts["leakage"]), "leaked copies"), (str(counts["near_duplicate"]), "near-duplicates"),
                  (str(counts["outlier"]), "outliers"),
                  ("–" if health.get("accuracy") is None else f"{health['accuracy']:.1%}", "out-of-fold accuracy")])
    lead += ('<p><button id="save" type="button">Save fixes.json</button> <span id="count"></span></p>'
             '<p class="note">Each finding starts at the suggested choice: saving without changes gives the same '
             "file as <code>headstart check DATA --deep --accept-suggested</code>. Train with it: "
             "<code>headstart train DATA --fixes fixes.json</code> (DATA itself is never changed).</p>")
    sections = []
    for kind, (anchor, title) in _TITLES.items():
        items = shown[kind]
        body = note(_EXPLAIN[kind])
        if not items:
            body += "<p>None found.</p>"
        body += "".join(_finding(f, report.classes, thumbs) for f in items)
        if counts[kind] > len(items):
            body += note(f"{counts[kind] - len(items)} more in audit.json")
        sections.append(Section(anchor, f"{title} ({counts[kind]})", body))
    sections.append(Section("health", "Class health", _health(health)))
    problems = [(p.severity, p.code, p.message, len(p.paths)) for p in report.check.problems]
    doctor = table(["severity", "code", "message", "files"], problems) if problems else "<p>No problems.</p>"
    data = {"format": FIXES_FORMAT, "root": report.check.root,
            "findings": [{"id": f.id, "kind": f.kind, "path": f.path, "given": f.given, "label": f.label,
                          "other": f.other} for fs in shown.values() for f in fs]}
    # "</" cannot end the script element early once escaped this way; JSON.parse reads it back unchanged.
    payload = json.dumps(data).replace("</", "<\\/")
    script = f'<script type="application/json" id="audit-data">{payload}</script>{_SCRIPT}'
    sections.append(Section("doctor", "Doctor", doctor + script))
    subtitle = f"{report.check.root} · {len(report.classes)} classes · features: {report.computed} computed now"
    return page("headstart audit", sections, subtitle=subtitle, lead=_CSS + lead)


def _finding(f, classes: list[str], thumbs: dict[str, str]) -> str:
    pictures = [(f.path, f"{f.split}: {f.path}" + (f" (labelled {f.given})" if f.given else ""))]
    if f.other:
        pictures.append((f.other, f"copy kept: {f.other}"))
    for name, path in f.typical.items():
        if path != f.path:
            pictures.append((path, f"typical {name}"))
    figures = "".join(f'<figure><img src="{thumbs[p]}" alt="{esc(p)}"><figcaption>{esc(caption)}</figcaption>'
                      "</figure>" for p, caption in pictures if p in thumbs)
    options = ["keep", "exclude"] + (["relabel"] if f.kind == "label_issue" else [])
    radios = "".join(
        f'<label><input type="radio" name="{esc(f.id)}" value="{o}"{" checked" if o == f.suggested else ""}> '
        f"{o}</label>" for o in options)
    if f.kind == "label_issue":
        select = "".join(f'<option value="{esc(c)}"{" selected" if c == f.label else ""}>{esc(c)}</option>'
                         for c in classes)
        radios += f' <label>as <select aria-label="new class">{select}</select></label>'
    return (f'<div class="finding" id="{esc(f.id)}" data-id="{esc(f.id)}"><div class="imgs">{figures}</div>'
            f'<p>{esc(f.message)} <span class="score">score {f.score:.3f}</span></p>'
            f'<div class="choice">{radios}</div></div>')


def _health(health: dict) -> str:
    rows = [(name, h["images"], h["accuracy"]) for name, h in health.get("per_class", {}).items()]
    rows.sort(key=lambda r: (r[2] is None, r[2] if r[2] is not None else 0))
    body = note("Out-of-fold accuracy against the given labels, weakest class first: a low one has too few, too "
                "varied or mislabelled images.")
    body += table(["class", "images", "out-of-fold accuracy"], rows)
    confused = [(c["given"], c["predicted"], c["images"]) for c in health.get("confused", [])]
    if confused:
        body += "<h3>Most confused pairs</h3>" + table(["labelled", "predicted", "images"], confused)
    return body


def _thumbnails(base: Path, paths: list[str]) -> dict[str, str]:
    """Relative path -> a JPEG data URI of at most THUMB pixels a side (tiny images scaled up, unblurred)."""
    from PIL import Image

    out = {}
    images = load_images([str(base / p) for p in paths], THUMB)
    for path, img in zip(paths, images):
        img = img.convert("RGB")
        scale = THUMB / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.NEAREST if scale > 4 else Image.BILINEAR)
        buffer = io.BytesIO()
        img.save(buffer, "JPEG", quality=80)
        out[path] = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return out
