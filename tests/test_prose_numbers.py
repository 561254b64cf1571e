"""No number that comes from a run or a computation is typed in a chapter's prose.

The scan reads each chapter's markdown outside code cells, inline code and roles (a glued value
is a role, so it is never seen), display math included, inline math included, and finds every
decimal number and percentage. Each one must be listed, with its source, in
``book/typed_numbers.toml``, as one of three kinds:

- ``paper``: a constant of a paper or of its reference code, with where it is printed;
- ``setting``: an input the book chose (a noise level, a threshold), with the file that sets it
  (``where``: ``chapter`` for the chapter's own code cells, or a path in the repository); the test
  checks the value is still written there, so a changed setting cannot leave the prose behind;
- ``math``: arithmetic on the two kinds above or a mathematical constant (``log 2 = 0.693``),
  with the arithmetic.

Section, figure and table numbers ("Sec. 4.2") are references, not values, and are skipped.
"""

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ALLOWED_FILE = BOOK / "typed_numbers.toml"

# what a prose number looks like: a decimal (0.5, -3.15, .3) or a percentage (5%, 2 %)
NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\d+\.\d+|\.\d+|\d+(?:\.\d+)?\s?%)")
# a numbered part of a paper or of the book, not a value
REFERENCE = re.compile(
    r"(?:Sec\.|Section|Sections|Figure|Figures|Fig\.|Table|Tables|Theorem|Thm\.|Corollary|Cor\."
    r"|Lemma|Proposition|Prop\.|Definition|Def\.|Example|Examples|Appendix|App\.|Eq\.|Eqs\."
    r"|Equation|Remark|Assumption|Algorithm)\s*(?:[A-Z]\.)?\d+(?:\.\d+)*(?:\([a-z]\))?"
    r"(?:\s*(?:,|and|to|-|–)\s*(?:[A-Z]\.)?\d+(?:\.\d+)*)*"
)
# spans that are not prose: inline code and roles (glue, cite, ref, eq, ...)
ROLE = re.compile(r"\{[\w:-]+\}`[^`]*`")
CODE = re.compile(r"`[^`]*`")
LABEL = re.compile(r"^\([\w:.-]+\)=\s*$")
# fenced blocks whose content is not prose
NOT_PROSE_FENCES = ("code-cell", "eval-rst", "bibliography", "literalinclude")
KINDS = ("paper", "setting", "math")


def prose_lines(text: str):
    """(line number, text) of each prose line of a MyST markdown notebook."""
    lines = text.splitlines()
    start = 0
    if lines and lines[0].strip() == "---":  # the jupytext header
        end = next(i for i in range(1, len(lines)) if lines[i].strip() == "---")
        start = end + 1
    fence = None  # the backticks of the fenced block being skipped
    for i in range(start, len(lines)):
        line = lines[i]
        stripped = line.strip()
        if fence is not None:
            if stripped == fence:
                fence = None
            continue
        m = re.match(r"^(`{3,}|~{3,})\s*(\{([\w-]+)\})?", stripped)
        if m:
            directive = m.group(3)
            if directive is None or directive in NOT_PROSE_FENCES:
                fence = m.group(1)
            continue  # a prose directive (note, admonition): its body is prose
        if LABEL.match(stripped) or stripped.startswith(":"):
            continue  # directive options (":tags:", ":class:") are not prose
        yield i + 1, line


def typed_numbers(text: str):
    """(line number, number, line) of every decimal number or percentage typed in the prose."""
    for lineno, line in prose_lines(text):
        bare = ROLE.sub(" ", line)
        bare = CODE.sub(" ", bare)
        bare = REFERENCE.sub(" ", bare)
        for m in NUMBER.finditer(bare):
            yield lineno, m.group().replace(" ", "").replace("−", "-"), line.strip()


def code_cells(text: str) -> str:
    """The source of a chapter's code cells, joined."""
    return "\n".join(re.findall(r"^```\{code-cell\}[^\n]*\n(.*?)^```", text, flags=re.M | re.S))


def load_entries(path: Path = ALLOWED_FILE) -> list[dict]:
    """The entries of the list of typed numbers, each checked for its fields."""
    with open(path, "rb") as f:
        entries = tomllib.load(f).get("number", [])
    for entry in entries:
        missing = {"chapter", "value", "kind", "source"} - set(entry)
        if missing:
            raise ValueError(f"{path.name}: entry {entry} lacks {sorted(missing)}")
        if entry["kind"] not in KINDS:
            raise ValueError(
                f"{path.name}: entry {entry} has kind {entry['kind']!r}, not one of {KINDS}"
            )
        if not entry["source"].strip():
            raise ValueError(f"{path.name}: entry {entry} has an empty source")
        if entry["kind"] == "setting" and "where" not in entry:
            raise ValueError(f"{path.name}: setting {entry} must say where it is set ('where')")
    return entries


