"""Caption images with a trained GLIED model, and optionally draw what it attended to.

    python examples/caption.py photo.jpg other.png --model outputs/quickstart/glied/best
    python examples/caption.py scenes/*.png --model user/glied-quickstart --num-beams 3 --max-new-tokens 20 \
        --show-attention --output-dir attention/

Prints one line per image, `IMAGE<TAB>CAPTION`, the captions of `pipeline("image-to-text")` (the model's region
extractor, attribute words and beam search). `--model` is a model folder or a Hub repo id (`--revision` picks a
branch, tag or commit).

With `--show-attention`, writes `<output-dir>/<image name>.png` per image (paths on stderr):
- the image with its numbered region boxes and their labels;
- the strongest region groupings of global visual distilling (`encoder_attentions`, `H_vd`: which regions each
  region attends to), as a heat map with the strongest pairs listed;
- the attribute collocations (`attribute_attentions`: `H_ad` of global attribute distilling, or the semantic
  attention `H_a` of the Base model): for each input word, the attribute words it attends to;
- one panel per generated word: the image with every region shaded by the visual attention `H_v` of the step that
  produced the word (`cross_attentions` of a forward pass over the generated words; last layer, averaged over heads).
"""
import argparse
import math
import sys
from pathlib import Path

try:
    import modeling_glied  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image
from transformers import pipeline

import processing  # noqa: F401  (registers the "image-to-text" pipeline)
from processing.image_regions import load_image

TOP_GROUPINGS = 5


def attention_maps(captioner, image, token_ids):
    """Regions, words and attention maps of one image and its generated ids (a forward pass with attentions)."""
    regions = captioner.regions(image)
    tokenizer = captioner.processor.tokenizer
    ids = list(token_ids)
    eos = tokenizer.eos_token_id
    end = ids.index(eos, 1) if eos in ids[1:] else len(ids)
    words = tokenizer.convert_ids_to_tokens(ids[1:end])
    inputs = captioner.prepare_inputs([regions]).to(captioner.device)
    attribute_ids = inputs["attribute_ids"][0][inputs["attribute_mask"][0].bool()].tolist()
    maps = {"regions": regions, "words": words, "input_words": tokenizer.convert_ids_to_tokens(ids[:len(words)]),
            "attribute_words": tokenizer.convert_ids_to_tokens(attribute_ids), "cross": None, "groupings": None,
            "collocations": None}
    if not words:
        return maps
    decoder_input_ids = torch.tensor([ids[:len(words)]], device=captioner.device)  # <bos> w1 .. w(n-1)
    with torch.no_grad():
        out = captioner.model(**inputs, decoder_input_ids=decoder_input_ids, output_attentions=True, use_cache=False)
    # last layer, averaged over heads
    maps["cross"] = out.cross_attentions[-1][0].mean(0).float().cpu().numpy()  # (words, regions)
    if out.encoder_attentions:
        maps["groupings"] = out.encoder_attentions[-1][0].mean(0).float().cpu().numpy()  # (regions, regions)
    if out.attribute_attentions and out.attribute_attentions[-1].shape[-1]:
        maps["collocations"] = out.attribute_attentions[-1][0].mean(0).float().cpu().numpy()  # (words, attributes)
    maps["attribute_kind"] = ("global attribute distilling H_ad" if captioner.model.config.global_attribute_distilling
                              else "semantic attention H_a")
    return maps


def _pixel_boxes(regions):
    width, height = regions["image_size"]
    return regions["region_boxes"] * np.array([width, height, width, height], dtype=np.float32)


def _draw_image(axis, image, title):
    axis.imshow(image, interpolation="nearest")
    axis.set_title(title, fontsize=10)
    axis.set_xticks([])
    axis.set_yticks([])


def _heat_map(axis, values, rows, columns, title):
    """Attention weights (probabilities) on a fixed 0-1 scale, each cell labelled when the map is small."""
    mappable = axis.imshow(values, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    axis.set_xticks(range(len(columns)), columns, rotation=90, fontsize=7)
    axis.set_yticks(range(len(rows)), rows, fontsize=7)
    axis.set_title(title, fontsize=10)
    if values.size <= 150:
        for (i, j), value in np.ndenumerate(values):
            axis.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=6,
                      color="black" if value > 0.6 else "white")
    return mappable


def region_heat(boxes, weights, width, height):
    """Per pixel, the attention weight of the regions covering it (summed): at most 1, as the weights sum to 1."""
    heat = np.zeros((height, width), dtype=np.float32)
    for (x1, y1, x2, y2), weight in zip(boxes, weights):
        heat[int(round(y1)):int(round(y2)), int(round(x1)):int(round(x2))] += float(weight)
    return heat


def _message(axis, text, title):
    axis.axis("off")
    axis.set_title(title, fontsize=10)
    axis.text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=9)


