"""A run's model card, written from what its folder measured: ``model_card.json`` and ``model_card.md``.

Every section comes from a file the run wrote, never from a template's promise:

- intended use (and what the model is not for), from the run's task, classes, input and data;
- training data with the data audit's warnings (``metrics.json`` ``audit``), each sentence once and ranked by
  severity (:mod:`cxrlab.audit.severity`);
- internal metrics with their 95% CIs: every metric of the registry (:func:`cxrlab.metrics.table_rows`)
  that the test split reports, read through :func:`cxrlab.metrics.read_metrics`;
- the operating threshold (``model.json``);
- every external validation with its drop (the ``external.json`` files of ``cxr evaluate RUN --data OTHER``:
  those inside the run folder, and any written elsewhere that this card has recorded before);
- the lung-attention score (``metrics.json`` ``lung_attention``);
- the out-of-distribution guard (``ood.json``; "not assessed" without one);
- subgroup metrics where the run has them (``metrics.json`` ``subgroups``);
- known limitations: one line per distinct threat, most severe first. "Not validated on any external
  dataset" appears only while no external validation exists; afterwards a line names where the model was
  validated and by how much it dropped.

The card is written when training finishes (:func:`write_card`) and again when external validation adds
evidence (:func:`write_card` with the new ``external.json``). The JSON carries :data:`SCHEMA_VERSION`;
``cxr export`` embeds it in the exported file and ``cxr serve`` returns it at ``GET /v1/model``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jinja2

from cxrlab import pages
from cxrlab._version import __version__
from cxrlab.audit.severity import LEVELS, rank, ranked
from cxrlab.errors import CxrError
from cxrlab.metrics import read_metrics, table_rows
from cxrlab.runs import atomic_write, read_json, write_json
from cxrlab.stats import to_number

SCHEMA_VERSION = 1
CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"
OOD_FILE = "ood.json"
TEMPLATES = Path(__file__).parent / "templates"
DISCLAIMER = (
    "A research model trained with cxrlab. It is not a medical device and must not be used for diagnosis; "
    "its numbers hold only for images like its training data."
)
NOT_EXTERNAL = (
    "Not validated on any external dataset (`cxr evaluate RUN --data OTHER`): its accuracy on images from "
    "other hospitals, scanners or populations is unknown."
)
#: A drop (internal − external) of this much AUC or accuracy makes an external validation a ``high`` line.
LARGE_DROP = 0.05
#: A test split with fewer images gets a line about its wide intervals.
SMALL_TEST = 100
#: An OOD guard that keeps less of the run's own test images than this gets a line.
OOD_KEEPS = 0.9
#: An expected calibration error above this gets a line.
POOR_CALIBRATION = 0.1


# ----------------------------------------------------------------------------------------------- build


def build_card(run: str | Path, external: Iterable[str | Path] = ()) -> dict[str, Any]:
    """The model card of the run folder ``run`` (a dict, :data:`SCHEMA_VERSION`); ``external``: more
    ``external.json`` files than those inside the run folder (e.g. one written with ``--out`` elsewhere)."""
    run = Path(run)
    meta = _json_or_empty(run / "model.json")
    metrics: dict[str, Any] = {}
    evidence: list[str] = []
    if (run / "model.json").is_file():
        evidence.append("model.json")
    if (run / "metrics.json").is_file():
        metrics = read_metrics(run / "metrics.json")
        evidence.append("metrics.json")
    classes = list(metrics.get("classes") or meta.get("classes") or [])
    multilabel = bool(metrics.get("multilabel") or meta.get("task") == "multilabel")
    test = metrics.get("test") or {}
    data = metrics.get("data") or {}
    externals = [e for e in (_external(run, f, metrics) for f in _external_files(run, external)) if e]
    evidence += [e["file"] for e in externals]
    ood = _ood(run)
    if ood["status"] == "assessed":
        evidence.append(OOD_FILE)
    card: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "cxrlab model card",
        "cxrlab_version": __version__,
        "written": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "evidence": evidence,
        "disclaimer": DISCLAIMER,
        "run": run.resolve().name,
        "model": meta.get("model") or metrics.get("model"),
        "weights_sha256": _sha256(run / "model.safetensors"),
        "task": "multilabel" if multilabel else "single-label",
        "classes": classes,
        "input": _input(meta),
        "intended_use": _intended_use(meta, metrics, classes, multilabel),
        "training_data": _training_data(metrics),
        "metrics": _headline(test, multilabel, len(classes) == 2, metrics),
        "operating_point": _operating_point(meta, test, multilabel),
        "external_validation": externals,
        "lung_attention": _lung_attention(metrics.get("lung_attention")),
        "ood": ood,
        "subgroups": _subgroups(metrics.get("subgroups")),
    }
    card["limitations"] = _limitations(card, metrics, data, test)
    card["warnings"] = {  # the plain sentences by source (what `cxr serve`'s page and API show)
        "audit": [w["text"] for w in card["training_data"]["audit"]["warnings"]],
        "lung_attention": list(card["lung_attention"].get("warnings") or []),
        "external_validation": [s for e in externals for s in e["summary"]],
    }
    return card


def _json_or_empty(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    value = read_json(path)
    return value if isinstance(value, dict) else {}


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _input(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": meta.get("input", "images"),
        "image_size": meta.get("image_size"),
        "resize": meta.get("resize"),
        "channels": meta.get("channels"),
    }


def _task_words(classes: list[str], multilabel: bool) -> str:
    if multilabel:
        return f"the findings {', '.join(classes)} (each present or absent)"
    if len(classes) == 2:
        return f"{classes[0]} vs {classes[1]}"
    return "one of " + ", ".join(classes)


def _intended_use(
    meta: dict[str, Any], metrics: dict[str, Any], classes: list[str], multilabel: bool
) -> dict[str, Any]:
    data = metrics.get("data") or {}
    source = data.get("source") or "its training data"
    size = meta.get("image_size")
    codes = meta.get("input") == "codes"
    what = _task_words(classes, multilabel)
    subject = (
        f"autoencoder codes of chest radiographs ({size}x{size})"
        if codes
        else f"frontal chest radiographs resized to {size}x{size} px"
        if size
        else "chest radiographs"
    )
    intended = [
        f"Research and teaching: how a classifier of {what} trained on {source} behaves, on {subject} "
        "like those of its training data.",
        "Comparing training recipes, calibration, shortcuts and external validity with cxrlab's reports.",
    ]
    not_intended = [
        "Diagnosis, triage, screening or any other clinical decision: it is not a medical device.",
        f"Findings other than {', '.join(classes)}: it answers with these whatever the image shows."
        if classes
        else "Findings it was not trained on.",
        "Images unlike its training data (other hospitals, scanners, populations, lateral views, other body "
        "parts or modalities) without an external validation on such images.",
    ]
    if len(classes) == 2 and not multilabel:
        not_intended.append(
            "Another operating threshold than the saved one without re-measuring its sensitivity and "
            "specificity."
        )
    summary = f"Predicts {what} from {subject}, for research on {source}-like images only."
    return {"summary": summary, "intended": intended, "not_intended": not_intended}


def _training_data(metrics: dict[str, Any]) -> dict[str, Any]:
    data = metrics.get("data") or {}
    audit = metrics.get("audit")
    if audit is None:
        audit_part: dict[str, Any] = {"status": "not run", "warnings": []}
    else:
        audit_part = {
            "status": "failed" if audit.get("error") else "done",
            "warnings": ranked(audit.get("warnings") or []),
        }
    return {
        "source": data.get("source"),
        "layout": data.get("layout"),
        "counts": data.get("counts"),
        "split_origin": data.get("split_origin"),
        "skipped": len(data.get("skipped") or []),
        "audit": audit_part,
    }


def _pair(values: Any) -> list[float | None] | None:
    if not values:
        return None
    return [to_number(v) for v in values]


def _headline(
    test: dict[str, Any], multilabel: bool, binary: bool, metrics: dict[str, Any]
) -> dict[str, Any]:
    """The run's own test metrics: one entry per registered metric it reports, with its 95% CI."""
    out: dict[str, Any] = {"split": "the run's own test split", "n": test.get("n")}
    if not test:
        out["status"] = "absent"
        return out
    for row in table_rows(test, "multi" if multilabel else "single", binary=binary):
        out[row["name"]] = {
            "label": row["label"],
            "value": row["value"],
            "ci95": _pair(row["ci95"]),
            "text": row["text"],
            "higher_is_better": row["higher_is_better"],
        }
    resamples = test.get("bootstrap_resamples")
    out["ci"] = (
        str(test.get("ci_method") or f"95% bootstrap, {resamples} resamples")
        if resamples
        else "no intervals (eval.bootstrap = 0)"
    )
    op = test.get("operating_point") or {}
    if test.get("decision") == "threshold":  # every decision metric above is at the saved threshold
        out["decision"] = f"{op.get('positive_class')} when P >= {op.get('threshold')} ({op.get('method')})"
    if multilabel:
        per = test.get("per_finding") or {}
        out["per_finding"] = {
            f: {"auc": to_number(v.get("auc")), "auc_ci95": _pair(v.get("auc_ci95")),
                "positives": v.get("positives", v.get("support"))}
            for f, v in per.items()
        }  # fmt: skip
    out["warnings"] = list(metrics.get("warnings") or [])  # e.g. a model that predicts one class
    return out


