"""The README's main job, in its one-minute --quick form (slow; runs in CI)."""
import subprocess
import sys
from pathlib import Path

import pytest

from modeling_glied import GLIEDForCaptioning, HMLSTMModel
from processing import GLIEDProcessor, HMLSTMProcessor

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_trains_all_models_prints_the_tables_and_saves_them(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"), "--quick", "--output-dir",
                             str(tmp_path)], capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "| GLIED |" in out and "| Base |" in out and "CIDEr novel pairs" in out
    assert "| GLIED, 5 beams re-ranked by HM-LSTM |" in out
    assert "| hierarchical |" in out and "| flat |" in out and "phrase queries R@1" in out
    captions = [line for line in out.splitlines() if line.strip().startswith("quickstart_test_")]
    assert len(captions) == 4
    for name, base in (("glied", False), ("base", True)):
        model = GLIEDForCaptioning.from_pretrained(tmp_path / name)
        assert model.config.is_base_model == base
        GLIEDProcessor.from_pretrained(tmp_path / name).check_model_config(model.config)
    assert (tmp_path / "runs" / "glied" / "training_curve.png").is_file()
    for name, hierarchical in (("hmlstm", True), ("hmlstm_flat", False)):
        model = HMLSTMModel.from_pretrained(tmp_path / name)
        assert model.config.hierarchical == hierarchical
        processor = HMLSTMProcessor.from_pretrained(tmp_path / name)
        processor.check_model_config(model.config)
        assert processor.region_extractor["detector"] == "components"  # examples/retrieve.py can index images
    assert (tmp_path / "runs" / "glied_reranked" / "test_captions.json").is_file()
