"""Score a trained captioner as the COCO caption benchmark does, and write its captions.

    python examples/evaluate.py --model outputs/coco/glied/best --captions dataset_coco.json \
        --features features/coco_bottomup --attributes attributes.json --split test

Prints BLEU-1..4, METEOR, ROUGE-L, CIDEr-D (and SPICE when its Stanford CoreNLP jars are installed) after PTB
tokenisation, computed by pycocoevalcap's scorers; writes `<output>/metrics.json` and the captions as a COCO
result file `<output>/captions.json` ([{"image_id", "caption"}]).

Re-ranking the beam candidates with a retrieval model (`processing/reranking.py`): `--rerank-model` names an
HM-LSTM folder (examples/train_retrieval.py's `best/`); the caption of an image is then, among the
`--rerank-candidates` K best beams (`max(--num-beams, K)` beams), the one maximising
`cos(image, caption) + --rerank-beam-weight * beam_score` (beam_score: the length-normalised log-probability).

    python examples/evaluate.py --model outputs/quickstart/glied --captions ... --features ... \
        --rerank-model outputs/quickstart/runs/hmlstm/best --rerank-candidates 5 --rerank-beam-weight 0
"""
import argparse
import json
from pathlib import Path

import torch

from modeling_glied import GLIEDForCaptioning
from processing import GLIEDProcessor
from processing.captioning_data import CaptioningDataset
from processing.evaluation import evaluate_model
from processing.metrics import write_coco_results
from processing.reranking import DEFAULT_BEAM_WEIGHT, DEFAULT_CANDIDATES, BeamReranker


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a folder or Hub repo with the model and its processor")
    parser.add_argument("--captions", required=True, help="Karpathy split JSON or COCO caption annotations")
    parser.add_argument("--features", required=True, help="a feature store made by convert_feature_store")
    parser.add_argument("--attributes", help="JSON map image id -> attribute words")
    parser.add_argument("--split", default="test")
    parser.add_argument("--max-images", type=int)
    parser.add_argument("--num-beams", type=int, default=3)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--rerank-model", help="an HM-LSTM folder or repo id: re-rank the beam candidates with it")
    parser.add_argument("--rerank-candidates", type=int, default=DEFAULT_CANDIDATES,
                        help="K, the beam candidates per image the retrieval model chooses from")
    parser.add_argument("--rerank-beam-weight", type=float, default=DEFAULT_BEAM_WEIGHT,
                        help="w in cos(image, caption) + w * beam_score")
    parser.add_argument("--metrics", nargs="*", help="default: all (SPICE only where its jars are installed)")
    parser.add_argument("--output", help="folder for metrics.json and captions.json (default: the model folder "
                                         "when it is local, else ./evaluation)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    processor = GLIEDProcessor.from_pretrained(args.model)
    model = GLIEDForCaptioning.from_pretrained(args.model).to(args.device).eval()
    processor.check_model_config(model.config)
    data = CaptioningDataset.from_files(args.captions, args.split, args.features, args.attributes,
                                        max_images=args.max_images)
    reranker = None
    if args.rerank_model:
        reranker = BeamReranker.from_pretrained(args.rerank_model, device=args.device,
                                                num_candidates=args.rerank_candidates,
                                                beam_weight=args.rerank_beam_weight)
    scores, predictions = evaluate_model(model, processor, data, metrics=args.metrics, batch_size=args.batch_size,
                                         num_beams=args.num_beams, max_new_tokens=args.max_new_tokens,
                                         reranker=reranker)
    output = Path(args.output or (args.model if Path(args.model).is_dir() else "evaluation"))
    output.mkdir(parents=True, exist_ok=True)
    (output / "metrics.json").write_text(json.dumps(scores, indent=2))
    write_coco_results(predictions, output / "captions.json")
    setting = f"beam {args.num_beams}"
    if reranker is not None:
        setting = (f"beam {max(args.num_beams, args.rerank_candidates)}, re-ranked by {args.rerank_model} "
                   f"(K={args.rerank_candidates}, beam weight {args.rerank_beam_weight:g})")
    print(f"{args.split} split, {len(predictions)} images, {setting}:")
    print("| " + " | ".join(scores) + " |")
    print("|---" * len(scores) + "|")
    print("| " + " | ".join(f"{100 * v:.1f}" for v in scores.values()) + " |")
    print(f"wrote {output / 'metrics.json'} and {output / 'captions.json'}")
    return scores


if __name__ == "__main__":
    main()
