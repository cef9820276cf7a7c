"""What the DICOM node stores back into the PACS: a Comprehensive SR with the model's findings and a
Secondary Capture image of the heatmap overlay, both in the source image's study (highdicom).

The SR (``cxrlab findings`` series) is one container, *Diagnostic imaging report* (LOINC 18748-4), holding:

- *Algorithm Name* (DCM 111001) ``cxrlab MODEL`` and *Algorithm Version* (DCM 111003): the run id
  (:func:`cxrlab.deploy.export.run_id`: the run folder's name @ the weights' SHA-256 prefix);
- *Finding* (DCM 121071): the decision at the run's saved operating threshold, or ``outside what this model
  was validated on`` when the out-of-distribution guard says so;
- one NUM per class, *probability of CLASS* (code ``CLASS`` in the private scheme ``99CXRLAB``, unit UCUM
  ``1``), the calibrated probability exactly as ``cxr predict`` gives it;
- *operating threshold* (``99CXRLAB``/``op-threshold``) of a binary run, with the positive class
  in its meaning; a run deciding by argmax has none;
- *out-of-distribution verdict* (``99CXRLAB``/``ood-verdict``, TEXT) and, when assessed, its score and
  threshold as NUMs; ``not assessed`` when the prediction carries no ``ood`` entry;
- *heatmap share inside the lung fields* (``99CXRLAB``/``lung-share``) when a heatmap was made;
- *Source image for image processing operation* (DCM 121322): an IMAGE reference to the radiograph, and
  *Best illustration of finding* (DCM 121080): one to the heatmap's Secondary Capture.

The source image is also the SR's evidence (Current Requested Procedure Evidence Sequence). Patient and
study attributes are copied from the source by highdicom, as DICOM requires of objects in a study; they
are never logged. :func:`read_report` reads an SR written here back into a plain dict.
"""

from __future__ import annotations

import io
import warnings
from typing import Any

import numpy as np

from cxrlab._optional import require

SCHEME = "99CXRLAB"  # a private coding scheme (PS3.16 8.2: designators starting with 99 are local)
SR_SERIES_NUMBER = 9901
SC_SERIES_NUMBER = 9902
OUTSIDE = "outside what this model was validated on"
NOT_ASSESSED = "not assessed (this run has no out-of-distribution guard)"


def _hd() -> Any:
    return require("highdicom", "pacs", "cxr node")


def _code(value: str, meaning: str, scheme: str = SCHEME) -> Any:
    return _hd().sr.CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def _unit() -> Any:
    return _code("1", "no units", "UCUM")


def _text(name: Any, value: str) -> Any:
    hd = _hd()
    return hd.sr.TextContentItem(name=name, value=value[:1024], relationship_type="CONTAINS")


def _num(name: Any, value: float) -> Any:
    hd = _hd()
    return hd.sr.NumContentItem(
        name=name, value=round(float(value), 6), unit=_unit(), relationship_type="CONTAINS"
    )


def ood_verdict(ood: dict[str, Any] | None) -> str:
    """One line for the SR (and the node's results): in distribution, outside, or not assessed."""
    if not ood or ood.get("in_distribution") is None:  # a run without a guard (cxrlab.evaluation.ood)
        return NOT_ASSESSED
    if ood.get("score") is None:  # no guard, but an acquisition check (e.g. the modality) objects
        how = "no guard: acquisition checks only"
    else:
        how = f"score {float(ood['score']):.4g}, threshold {float(ood['threshold']):.4g}"
    if ood.get("in_distribution") is True:
        return f"within what this model was validated on ({how})"
    reasons = "; ".join(str(r) for r in ood.get("reasons") or [])
    return f"{OUTSIDE} ({how}{': ' + reasons if reasons else ''})"


def decision_text(result: dict[str, Any]) -> str:
    """The Finding: the predicted class, or :data:`OUTSIDE` when the guard flags the image."""
    ood = result.get("ood") or {}
    if ood.get("in_distribution") is False:
        return f"{OUTSIDE}: no finding reported (model output {result['class']!s} not applicable)"
    return str(result["class"])


#: Patient and General Study attributes of Type 2 (present, possibly empty): highdicom copies them from the
#: source into the SR and SC, so a source that lacks one gets it empty (as DICOM requires), never invented.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")  # fmt: skip


def _complete(source: Any) -> Any:
    """A copy of ``source`` with every :data:`TYPE2` attribute present (empty when it was missing)."""
    import copy

    ds = copy.deepcopy(source)
    for keyword in TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def heatmap_image(
    source: Any, overlay_rgb: np.ndarray, series_uid: str, sop_uid: str, manufacturer: str, description: str
) -> Any:
    """The heatmap overlay (``(H, W, 3)`` uint8) as a Secondary Capture image in ``source``'s study."""
    hd = _hd()
    with warnings.catch_warnings():  # highdicom's warnings quote patient names: never let them reach a log
        warnings.simplefilter("ignore")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=_complete(source),
            pixel_array=np.ascontiguousarray(overlay_rgb, dtype=np.uint8),
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=series_uid,
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=sop_uid,
            instance_number=1,
            manufacturer=manufacturer,
            patient_orientation=_orientation(source),
            transfer_syntax_uid="1.2.840.10008.1.2.1",  # explicit VR little endian: any PACS stores it
        )
    sc.SeriesDescription = description[:64]
    sc.ImageComments = "Heatmap of the model's decision over the source radiograph (not for diagnosis alone)"
    return sc


