"""The training and memory benchmarks still run: each script in --quick mode at a tiny size, in a subprocess.

They check that the scripts work and print their tables; they assert nothing about speed or memory.
"""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run_script(name, *args):
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), "--quick", "--threads", "1", *args],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result.stdout


def table_rows(output, header_start):
    """The rows of the markdown table whose header begins with `header_start` (header and rule excluded)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def test_bench_training_quick_prints_both_tables():
    out = run_script("bench_training.py", "--hidden-size", "16", "--vocab-size", "60", "--regions", "3",
                     "--feature-size", "16", "--reference-images", "20")
    xe = table_rows(out, "| model | batch | encoder |")
    assert [(row[0], row[1], row[2]) for row in xe] == [("GLIED", "10", "per image"), ("GLIED", "10", "repeated"),
                                                         ("Base", "10", "per image"), ("Base", "10", "repeated")]
    assert all(float(row[3]) > 0 for row in xe)  # images/s
    scst = table_rows(out, "| model | batch | baseline |")
    assert [(row[0], row[2]) for row in scst] == [("GLIED", "greedy"), ("GLIED", "mean"), ("Base", "greedy"),
                                                  ("Base", "mean")]
    assert all(0 < float(row[-1]) <= 16 for row in scst)  # sampled words per sample, at most max_new_tokens


def test_bench_memory_quick_writes_the_stores_then_reuses_them(tmp_path):
    store = tmp_path / "store"
    args = ["--store", str(store), "--num-images", "40", "--fraction", "0.25", "--steps", "2", "--batch-size", "4",
            "--regions", "3", "--feature-size", "16", "--hidden-size", "16", "--vocab-size", "60", "--no-progress"]
    out = run_script("bench_memory.py", *args)
    assert f"writing the store {store}: 40 images" in out
    assert (store / "feature_store.json").is_file() and (tmp_path / "store-10" / "feature_store.json").is_file()
    rows = table_rows(out, "| store | images |")
    assert [(row[0], row[1]) for row in rows] == [("store", "40"), ("store-10", "10")]
    assert all(row[10] == "8" for row in rows)  # images read: 2 steps of 4, the same over both stores
    assert "flat is ~1" in out

    again = run_script("bench_memory.py", *args, "--prepare-only")
    assert f"reusing the store {store}: 40 images" in again and "writing" not in again


def test_bench_retrieval_quick_prints_both_tables():
    out = run_script("bench_retrieval.py")
    assert [row[0] for row in table_rows(out, "| model | images/s (embed) |")] == ["hierarchical", "flat"]
    decoding = table_rows(out, "| decoding | images/s |")
    assert [row[0] for row in decoding] == ["beam 3", "beam 5", "5 beams re-ranked by the HM-LSTM"]
    assert all(float(row[1]) > 0 for row in decoding) and decoding[0][2] == "1.00x"
