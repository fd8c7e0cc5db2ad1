"""bookbuild.error_report: what a failed chapter's page says, from its executed copy or nbval's report.
The pipeline test builds such pages into a book; these check the cases a tiny book does not reach."""

import nbformat

from bookbuild import error_report
from wmbook.device import environment_stamp, format_stamp


def _notebook(*cells: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("(intro)=\n# A chapter"), *cells])


def test_the_stamp_is_read_from_the_setup_cells_output_without_what_follows_it():
    stamp = format_stamp(environment_stamp("cpu"))
    setup = nbformat.v4.new_code_cell("setup_chapter(...)")
    setup.outputs = [nbformat.v4.new_output("stream", name="stdout",
                                            text=f"{stamp}\nprofile        : ci, seed 0\n{{'epochs': 2}}\n")]
    found = error_report.stamp_text(_notebook(setup))
    assert found == f"{stamp}\nprofile        : ci, seed 0"
    assert "cpu capability" in found
    assert error_report.stamp_text(_notebook(nbformat.v4.new_code_cell("x = 1"))) is None


def test_a_failure_outside_any_cell_is_reported_with_the_pipelines_account():
    message = "chapter 01_x failed outside a cell: DeadKernelError: Kernel died"
    failure = error_report.execution_failure("01_x", None, message, "ci", 3, kept="")
    assert failure.cell_index is None and failure.stamp is None
    report = error_report.report_notebook(failure, _notebook())
    text = "\n".join(cell.source for cell in report.cells)
    assert message in text and "none was written" in text and "seed 3" in text
    assert "The cell that failed" not in text and not any(c.cell_type == "code" for c in report.cells)
    assert text.startswith("(intro)=\n# A chapter")  # the chapter's label and title
    assert error_report.is_report(report)
    assert report.metadata["papermill"]["parameters"] == {"profile": "ci", "seed": 3}


def test_an_error_with_backticks_stays_one_code_span():
    failure = error_report.execution_failure("01_x", None, "ValueError: bad `x` value`", "ci", 0, kept="")
    first = error_report.report_notebook(failure, _notebook()).cells[0].source
    assert "- **Error**: `` ValueError: bad `x` value` ``" in first