def _operating_point(meta: dict[str, Any], test: dict[str, Any], multilabel: bool) -> dict[str, Any]:
    if multilabel:
        return {"method": "a threshold per finding, chosen on validation",
                "thresholds": dict(meta.get("thresholds") or test.get("thresholds") or {})}  # fmt: skip
    op = meta.get("operating_point") or test.get("operating_point") or {}
    return {
        "positive_class": op.get("positive_class"),
        "threshold": to_number(op.get("threshold")),
        "method": op.get("method", "argmax"),
    }


def _external_files(run: Path, more: Iterable[str | Path]) -> list[Path]:
    """Every external validation of the run: its folder's ``*/external.json`` (single-label) and
    ``*/metrics.json`` (a multi-label evaluation on other data, the ones with ``findings_match``), those its
    previous card recorded, and ``more``."""
    found = sorted(run.glob("*/external.json")) + sorted(run.glob("*/metrics.json"))
    previous = run / CARD_JSON
    if previous.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError, CxrError):
            for e in read_json(previous).get("external_validation") or []:
                found.append(Path(e["file"]) if Path(e["file"]).is_absolute() else run / e["file"])
    found += [Path(p) for p in more]
    seen, out = set(), []
    for f in found:
        key = f.resolve()
        if key not in seen and f.is_file():
            seen.add(key)
            out.append(f)
    return out


