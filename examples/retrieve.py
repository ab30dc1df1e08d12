"""Image retrieval with a trained HM-LSTM: index a folder of images, search it with a sentence, or rank sentences
for one image; results as a text table and as a PNG contact sheet with the region that matched each phrase outlined.

    python examples/retrieve.py index --model outputs/quickstart/hmlstm/best \
        --images outputs/quickstart/data/test --index scenes.safetensors
    python examples/retrieve.py search --model outputs/quickstart/hmlstm/best --index scenes.safetensors \
        --query "a red circle next to a blue star" --top-k 8 --sheet results.png
    python examples/retrieve.py annotate --model outputs/quickstart/hmlstm/best --image scene.png \
        --sentences sentences.txt --top-k 5 --sheet annotated.png

`index` runs every image of the folder through the region extractor the model's processor describes
(`processor.region_extractor`), embeds it and writes the index (one safetensors file; a path without the
`.safetensors` suffix is a folder that gets `retrieval_index.safetensors`). Running it again with the same model
embeds only new or changed images. `search` refuses an index built with another model.

`search` ranks the indexed images by cos(image, sentence) and prints rank, score and path; `annotate` ranks the
sentences of a file (one a line, blank lines skipped) for one image. With the hierarchical model every phrase of
the sentence is matched to its best region (highest cos(phrase, region)) in each image: the table names it and the
sheet outlines it in the phrase's legend colour (`annotate`: the phrases of the best sentence). The flat model has
no phrase embeddings: no outlines (the text and the sheet say so).

The work is done by `processing/retrieval_index.py`; this file is its command line.
"""
import argparse
import sys
from pathlib import Path

try:
    import modeling_glied  # noqa: F401
except ImportError:  # run from a source checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from processing.image_regions import load_image
from processing.retrieval_index import (
    FLAT_MODEL_NOTE,
    RANK_BY,
    RetrievalIndex,
    SheetCell,
    annotate_image,
    draw_sheet,
    format_table,
    index_folder,
    load_retrieval_model,
    model_fingerprint,
    search_index,
)


def _shown(path):
    """A path as the user would type it: relative to the working folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _phrase_note(model, query):
    if not model.config.hierarchical:
        return FLAT_MODEL_NOTE
    if not query.phrases:
        return "the sentence has no phrase: nothing to outline"
    return None


def _describe(query, model):
    lines = [f"query: {query.text!r}"]
    note = _phrase_note(model, query)
    lines.append(f"phrases: {', '.join(repr(text) for text, _ in query.phrases)}" if note is None else note)
    if query.unknown_words:
        lines.append(f"words unknown to the model (read as <unk>): {', '.join(query.unknown_words)}")
    return "\n".join(lines)


def _outlines(hit):
    return [(number, match.box, match.score) for number, match in enumerate(hit.matches)]


def run_index(args, model, processor):
    index, counts = index_folder(model, processor, args.images, args.index, batch_size=args.batch_size,
                                 recursive=args.recursive)
    if counts["rebuilt"]:
        print("the existing index was built with another model: rebuilt it", file=sys.stderr)
    print(f"indexed {len(index)} images of {args.images} into {_shown(args.index)} (embedded {counts['embedded']}, "
          f"kept {counts['reused']}, dropped {counts['dropped']}, unreadable {counts['skipped']}); "
          f"model fingerprint {index.fingerprint}")
    return {"index": index, "counts": counts}


def run_search(args, model, processor):
    index = RetrievalIndex.load(args.index, expected_fingerprint=model_fingerprint(model, processor))
    hits, query = search_index(index, model, processor, args.query, top_k=args.top_k, rank_by=args.rank_by)
    for hit in hits:
        hit.name = _shown(hit.name)
    print(_describe(query, model))
    print(format_table(hits, name_header="path"))
    if args.sheet:
        cells = []
        for hit in hits:
            scores = "  ".join(f"{number + 1}: {match.score:.2f}" for number, match in enumerate(hit.matches))
            label = "cos" if args.rank_by == "sentence" else args.rank_by
            caption = f"#{hit.rank}  {label} {hit.score:.3f}\n{Path(hit.name).name}" + (f"\n{scores}" if scores else "")
            cells.append(SheetCell(load_image(index.paths[hit.row]), caption, _outlines(hit)))
        path = draw_sheet(cells, args.sheet, title=f"search: {query.text!r} (top {len(hits)} of {len(index)} images)",
                          phrases=[text for text, _ in query.phrases], note=_phrase_note(model, query))
        print(f"sheet: {_shown(path)}")
    return {"hits": hits, "query": query}


def read_sentences(path):
    """The sentences of a text file, one a line, blank lines skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"sentence file not found: {path}")
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not sentences:
        raise ValueError(f"no sentence in {path} (one sentence a line)")
    return sentences


def run_annotate(args, model, processor):
    image = Path(args.image)
    if not image.is_file():
        raise FileNotFoundError(f"image file not found: {image}")
    sentences = read_sentences(args.sentences)
    result = annotate_image(model, processor, image, sentences, top_k=args.top_k)
    hits, best = result["hits"], result["hits"][0]
    query = result["queries"][best.row]
    print(f"image: {_shown(image)} ({len(sentences)} sentences, best {len(hits)})")
    print(_describe(query, model).replace("query:", "best sentence:", 1))
    print(format_table(hits, name_header="sentence"))
    if args.sheet:
        footer = [f"#{hit.rank} {hit.score:.3f}  {hit.name}" for hit in hits]
        cell = SheetCell(result["image"], f"{image.name}\nbest: cos {best.score:.3f}", _outlines(best))
        path = draw_sheet([cell], args.sheet, title=f"annotate: {best.name!r}", phrases=[t for t, _ in query.phrases],
                          note=_phrase_note(model, query), footer=footer, columns=1, cell_inches=5.0)
        print(f"sheet: {_shown(path)}")
    return result


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, help_text):
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("--model", required=True, help="folder with the HM-LSTM model and its HMLSTMProcessor")
        sub.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
        return sub

    index = command("index", "extract, embed and index every image of a folder")
    index.add_argument("--images", required=True, help="folder of image files")
    index.add_argument("--index", required=True, help="index file (.safetensors) or folder to write")
    index.add_argument("--recursive", action="store_true", help="also index the images of sub-folders")
    index.add_argument("--batch-size", type=int, default=32)
    search = command("search", "rank the indexed images for a sentence")
    search.add_argument("--index", required=True, help="index file (.safetensors) or folder")
    search.add_argument("--query", required=True, help="the sentence to search for")
    search.add_argument("--top-k", type=int, default=8)
    search.add_argument("--rank-by", choices=RANK_BY, default="sentence",
                        help="sentence: cos(image, sentence); phrases: the mean of each query phrase's best region "
                             "(compound queries: every part must be in the image); both: their sum (phrases x 0.5)")
    search.add_argument("--sheet", help="write a contact sheet PNG of the results here")
    annotate = command("annotate", "rank the sentences of a file for one image")
    annotate.add_argument("--image", required=True)
    annotate.add_argument("--sentences", required=True, help="text file, one sentence a line")
    annotate.add_argument("--top-k", type=int, default=5)
    annotate.add_argument("--sheet", help="write the image with the best sentence's phrases outlined here")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "top_k", 1) < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    try:
        model, processor = load_retrieval_model(args.model, args.device)
        return {"index": run_index, "search": run_search, "annotate": run_annotate}[args.command](
            args, model, processor)
    except (ValueError, FileNotFoundError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


if __name__ == "__main__":
    main()
