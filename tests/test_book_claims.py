"""A chapter whose stored results stop supporting its prose fails to execute, quoting the claim.

Chapter 6 renders a stored run of Yacoby et al.'s Table 1 and states, among others, that LiBI is
above every ELBO-trained method on LinearJTE. Here a copy of the stored result is altered so that
the ordering reverses (LiBI's Test-LL pushed below the VAE's), and the chapter is executed against
it in the smoke profile, through the same command that `make test` runs.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLAIM = "LiBI is above every ELBO-trained method on LinearJTE, on both metrics"


def test_a_reversed_ordering_in_a_stored_result_fails_the_chapter(tmp_path):
    assert CLAIM in (ROOT / "book" / "06_libi.md").read_text()
    shutil.copy2(ROOT / "_toc.yml", tmp_path / "_toc.yml")
    (tmp_path / "book" / "results").mkdir(parents=True)
    for name in ("06_libi.md", "profiles.toml", "results/status.toml"):
        shutil.copy2(ROOT / "book" / name, tmp_path / "book" / name)
    stored = json.loads((ROOT / "book" / "results" / "06_libi_table.json").read_text())
    vae = min(
        r["test_ll"] for r in stored["runs"] if (r["method"], r["data"]) == ("vae", "linear_jte")
    )
    planted = 0
    for run in stored["runs"]:
        if (run["method"], run["data"]) == ("libi", "linear_jte"):
            run["test_ll"] = vae - 1.0  # LiBI now below the VAE on LinearJTE
            planted += 1
    assert planted
    (tmp_path / "book" / "results" / "06_libi_table.json").write_text(json.dumps(stored))

    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / ".ci" / "book.py"),
            "--root",
            str(tmp_path),
            "execute",
            "--profile",
            "smoke",
            "--out",
            str(tmp_path / "out"),
            "--only",
            "06_libi",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"ClaimFailed: the data no longer support the claim {CLAIM!r}" in done.stderr, (
        done.stderr[-3000:]
    )