def draw_attention(image, caption, maps, path):
    """Save the attention figure of one image (see the module docstring) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    regions, words = maps["regions"], maps["words"]
    boxes = _pixel_boxes(regions)
    names = [f"{i}: {label}" for i, label in enumerate(regions["labels"])]
    columns = 4
    rows = max(1, math.ceil(len(words) / columns))
    figure = plt.figure(figsize=(4.2 * columns, 4.4 * (rows + 1)), layout="constrained")
    figure.suptitle(caption or "(empty caption)", fontsize=14)
    top, bottom = figure.subfigures(2, 1, height_ratios=[1.15, rows])
    overview, grouping_axis, attribute_axis = top.subplots(1, 3)

    _draw_image(overview, image, "regions")
    colours = plt.cm.tab10(np.arange(len(boxes)) % 10)
    for index, ((x1, y1, x2, y2), colour) in enumerate(zip(boxes, colours)):
        overview.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=2))
        overview.text(x1 + 1, y1 + 1, names[index], color="white", fontsize=7, va="top",
                      bbox={"facecolor": colour, "alpha": 0.8, "pad": 1, "linewidth": 0})

    if maps["groupings"] is not None:
        groupings = maps["groupings"]
        pairs = sorted(((groupings[i, j], i, j) for i in range(len(groupings)) for j in range(len(groupings))
                        if i != j), reverse=True)[:TOP_GROUPINGS]
        listing = ", ".join(f"{i}->{j} {weight:.2f}" for weight, i, j in pairs)
        _heat_map(grouping_axis, groupings, names, names, f"region groupings H_vd (row attends to column)\n"
                                                          f"strongest: {listing}")
        for weight, i, j in pairs:
            grouping_axis.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.5))
    else:
        _message(grouping_axis, "global visual distilling is off in this model", "region groupings")

    if maps["collocations"] is not None:
        _heat_map(attribute_axis, maps["collocations"], maps["input_words"], maps["attribute_words"],
                  f"attribute collocations ({maps['attribute_kind']})\ninput word -> attribute words")
    else:
        _message(attribute_axis, "no attribute words for this image", "attribute collocations")

    word_axes = np.atleast_1d(bottom.subplots(rows, columns)).ravel()
    for axis in word_axes:
        axis.axis("off")
    if not words:
        _message(word_axes[0], "the model generated no word", "words")
    width, height = regions["image_size"]
    heat_scale = None
    for k, word in enumerate(words):
        axis, weights = word_axes[k], maps["cross"][k]
        strongest = int(weights.argmax())
        _draw_image(axis, image, f"{k + 1}. '{word}'  (region {strongest}: {weights[strongest]:.2f})")
        heat_scale = axis.imshow(region_heat(boxes, weights, width, height), cmap="inferno", vmin=0.0, vmax=1.0,
                                 alpha=0.6, interpolation="nearest")
        for index, ((x1, y1, x2, y2), weight) in enumerate(zip(boxes, weights)):
            axis.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, linewidth=0.5 + 4 * float(weight),
                                     edgecolor="cyan" if index == strongest else "white"))
    if heat_scale is not None:
        bottom.colorbar(heat_scale, ax=list(word_axes), shrink=0.5, aspect=40,
                        label="visual attention H_v of the word's step (summed over the regions covering a pixel)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _figure_paths(images, output_dir):
    """One PNG per image, named after it (a counter keeps equal names apart)."""
    paths, used = [], set()
    for index, image in enumerate(images):
        stem = Path(str(image)).stem or f"image{index}"
        name = f"{stem}.png" if f"{stem}.png" not in used else f"{stem}_{index}.png"
        used.add(name)
        paths.append(Path(output_dir) / name)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    parser.add_argument("--model", required=True, help="a model folder or a Hub repo id")
    parser.add_argument("--revision", help="branch, tag or commit of a Hub model")
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--device", help="e.g. cpu, cuda:0 (default: the first GPU if there is one)")
    parser.add_argument("--show-attention", action="store_true", help="save an attention figure per image")
    parser.add_argument("--output-dir", default="attention", help="where the figures go (default: attention/)")
    args = parser.parse_args(argv)
    for image in args.images:
        if not Path(image).is_file():
            parser.error(f"image not found: {image}")

    captioner = pipeline("image-to-text", model=args.model, revision=args.revision, device=args.device)
    options = {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens}
    results = captioner(list(args.images), batch_size=args.batch_size, return_token_ids=True, **options)
    figures = _figure_paths(args.images, args.output_dir) if args.show_attention else [None] * len(args.images)
    outputs = []
    for image, result, figure in zip(args.images, results, figures):
        caption = result[0]["generated_text"]
        print(f"{image}\t{caption}", flush=True)
        if figure is not None:
            maps = attention_maps(captioner, image, result[0]["generated_token_ids"])
            draw_attention(Image.fromarray(load_image(image)), caption, maps, figure)
            print(f"attention figure: {figure}", file=sys.stderr)
        outputs.append({"image": image, "caption": caption, "figure": figure})
    return outputs


if __name__ == "__main__":
    main()