#: The metrics an external validation's line names, in order.
_DROP_METRICS = ("ROC AUC", "accuracy", "sensitivity", "specificity")


def _external(run: Path, file: Path, internal: dict[str, Any]) -> dict[str, Any] | None:
    """One external validation from its external.json (or a multi-label evaluation's metrics.json); None
    when the file is unreadable or is no external validation (e.g. the run's own re-scoring)."""
    try:
        name = str(file.resolve().relative_to(run.resolve()))
    except ValueError:
        name = str(file.resolve())
    if file.name == "metrics.json":
        return _external_multilabel(file, name, internal)
    try:
        ext = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(ext, dict) or "external" not in ext:
        return None
    rows = {r.get("metric"): r for r in ext.get("metrics") or []}
    shown = [
        {
            k: rows[m].get(k)
            for k in ("metric", "internal", "internal_ci95", "external", "external_ci95", "drop")
        }
        for m in _DROP_METRICS
        if m in rows and rows[m].get("external") is not None
    ]
    overlap = ext.get("overlap_with_training") or {}
    e = ext.get("external") or {}
    return {
        "source": e.get("source"),
        "n": e.get("n"),
        "counts": e.get("counts"),
        "file": name,
        "metrics": shown,
        "duplicates_of_training": overlap.get("external_images_in_training")
        if overlap.get("checked")
        else None,
        "summary": list(ext.get("summary") or []),
    }


