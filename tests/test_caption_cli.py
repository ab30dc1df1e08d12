"""examples/caption.py: one caption per image (the pipeline's), and attention figures on request."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from modeling_glied import GLIEDConfig, GLIEDForCaptioning
from test_hub_push import REPO_ROOT, load_example
from test_pipeline import one_thread, tiny  # noqa: F401  (fixtures)

ARGS = ["--num-beams", "2", "--max-new-tokens", "6"]


@pytest.fixture(scope="module")
def caption_script():
    return load_example("caption")


def pipeline_captions(model_dir, images):
    captioner = pipeline("image-to-text", model=str(model_dir))
    return [result[0]["generated_text"] for result in captioner(images, num_beams=2, max_new_tokens=6)]


def printed(output):
    return [tuple(line.split("\t", 1)) for line in output.strip().splitlines()]


def check_png(path):
    with Image.open(path) as figure:
        assert figure.format == "PNG"
        width, height = figure.size
        pixels = np.asarray(figure.convert("RGB"))
    assert 800 <= width <= 4000 and 600 <= height <= 4000, figure.size
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 100  # a drawing, not a blank page


def test_prints_the_pipeline_captions_and_saves_one_figure_per_image(caption_script, tiny, tmp_path, capsys):
    images = tiny["images"][:2]
    outputs = caption_script.main([*images, "--model", str(tiny["model_dir"]), *ARGS, "--show-attention",
                                   "--output-dir", str(tmp_path / "figures")])
    expected = pipeline_captions(tiny["model_dir"], images)
    assert printed(capsys.readouterr().out) == list(zip(images, expected))
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == sorted(
        f"{image.rsplit('/', 1)[-1][:-4]}.png" for image in images)
    for output in outputs:
        check_png(output["figure"])


def test_without_show_attention_no_figure(caption_script, tiny, tmp_path, capsys):
    images = tiny["images"][2:5]
    caption_script.main([*images, "--model", str(tiny["model_dir"]), *ARGS, "--output-dir", str(tmp_path / "f")])
    assert printed(capsys.readouterr().out) == list(zip(images, pipeline_captions(tiny["model_dir"], images)))
    assert not (tmp_path / "f").exists()


def test_attention_maps_match_the_caption(caption_script, tiny):
    captioner = pipeline("image-to-text", model=str(tiny["model_dir"]))
    image = tiny["images"][0]
    result = captioner(image, num_beams=2, max_new_tokens=6, return_token_ids=True)[0]
    maps = caption_script.attention_maps(captioner, image, result["generated_token_ids"])
    regions = len(maps["regions"]["labels"])
    assert " ".join(w for w in maps["words"] if w != "<unk>") == result["generated_text"]
    assert maps["input_words"][0] == "<bos>" and maps["input_words"][1:] == maps["words"][:-1]
    assert maps["cross"].shape == (len(maps["words"]), regions)
    np.testing.assert_allclose(maps["cross"].sum(-1), 1.0, rtol=1e-5)
    assert maps["groupings"].shape == (regions, regions)
    assert maps["attribute_words"] == maps["regions"]["attributes"]  # all in the vocabulary here
    assert maps["collocations"].shape == (len(maps["words"]), len(maps["attribute_words"]))


def test_base_model_figure(caption_script, tiny, tmp_path, capsys):
    processor = tiny["processor"]
    base = GLIEDForCaptioning(GLIEDConfig.base(vocab_size=len(processor.tokenizer), hidden_size=32,
                                               num_attention_heads=4, intermediate_size=64,
                                               region_feature_size=128, initializer_range=0.5))
    base.save_pretrained(tmp_path / "base")
    processor.save_pretrained(tmp_path / "base")
    outputs = caption_script.main([tiny["images"][3], "--model", str(tmp_path / "base"), *ARGS, "--show-attention",
                                   "--output-dir", str(tmp_path / "figures")])
    check_png(outputs[0]["figure"])
    assert printed(capsys.readouterr().out) == [(tiny["images"][3],
                                                 pipeline_captions(tmp_path / "base", tiny["images"][3:4])[0])]


def test_missing_image(caption_script, tiny, tmp_path, capsys):
    with pytest.raises(SystemExit):
        caption_script.main([str(tmp_path / "nope.png"), "--model", str(tiny["model_dir"])])
    assert "image not found" in capsys.readouterr().err


@pytest.mark.slow
def test_command_line(tiny, tmp_path):
    images = tiny["images"][:2]
    done = subprocess.run([sys.executable, str(REPO_ROOT / "examples" / "caption.py"), *images, "--model",
                           str(tiny["model_dir"]), *ARGS, "--show-attention", "--output-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert printed(done.stdout) == list(zip(images, pipeline_captions(tiny["model_dir"], images)))
    assert f"attention figure: {tmp_path}" in done.stderr
    for image in images:
        check_png(tmp_path / f"{image.rsplit('/', 1)[-1][:-4]}.png")
