"""The reproduction status table: its file is well formed, every number in it is checked by the
chapter it names, a wrong number fails with a message naming the row, and the README quotes its
summary."""

import re
from pathlib import Path

import pytest

from lidvae_nb import report

ROOT = Path(__file__).resolve().parents[1]
STATUS = ROOT / "book" / "results" / "status.toml"

ROW = """
[[result]]
id = "{id}"
paper = "P"
what = "a result"
chapter = "01_collapse_theorem"
paper_value = "3 of 3"
ours = "{ours}"
{values}
checked_in = "{checked_in}"
scale = "small"
verdict = "{verdict}"
reason = "{reason}"
"""


def write(tmp_path, **kw):
    fields = {
        "id": "r1",
        "ours": "{hits} of {n}",
        "values": "values = { hits = 2, n = 3 }\ntolerance = 0",
        "checked_in": "book",
        "verdict": "partly",
        "reason": "one miss",
    }
    fields.update(kw)
    path = tmp_path / "status.toml"
    path.write_text(ROW.format(**fields))
    return path


def test_the_books_status_file_loads_and_covers_the_three_papers():
    rows = report.load_status(STATUS)
    assert {r["paper"].split()[0] for r in rows} == {"Wang", "Yacoby", "Kivva"}
    assert {r["verdict"] for r in rows} <= set(report.VERDICTS)
    for r in rows:
        assert (ROOT / "book" / f"{r['chapter']}.md").is_file(), r["id"]


def test_every_row_with_values_is_checked_by_its_chapter():
    """A number in the table that no chapter checks could drift from the data unseen."""
    unchecked = []
    for r in report.load_status(STATUS):
        text = (ROOT / "book" / f"{r['chapter']}.md").read_text()
        calls = re.findall(r"check_status\(\s*\"([\w-]+)\"", text)
        if r.get("values") and r["id"] not in calls:
            unchecked.append(f"{r['id']} (chapter {r['chapter']})")
        if not r.get("values"):
            assert r["verdict"] == "not run", f"{r['id']}: a result that ran needs values"
    assert not unchecked, f"status rows no chapter checks: {unchecked}"


def test_check_status_passes_fails_and_skips(tmp_path):
    path = write(tmp_path)
    assert report.check_status("r1", "book", path, hits=2, n=3) is True
    with pytest.raises(
        report.ClaimFailed, match=r"'r1' \(a result: ours '2 of 3'\).*hits: the table"
    ):
        report.check_status("r1", "book", path, hits=1, n=3)
    # another profile's run is not what the row records: nothing is checked
    assert report.check_status("r1", "smoke", path, hits=1, n=3) is False
    with pytest.raises(ValueError, match="holds the values"):
        report.check_status("r1", "book", path, hits=2)
    with pytest.raises(ValueError, match="got 'boook'"):
        report.check_status("r1", "boook", path, hits=2, n=3)
    with pytest.raises(ValueError, match="no row 'r9'"):
        report.check_status("r9", "book", path, hits=2, n=3)


def test_check_status_uses_the_tolerance(tmp_path):
    path = write(
        tmp_path, ours="{x:.2f}", values="values = { x = 0.50 }\ntolerance = 0.01", checked_in="any"
    )
    assert report.check_status("r1", "smoke", path, x=0.505)
    with pytest.raises(report.ClaimFailed):
        report.check_status("r1", "smoke", path, x=0.52)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"verdict": "mostly"}, "verdict 'mostly'"),
        ({"ours": "{hits} of {total}"}, "names"),
        ({"checked_in": "smoke"}, "checked_in"),
        ({"reason": " "}, "needs a reason"),
    ],
)
def test_bad_rows_are_named(tmp_path, kw, message):
    with pytest.raises(ValueError, match=message):
        report.load_status(write(tmp_path, **kw))


def test_duplicate_ids_are_refused(tmp_path):
    path = write(tmp_path)
    path.write_text(path.read_text() * 2)
    with pytest.raises(ValueError, match="appears twice"):
        report.load_status(path)


def test_table_and_summary(tmp_path):
    path = write(tmp_path)
    table = report.status_table(path)
    assert "| P | a result | 01 | 3 of 3 | 2 of 3 | small | partly: one miss |" in table
    assert report.status_summary(path) == (
        "Of the 1 results of the three papers in the status table: 1 partly."
    )


def test_the_readme_quotes_the_digest():
    text = (ROOT / "README.md").read_text()
    match = re.search(
        r"<!-- status digest: begin -->\n(.*?)\n<!-- status digest: end -->", text, re.S
    )
    assert match, "README.md lacks the status digest markers"
    assert match.group(1) == report.status_digest(STATUS), (
        "README.md's status digest is stale: paste report.status_digest() between its markers"
    )


def test_digest_lists_every_result_that_is_not_reproduced(tmp_path):
    digest = report.status_digest(write(tmp_path))
    assert digest.splitlines()[0] == report.status_summary(write(tmp_path))
    assert "* **partly**: P, a result (chapter 01)." in digest