def _external_multilabel(file: Path, name: str, internal: dict[str, Any]) -> dict[str, Any] | None:
    """A multi-label `cxr evaluate RUN --data OTHER`: the macro ROC AUC over the findings both sides score,
    internally (the run's test split) and there."""
    try:
        ev = read_metrics(file)
    except (OSError, ValueError, CxrError):
        return None
    if not ev.get("multilabel") or "findings_match" not in ev:
        return None
    per = (ev.get("test") or {}).get("per_finding") or {}
    own = ((internal.get("test") or {}).get("per_finding")) or {}

    def auc(d: dict[str, Any], f: str) -> float | None:
        return to_number((d.get(f) or {}).get("auc"))

    both = [f for f in per if auc(per, f) is not None and auc(own, f) is not None]
    rows = []
    if both:
        a = sum(auc(own, f) or 0.0 for f in both) / len(both)
        b = sum(auc(per, f) or 0.0 for f in both) / len(both)
        rows.append({"metric": f"macro ROC AUC over the {len(both)} findings both score", "internal": a,
                     "internal_ci95": None, "external": b, "external_ci95": None, "drop": a - b})  # fmt: skip
    data = ev.get("data") or {}
    return {
        "source": data.get("source"),
        "n": (ev.get("test") or {}).get("n"),
        "counts": None,
        "file": name,
        "metrics": rows,
        "duplicates_of_training": None,
        "summary": list((ev.get("test") or {}).get("notes") or []),
    }


def _ood(run: Path) -> dict[str, Any]:
    """The out-of-distribution guard fitted at training (``ood.json``), or "not assessed"."""
    path = run / OOD_FILE
    if not path.is_file():
        return {"status": "not assessed", "note": "no out-of-distribution guard in this run (no ood.json)"}
    try:
        ood = read_json(path)
    except (OSError, ValueError, CxrError) as exc:
        return {"status": "not assessed", "note": f"ood.json unreadable ({exc})"}
    if not isinstance(ood, dict):
        return {"status": "not assessed", "note": "ood.json is not an object"}
    kept = to_number(_first(ood, "val_kept_share", "val_kept"))
    test_kept = to_number(_first(ood, "test_kept_share", "test_kept"))
    return {
        "status": "assessed",
        "method": ood.get("method"),
        "description": ood.get("method_text") or ood.get("description"),
        "threshold": to_number(ood.get("threshold")),
        "percentile": to_number(ood.get("percentile")),
        "val_kept": kept,
        "test_kept": test_kept,
        "acquisition_checks": ood.get("acquisition_checks") or ood.get("checks"),
    }


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d:
            value = d[k]
            return value.get("share") if isinstance(value, dict) else value
    return None


def _lung_attention(la: dict[str, Any] | None) -> dict[str, Any]:
    if not la:
        return {"status": "absent", "note": "not in this run (trained before the score existed)"}
    if la.get("status") != "done":
        return {"status": la.get("status", "absent"), "note": la.get("note", "")}
    overall = la.get("overall") or {}
    return {
        "status": "done",
        "sample": la.get("sample"),
        "method": la.get("method"),
        "min_share": la.get("min_share"),
        "overall": {
            "lung_share": overall.get("lung_share"),
            "ci95": overall.get("ci95"),
            "n": overall.get("n"),
        },
        "by_class": {
            c: {
                "lung_share": v.get("lung_share"),
                "ci95": v.get("ci95"),
                "n": v.get("n"),
                "low": v.get("low"),
            }
            for c, v in (la.get("by_class") or {}).items()
        },
        "warnings": list(la.get("warnings") or []),
    }


