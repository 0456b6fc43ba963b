"""The README's performance section is rewritten from the bench results, between its markers only."""
from __future__ import annotations

from bench.report import README_MARKERS, update_readmes


def test_update_readmes_replaces_only_the_marked_section(tmp_path):
    start, end = README_MARKERS
    readme, other = tmp_path / "README.md", tmp_path / "NOTES.md"
    readme.write_text(f"# Title\n\n## Performance\n\n{start}\nold table\n{end}\n\nWhat it says.\n")
    other.write_text("no markers here\n")
    done = update_readmes("## Performance\n\n| a | b |\n|---|---|\n| 1 | 2 |\n", [readme, other, tmp_path / "gone.md"])
    assert done == [readme]
    assert readme.read_text() == (f"# Title\n\n## Performance\n\n{start}\n| a | b |\n|---|---|\n| 1 | 2 |\n{end}\n\n"
                                  "What it says.\n")
    assert other.read_text() == "no markers here\n"
