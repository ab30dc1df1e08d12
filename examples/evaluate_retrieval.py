"""Evaluate an HM-LSTM retrieval model as the field reports it: image annotation and image search R@K and ranks,
region-phrase grounding, and phrase-level queries.

    python examples/evaluate_retrieval.py --model outputs/hmlstm/best --captions dataset_coco.json \
        --features features/coco_bottomup --split test --protocol auto --output hmlstm_test.json

    python examples/evaluate_retrieval.py --model outputs/quickstart-hmlstm/best \
        --captions data/quickstart/dataset_quickstart.json --features data/quickstart/features \
        --grounding --phrase-queries quickstart

`--protocol auto` gives COCO's 1K (5-fold) and 5K results on the 5,000-image test split and the whole split at
once otherwise (Flickr30K's 1,000 images); `--grounding` reads the phrase boxes of the Karpathy JSON
(`processing/retrieval_evaluation.py` describes the format; the quick-start data carry them); `--phrase-queries`
takes `quickstart` (queries built from the quick-start scenes) or a JSON file [{"query", "relevant": [image ids]}].
Prints the tables and writes every number to `--output` (JSON).
"""
import argparse
import json
from pathlib import Path

import torch

from modeling_glied.modeling_hmlstm import HMLSTMModel
from processing.captioning_data import CaptioningDataset
from processing.processing_hmlstm import HMLSTMProcessor
from processing.retrieval_evaluation import (
    PROTOCOLS,
    evaluate_retrieval,
    format_results,
    load_phrase_annotations,
    load_phrase_queries,
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder or Hub repo with the HM-LSTM model and processor")
    parser.add_argument("--captions", required=True, help="Karpathy split JSON (or COCO caption annotations)")
    parser.add_argument("--features", required=True, help="a feature store made by convert_feature_store")
    parser.add_argument("--split", default="test")
    parser.add_argument("--protocol", default="auto", choices=PROTOCOLS)
    parser.add_argument("--captions-per-image", type=int, default=5,
                        help="sentences per image (5 as in the COCO and Flickr30K benchmarks; 0: all)")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--grounding", action="store_true", help="region-phrase grounding on the phrase boxes "
                                                                 "of --captions")
    parser.add_argument("--grounding-phrases", default="annotated", choices=("annotated", "extracted"))
    parser.add_argument("--phrase-queries", help="'quickstart' or a JSON file of {query, relevant} queries")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--output", help="JSON file for the results")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    processor = HMLSTMProcessor.from_pretrained(args.model)
    model = HMLSTMModel.from_pretrained(args.model).to(args.device).eval()
    processor.check_model_config(model.config)
    data = CaptioningDataset.from_files(args.captions, args.split, args.features, max_images=args.max_images,
                                        captions_per_image=args.captions_per_image or None)
    grounding = None
    if args.grounding:
        grounding = load_phrase_annotations(args.captions, image_ids=[r["image_id"] for r in data.records])
        if not grounding:
            parser.error(f"--grounding: no sentence of the {args.split} images of {args.captions} has phrase boxes")
    queries = None
    if args.phrase_queries:
        queries = load_phrase_queries(args.phrase_queries, captions=args.captions, split=args.split)
    results = evaluate_retrieval(model, processor, data, protocol=args.protocol, grounding=grounding,
                                 phrase_queries=queries, grounding_phrases=args.grounding_phrases,
                                 batch_size=args.batch_size)
    results = {"model_path": str(args.model), "captions": str(args.captions), "split": args.split, **results}
    print(f"{args.split} split of {args.captions}, model {args.model}:")
    print(format_results(results))
    if args.output:
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(results, indent=2))
        print(f"wrote {output}")
    return results


if __name__ == "__main__":
    main()