def _subgroups(sub: dict[str, Any] | None) -> dict[str, Any]:
    if not sub:
        return {"status": "not assessed", "summary": [], "warnings": []}
    return {
        "status": "assessed",
        "summary": [str(s) for s in sub.get("summary") or []],
        "warnings": [str(s) for s in sub.get("warnings") or []],
    }


# ----------------------------------------------------------------------------------------- limitations


def _limitations(
    card: dict[str, Any], metrics: dict[str, Any], data: dict[str, Any], test: dict[str, Any]
) -> list[dict[str, str]]:
    """The known limitations, one line per distinct threat, most severe first."""
    out: list[dict[str, str]] = []

    def add(severity: str, topic: str, text: str) -> None:
        out.append({"severity": severity, "topic": topic, "text": " ".join(text.split())})

    for w in metrics.get("warnings") or []:  # the single-class warnings of cxrlab.metrics
        add("critical" if "does not tell the classes apart" in w else "medium", "decision", w)
    externals = card["external_validation"]
    source = data.get("source")
    if not externals:
        only = f" Trained and tested on {source} only ({test.get('n', '?')} test images)." if source else ""
        add("high", "external validity", NOT_EXTERNAL + only)
    for e in externals:
        dup = e.get("duplicates_of_training")
        if dup:
            text = (f"The external set {e['source']} shares {dup} of its {e['n']} images with the training "
                    "or validation images: it is not independent.")  # fmt: skip
            add("critical", "test leakage", text)
        for note in e["summary"]:  # a multi-label evaluation's note that its images share training's names
            if "not an external test" in note:
                add("critical", "test leakage", f"The external set {e['source']}: {note}.")
        add(*_external_line(e, source))
    for w in card["training_data"]["audit"]["warnings"]:
        add(w["severity"], w["topic"], w["text"])
    la = card["lung_attention"]
    low = {c: v for c, v in (la.get("by_class") or {}).items() if v.get("low")}
    if low:
        parts = ", ".join(f"'{c}' {v['lung_share']:.0%}{_pct(v.get('ci95'))}" for c, v in low.items())
        text = (f"Its heatmaps miss the lungs: share of their mass on the lungs for {parts} (below "
                f"{la.get('min_share', 0.5):.0%}): it reads something other than the lungs (text markers, "
                "borders, devices).")  # fmt: skip
        add("high", "lung attention", text)
    test_kept = card["ood"].get("test_kept")
    if test_kept is not None and test_kept < OOD_KEEPS:
        text = (f"Its out-of-distribution guard flags {1 - test_kept:.0%} of its own test images as unlike "
                "the training data: those get the warning, not a confident probability.")  # fmt: skip
        add("medium", "out of distribution", text)
    if card["ood"]["status"] != "assessed":
        text = ("No out-of-distribution guard: an image unlike the training data (another view, body part "
                "or population) still gets a confident answer.")  # fmt: skip
        add("medium", "out of distribution", text)
    for w in card["subgroups"]["warnings"]:
        add("medium", "subgroups", w)
    ece = to_number(test.get("ece"))
    if ece is not None and ece > POOR_CALIBRATION and card["task"] != "multilabel":
        add("medium", "calibration", f"Its probabilities are poorly calibrated (expected calibration error "
            f"{ece:.3f} on its test split): read them as scores, not as chances.")  # fmt: skip
    n = test.get("n")
    if isinstance(n, int) and 0 < n < SMALL_TEST:
        head = card["metrics"]
        m = head.get("auc") or head.get("macro_auc") or head.get("accuracy")
        span = (
            f" ({m['label']} 95% CI {m['ci95'][0]:.3f}–{m['ci95'][1]:.3f})"
            if m and m.get("ci95") and None not in m["ci95"]
            else ""
        )
        add(
            "medium",
            "test size",
            f"The test split has only {n} images: every number above is uncertain{span}.",
        )
    if card["training_data"]["audit"]["status"] == "not run":
        add(
            "medium",
            "audit",
            "No data audit in this run: leakage and shortcuts were not checked (`cxr audit`).",
        )
    seen: set[str] = set()
    unique = []
    for item in out:
        key = item["text"].lower()
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return sorted(unique, key=lambda x: rank(x["severity"]))