def _orientation(source: Any) -> tuple[str, str]:
    """The source image's Patient Orientation when it has one, else the usual frontal chest film's."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return str(value[0]), str(value[1])
    return ("L", "F")  # PA/AP chest radiograph as displayed: rows towards the patient's left, columns feet


def structured_report(
    source: Any,
    result: dict[str, Any],
    *,
    classes: list[str],
    operating_point: dict[str, Any],
    model: str,
    version: str,
    series_uid: str,
    sop_uid: str,
    manufacturer: str,
    description: str,
    heatmap: Any | None = None,
    lung_share: float | None = None,
) -> Any:
    """A Comprehensive SR of one prediction (``{"class", "probabilities", "ood"?}``) in ``source``'s study
    (module docstring for the content)."""
    hd = _hd()
    codes = require("pydicom.sr.codedict", "pacs", "cxr node").codes
    root = hd.sr.ContainerContentItem(name=_code("18748-4", "Diagnostic imaging report", "LN"))
    items = [
        _text(codes.DCM.AlgorithmName, f"cxrlab {model}"),
        _text(codes.DCM.AlgorithmVersion, version),
        _text(codes.DCM.Finding, decision_text(result)),
    ]
    for name in classes:
        items.append(_num(_code(name, f"probability of {name}"), result["probabilities"][name]))
    if operating_point.get("threshold") is not None and operating_point.get("positive_class") is not None:
        positive = operating_point["positive_class"]
        items.append(_num(_code("op-threshold", f"operating threshold on p({positive})"),
                          operating_point["threshold"]))  # fmt: skip
    ood = result.get("ood")
    items.append(_text(_code("ood-verdict", "out-of-distribution verdict"), ood_verdict(ood)))
    if ood and ood.get("score") is not None:
        items.append(_num(_code("ood-score", "out-of-distribution score"), ood["score"]))
        items.append(_num(_code("ood-threshold", "out-of-distribution threshold"), ood["threshold"]))
    if lung_share is not None:
        items.append(_num(_code("lung-share", "heatmap share inside the lung fields"), lung_share))
    items.append(hd.sr.ImageContentItem(
        name=codes.DCM.SourceImageForImageProcessingOperation,
        referenced_sop_class_uid=source.SOPClassUID, referenced_sop_instance_uid=source.SOPInstanceUID,
        relationship_type="CONTAINS",
    ))  # fmt: skip
    if heatmap is not None:
        items.append(hd.sr.ImageContentItem(
            name=codes.DCM.BestIllustrationOfFinding,
            referenced_sop_class_uid=heatmap.SOPClassUID, referenced_sop_instance_uid=heatmap.SOPInstanceUID,
            relationship_type="CONTAINS",
        ))  # fmt: skip
    root.ContentSequence = items
    with warnings.catch_warnings():  # highdicom's warnings quote patient names: never let them reach a log
        warnings.simplefilter("ignore")
        return _sr(hd, _complete(source), heatmap, root, series_uid, sop_uid, manufacturer, description)


def _sr(hd: Any, source: Any, heatmap: Any, root: Any, series_uid: str, sop_uid: str, manufacturer: str,
        description: str) -> Any:  # fmt: skip
    sr = hd.sr.ComprehensiveSR(
        evidence=[source] if heatmap is None else [source, heatmap],
        content=root,
        series_instance_uid=series_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        is_verified=False,
    )
    sr.SeriesDescription = description[:64]
    return sr


def read_report(ds: Any) -> dict[str, Any]:
    """An SR written by :func:`structured_report`, read back: ``algorithm``, ``version``, ``finding``,
    ``probabilities`` {class: p}, ``threshold``, ``ood_verdict``, ``ood_score``, ``lung_share``,
    ``source`` (SOP Instance UID) and ``heatmap`` (SOP Instance UID or None)."""
    out: dict[str, Any] = {"probabilities": {}, "threshold": None, "ood_score": None, "lung_share": None,
                           "heatmap": None}  # fmt: skip
    for item in ds.ContentSequence:
        code = item.ConceptNameCodeSequence[0]
        kind, scheme = item.ValueType, code.CodingSchemeDesignator
        value = str(code.get("CodeValue") or code.get("LongCodeValue"))  # values over 16 characters
        if kind == "TEXT":
            key = {
                "111001": "algorithm",
                "111003": "version",
                "121071": "finding",
                "ood-verdict": "ood_verdict",
            }
            out[key.get(value, value)] = str(item.TextValue)
        elif kind == "NUM":
            number = float(item.MeasuredValueSequence[0].NumericValue)
            if value == "op-threshold":
                out["threshold"] = number
            elif value == "ood-score":
                out["ood_score"] = number
            elif value == "lung-share":
                out["lung_share"] = number
            elif scheme == SCHEME and value != "ood-threshold":
                out["probabilities"][value] = number
        elif kind == "IMAGE":
            uid = str(item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID)
            out["source" if value == "121322" else "heatmap"] = uid
    return out


def to_bytes(ds: Any) -> bytes:
    """A dataset as a DICOM Part 10 file (preamble, file meta)."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
