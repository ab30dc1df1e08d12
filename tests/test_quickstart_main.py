"""The README's main job, in its one-minute --quick form (slow; runs in CI)."""
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_glied import GLIEDForCaptioning
from processing import GLIEDProcessor

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_trains_both_models_prints_the_table_and_saves_them(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--quick", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| GLIED |" in out and "| Base |" in out and "CIDEr novel pairs" in out
    captions = [line for line in out.splitlines() if line.strip().startswith("quickstart_test_")]
    assert len(captions) == 4
    for name, base in (("glied", False), ("base", True)):
        model = GLIEDForCaptioning.from_pretrained(tmp_path / name)
        assert model.config.is_base_model == base
        GLIEDProcessor.from_pretrained(tmp_path / name).check_model_config(model.config)
    assert (tmp_path / "runs" / "glied" / "training_curve.png").is_file()
