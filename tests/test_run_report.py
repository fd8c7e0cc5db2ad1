"""``run_report.json``: what each chapter's execution took, kept across cache hits."""

import json

from bookbuild.pipeline import ChapterRun, _report


def test_a_cache_hit_keeps_the_seconds_its_execution_took(tmp_path):
    _report(tmp_path, [ChapterRun("01_world_model", "ci", 12.5, True),
                       ChapterRun("02_compounding_error", "ci", 30.0, True)])
    _report(tmp_path, [ChapterRun("01_world_model", "ci", 0.0, True, cached=True),
                       ChapterRun("02_compounding_error", "ci", 41.0, True)])
    report = json.loads((tmp_path / "run_report.json").read_text())
    assert report["01_world_model"]["seconds"] == 12.5 and report["01_world_model"]["cached"]
    assert report["02_compounding_error"]["seconds"] == 41.0  # executed again: the new time
    assert not report["02_compounding_error"]["cached"]


def test_a_cache_hit_with_no_earlier_report_records_what_it_has(tmp_path):
    _report(tmp_path, [ChapterRun("01_world_model", "ci", 0.0, True, cached=True)])
    report = json.loads((tmp_path / "run_report.json").read_text())
    assert report["01_world_model"] == {"chapter": "01_world_model", "profile": "ci", "seconds": 0.0,
                                        "ok": True, "error": "", "cached": True}
