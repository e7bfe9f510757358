"""measure.errors: the one line a failed sample, role or run leaves in its trace."""
from measure.errors import first_line, one_line
from measure.writer import failed_row


def test_one_line_keeps_type_and_first_line_only():
    assert one_line(RuntimeError("CUDA out of memory\nTried to allocate 2 GiB")) == "RuntimeError: CUDA out of memory"


def test_empty_message_is_the_type_alone():
    assert one_line(KeyError()) == "KeyError"
    assert first_line(ValueError("  \n ")) == "ValueError"


def test_first_line_skips_leading_blank_lines_of_strings():
    assert first_line("\n  disk full \nmore") == "disk full"


def test_failed_row_error_column_is_one_line():
    row = failed_row({"sample_id": "s0"}, "prefill", OSError("no such file\ntraceback..."))
    assert row["error"] == "OSError: no such file" and row["status"] == "failed"
    assert failed_row({}, "load", "worker died\nexit code 9")["error"] == "worker died"