def _pct(interval: Any) -> str:
    return f" (95% CI {interval[0]:.0%}–{interval[1]:.0%})" if interval and None not in interval else ""


def _external_line(e: dict[str, Any], internal_source: str | None) -> tuple[str, str, str]:
    """``(severity, topic, text)``: where the model was validated and how much it dropped."""
    parts, worst = [], 0.0
    for row in e["metrics"]:  # AUC and accuracy, and sensitivity or specificity where they drop a lot
        if row.get("drop") is None:
            continue
        if "ROC AUC" not in row["metric"] and row["metric"] != "accuracy" and row["drop"] < LARGE_DROP:
            continue
        parts.append(f"{row['metric']} {row['internal']:.3f} internally, {row['external']:.3f} there "
                     f"({-row['drop']:+.3f})")  # fmt: skip
        worst = max(worst, row["drop"])
    where = f"Externally validated on {e['source']} ({e['n']} images)"
    if not parts:
        return "medium", "external validity", f"{where}: no comparable metric (see {e['file']})."
    level = "high" if worst >= LARGE_DROP else "low"
    verdict = "it does worse outside its training data" if worst >= LARGE_DROP else "no large drop"
    inside = f" than on {internal_source}" if internal_source and worst >= LARGE_DROP else ""
    return level, "external validity", f"{where}: {'; '.join(parts)} — {verdict}{inside}."


# ----------------------------------------------------------------------------------------------- write


def write_card(run: str | Path, external: Iterable[str | Path] = ()) -> dict[str, Any]:
    """Build the card of ``run`` and write ``model_card.json`` and ``model_card.md`` into it; returns it."""
    run = Path(run)
    card = build_card(run, external)
    write_json(run / CARD_JSON, card)
    atomic_write(run / CARD_MD, render_markdown(card))
    return card


def read_card(run: str | Path) -> dict[str, Any] | None:
    """The run's ``model_card.json`` (None when it has none); one line for a newer schema."""
    path = Path(run) / CARD_JSON
    if not path.is_file():
        return None
    card = read_json(path)
    version = card.get("schema_version") if isinstance(card, dict) else None
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise CxrError(
            f"{path}: model card schema version {version!r} is not one this cxrlab reads (up to "
            f"{SCHEMA_VERSION}); upgrade cxrlab or rewrite it with `cxr evaluate`"
        )
    return card


def card_for(run: str | Path) -> dict[str, Any]:
    """The run's card as written, or built now from its folder (a run trained before cards existed)."""
    return read_card(run) or build_card(run)


def compact(card: dict[str, Any], most: int = 6) -> dict[str, Any]:
    """What a page shows in a few lines: the ``most`` most severe limitations and how many more there are
    per severity, plus the evidence the card has (external sets, the OOD guard, the lung share)."""
    lim = card.get("limitations") or []
    rest = lim[most:]
    counts = {lvl: sum(1 for x in rest if x["severity"] == lvl) for lvl in LEVELS}
    return {
        "shown": lim[:most],
        "more": len(rest),
        "more_by_severity": {k: v for k, v in counts.items() if v},
        "external": [f"{e['source']} (n={e['n']})" for e in card.get("external_validation") or []],
        "ood": card.get("ood", {}).get("status", "not assessed"),
    }


_MD_ENV: jinja2.Environment | None = None


def render_markdown(card: dict[str, Any]) -> str:
    """``model_card.md`` (``reports/templates/model_card.md``, Jinja without HTML escaping)."""
    global _MD_ENV
    if _MD_ENV is None:
        _MD_ENV = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATES),
            autoescape=False,  # Markdown, not HTML  # noqa: S701
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=True,
        )
        _MD_ENV.filters.update(pages.ENV.filters)
        _MD_ENV.filters["signed"] = lambda v: "—" if v is None else f"{-v:+.3f}"
    return _MD_ENV.get_template(CARD_MD).render(card=card)
