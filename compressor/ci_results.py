"""What a CI system reads from a build or verify: JUnit XML and a Markdown verdict for the job page.

JUnit: one test suite per export, one test case per budget. A failed budget is a ``failure`` with
its measured value and threshold, an inconclusive speed result is ``skipped`` (its message says
whether the recipe counts it as a failure), a budget that could not be measured is an ``error``; a
measurement that failed before any budget could be judged is one ``error`` case named after its
step. The metrics go in as suite properties. The file is written with junitparser, the library
CI tooling itself uses to read and merge JUnit files.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from compressor.report import ROWS, STATUS_TEXT, _metric_cell, _status

SUMMARY_ENV = "GITHUB_STEP_SUMMARY"  # GitHub Actions shows what a step appends to this file on the job page


def _property_value(value: Any) -> str | None:
    """A metric as a property value; None for what is not a scalar (latency samples, dicts)."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, (int, float)):
        return "nan" if isinstance(value, float) and math.isnan(value) else f"{value:.6g}"
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"[{value[0]:.6g}, {value[1]:.6g}]"  # a confidence interval
    return None


def _budget_case(export: str, budget: dict[str, Any], on_inconclusive: str) -> Any:
    from junitparser import Error, Failure, Skipped, TestCase

    case = TestCase(budget["name"], classname=f"compress.verify.{export}")
    value = "not measured" if budget["value"] is None else f"{budget['value']:.6g}"
    numbers = f"measured {value}, threshold {budget['limit']:.6g}"
    status = budget["status"]
    if status == "fail":
        case.result = [Failure(f"{budget['name']}: {numbers}", "BudgetFailed")]
    elif status == "inconclusive":
        blocks = ("counts as a failure (verify.latency.on_inconclusive: fail)" if on_inconclusive == "fail"
                  else "does not block the release (verify.latency.on_inconclusive: warn)")
        case.result = [Skipped(f"{budget['name']}: inconclusive, {numbers}; {blocks}", "Inconclusive")]
    elif status == "error":
        case.result = [Error(f"{budget['name']}: {numbers}", "NotMeasured")]
    if status != "pass":
        case.result[0].text = budget["detail"]
    case.system_out = budget["detail"]
    return case


def junit_xml(report: dict[str, Any], name: str = "compress") -> Any:
    """The JUnit document (a junitparser ``JUnitXml``) of a build or verify report."""
    from junitparser import Error, JUnitXml, TestCase, TestSuite

    xml = JUnitXml(name)
    for export, v in (report.get("verify") or {}).items():
        suite = TestSuite(export)
        suite.add_property("verdict", v.get("status", "?"))
        for key, value in sorted((v.get("metrics") or {}).items()):
            text = _property_value(value)
            if text is not None:
                suite.add_property(key, text)
        error = v.get("error")
        if error and not any(b["status"] == "error" for b in v.get("budgets", [])):
            case = TestCase(f"measure: {error['step']}", classname=f"compress.verify.{export}")
            problem = Error(f"the {error['model']} model's {error['step']} failed: {error['message'].splitlines()[0]}",
                            error["error_type"])
            problem.text = error["message"] + (f"\nhint: {error['hint']}" if error.get("hint") else "")
            case.result = [problem]
            suite.add_testcase(case)
        for budget in v.get("budgets", []):
            suite.add_testcase(_budget_case(export, budget, v.get("on_inconclusive", "fail")))
        suite.update_statistics()
        xml.add_testsuite(suite)
    # the totals by hand: update_statistics would also write `skipped`, which the <testsuites> element
    # of the schema Jenkins validates against does not allow
    suites = list(xml)
    xml.tests, xml.failures, xml.errors = (sum(getattr(s, k) for s in suites) for k in ("tests", "failures", "errors"))
    return xml


def write_junit(report: dict[str, Any], path: Path) -> None:
    """Write the JUnit XML of ``report`` to ``path`` (complete or absent)."""
    from compressor.atomic import write_text_atomic

    text = junit_xml(report).tostring()
    write_text_atomic(Path(path), text.decode("utf-8") if isinstance(text, bytes) else text)


def summary_markdown(report: dict[str, Any], title: str = "compress") -> str:
    """A compact verdict table for a CI job page: one column per export, budgets and headline metrics."""
    exports = list((report.get("verify") or {}).items())
    lines = [f"### {title}: {report.get('verdict', '?').upper()} (`{report.get('model', '')}`)", ""]
    if not exports:
        return "\n".join(lines + ["Not verified.", ""]) + "\n"
    lines += ["| | " + " | ".join(f"`{n}`" for n, _ in exports) + " |", "|---" * (len(exports) + 1) + "|",
              "| status | " + " | ".join(f"**{_status(v)}**" for _, v in exports) + " |"]
    names = sorted({b["name"] for _, v in exports for b in v.get("budgets", [])})
    for budget in names:
        cells = []
        for _, v in exports:
            found = [b for b in v.get("budgets", []) if b["name"] == budget]
            cells.append(f"{STATUS_TEXT[found[0]['status']]}: {found[0]['detail']}" if found else "-")
        lines.append(f"| {budget} | " + " | ".join(cells) + " |")
    for label, key, fmt in ROWS:
        if any(v.get("metrics", {}).get(key) is not None for _, v in exports):
            lines.append(f"| {label} | " + " | ".join(_metric_cell(v.get("metrics", {}), key, fmt)
                                                    for _, v in exports) + " |")
    return "\n".join(lines) + "\n\n"


def append_summary(report: dict[str, Any], path: Path | None, title: str = "compress") -> Path | None:
    """Append the verdict table to ``path``, or to ``$GITHUB_STEP_SUMMARY`` when no path is given and it is set."""
    target = path if path is not None else (Path(os.environ[SUMMARY_ENV]) if os.environ.get(SUMMARY_ENV) else None)
    if target is None:
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as f:
        f.write(summary_markdown(report, title))
    return target