def allowed_numbers(path: Path = ALLOWED_FILE) -> dict[str, dict[str, dict]]:
    """``{chapter: {number: entry}}`` from the list of typed numbers."""
    out: dict[str, dict[str, dict]] = {}
    for entry in load_entries(path):
        out.setdefault(entry["chapter"], {})[entry["value"].replace(" ", "")] = entry
    return out


def unlisted(chapter: str, text: str, allowed: dict[str, dict[str, str]]):
    listed = allowed.get(chapter, {})
    return [(n, number, line) for n, number, line in typed_numbers(text) if number not in listed]


def chapters():
    return sorted(p for p in BOOK.glob("*.md"))


@pytest.mark.parametrize("path", chapters(), ids=lambda p: p.stem)
def test_no_typed_number_in_prose(path):
    found = unlisted(path.stem, path.read_text(), allowed_numbers())
    assert not found, (
        f"{path.name}: numbers typed in the prose; glue them from the value, or list a paper's "
        f"constant with its source in {ALLOWED_FILE.name}:\n"
        + "\n".join(f"  line {n}: {number!r} in {line!r}" for n, number, line in found)
    )


def test_every_listed_number_is_still_used():
    """A stale entry would let the same number back in unseen elsewhere in the chapter."""
    allowed = allowed_numbers()
    stale = []
    for chapter, numbers in allowed.items():
        path = BOOK / f"{chapter}.md"
        assert path.is_file(), f"{ALLOWED_FILE.name} names a chapter that does not exist: {chapter}"
        used = {number for _, number, _ in typed_numbers(path.read_text())}
        stale += [f"{chapter}: {v}" for v in numbers if v not in used]
    assert not stale, f"entries of {ALLOWED_FILE.name} no chapter types any more: {stale}"


def test_every_setting_is_still_set_where_it_says():
    """A setting typed in the prose is written, as that literal, in the file that sets it."""
    wrong = []
    for entry in load_entries():
        if entry["kind"] != "setting":
            continue
        if entry["where"] == "chapter":
            where = code_cells((BOOK / f"{entry['chapter']}.md").read_text())
        else:
            where = (ROOT / entry["where"]).read_text()
        value = entry["value"].rstrip("%").strip()
        if not re.search(rf"(?<![\w.]){re.escape(value)}(?![\d])", where):
            wrong.append(f"{entry['chapter']}: {entry['value']} is not in {entry['where']}")
    assert not wrong, "settings the prose types that their source no longer sets:\n" + "\n".join(
        wrong
    )


def test_a_planted_typed_number_is_found():
    path = BOOK / "06_libi.md"
    text = path.read_text()
    allowed = allowed_numbers()
    assert not unlisted(path.stem, text, allowed)
    planted = text + "\nOur LiBI reaches a Test-LL of -3.07 on LinearJTE, 12 % above the VAE.\n"
    found = [number for _, number, _ in unlisted(path.stem, planted, allowed)]
    assert found == ["-3.07", "12%"]


@pytest.mark.parametrize(
    "line, numbers",
    [
        ("as in Sec. 4.2 and Figure 2.1, the gap is 0.3", ["0.3"]),
        ("Cor. 3.1(a) and Example 3.3 hold; Appendix C.3 too", []),
        ("glued {glue:text}`x:.2f` against `lr=0.001`, {cite:p}`a2021`", []),
        ("within 5% of it, or 2 % at most, and .5 of a nat", ["5%", "2%", ".5"]),
    ],
)
def test_scanner_on_known_lines(line, numbers):
    assert [n for _, n, _ in typed_numbers(line)] == numbers


def test_code_cells_are_not_prose_but_math_and_notes_are():
    text = (
        "---\njupytext: {}\n---\n# T\n\n```{code-cell} ipython3\nx = 0.25\n```\n\n"
        "$$\na = 0.5\n$$\n\n```{note}\nA note with 0.75 in it, and $b = 1.5$.\n```\n"
    )
    assert [n for _, n, _ in typed_numbers(text)] == ["0.5", "0.75", "1.5"]
    assert code_cells(text).strip() == "x = 0.25"
