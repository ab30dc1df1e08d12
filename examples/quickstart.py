"""The whole loop on data that ships with the project, in about a quarter of an hour on 2 CPU cores.

    python examples/quickstart.py                 # generate the data, train GLIED and Base, evaluate, caption,
                                                  # then the HM-LSTM retrieval model and its flat baseline
    python examples/quickstart.py --quick         # a two-minute smoke run on a tenth of the data

The data are GENERATED: rendered scenes of coloured shapes with five reference captions each (see
processing/quickstart_data.py). Six colour-shape pairs never appear in training; half of the held-out images
contain one, so the test metrics show whether a model composes what it has seen. It is a demonstration of the
machinery (region features from pixels, attribute words, training, beam search, the COCO metrics, saving),
not of COCO results: for those, use examples/configs/coco_glied_xe.yaml with your own bottom-up features.

Writes outputs/quickstart/{data, runs/<model>} and the trained models, each with its processor, to
outputs/quickstart/glied and outputs/quickstart/base (ready for `from_pretrained` and the pipeline), and
outputs/quickstart/hmlstm and outputs/quickstart/hmlstm_flat (the retrieval models; examples/retrieve.py).
"""
import argparse
import json
import shutil
import time
from pathlib import Path

from train import load_config, train  # examples/ is on sys.path when this script runs
from train_retrieval import RetrievalTask
from transformers import pipeline

from modeling_glied import GLIEDForCaptioning
from processing import GLIEDProcessor  # (importing processing registers the image-to-text pipeline)
from processing.captioning_data import CaptioningDataset
from processing.captions import load_captions
from processing.evaluation import evaluate_model
from processing.metrics import evaluate_captions, write_coco_results
from processing.quickstart_data import prepare_quickstart_data
from processing.reranking import BeamReranker

CONFIG = Path(__file__).resolve().parent / "configs" / "quickstart.yaml"
RETRIEVAL_CONFIG = Path(__file__).resolve().parent / "configs" / "quickstart_hmlstm.yaml"
BASE_SWITCHES = ["model.global_visual_distilling=false", "model.global_attribute_distilling=false",
                 "model.local_distilling=false"]


def fresh(run_dir):
    """An empty run folder: train.py resumes from a run it finds, and a run of an earlier quick-start (other
    sizes, other epochs) is not this one's."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return run_dir


def novel_split_scores(output_dir, dataset_json):
    """CIDEr of the test images with a held-out colour-shape pair, and of the others."""
    records = {r["image_id"]: r for r in load_captions(dataset_json, split="test")}
    novel = {image["image_id"] for image in json.loads(Path(dataset_json).read_text())["images"]
             if image.get("novel") and image["split"] == "test"}
    predictions = {item["image_id"]: item["caption"]
                   for item in json.loads((output_dir / "test_captions.json").read_text())}
    scores = {}
    for name, ids in (("novel", novel), ("seen", set(predictions) - novel)):
        ids = sorted(ids & set(predictions))
        if ids:
            evaluation = evaluate_captions({i: records[i]["captions"] for i in ids}, {i: predictions[i] for i in ids},
                                           metrics=["CIDEr"])
            scores[name] = evaluation.scores["CIDEr"]
    return scores


def caption_images(model_dir, image_paths, num_beams=3):
    """Raw images -> captions with the saved model, through the image-to-text pipeline (it rebuilds the region
    extractor saved in the model's processor)."""
    captioner = pipeline("image-to-text", model=str(model_dir))
    outputs = captioner([str(p) for p in image_paths], num_beams=num_beams, max_new_tokens=20)
    return [output[0]["generated_text"] for output in outputs]


def reranked_test(out, data, config_path):
    """GLIED's test captions when the HM-LSTM picks among its 5 best beams (examples/evaluate.py --rerank-model)."""
    config = load_config(config_path)["evaluation"]
    model = GLIEDForCaptioning.from_pretrained(out / "glied")
    processor = GLIEDProcessor.from_pretrained(out / "glied")
    test = CaptioningDataset.from_files(data["dataset_json"], "test", data["features"], data["attributes_json"])
    scores, predictions = evaluate_model(model, processor, test, metrics=config["metrics"],
                                         batch_size=config["batch_size"], num_beams=config["num_beams"],
                                         max_new_tokens=config["max_new_tokens"],
                                         reranker=BeamReranker.from_pretrained(out / "hmlstm"))
    run_dir = out / "runs" / "glied_reranked"
    run_dir.mkdir(parents=True, exist_ok=True)
    write_coco_results(predictions, run_dir / "test_captions.json")
    return {"test_metrics": scores, "subsets": novel_split_scores(run_dir, data["dataset_json"])}


def retrieval_table(summaries):
    """Markdown rows: image-sentence retrieval, phrase-level queries and grounding of each retrieval model."""
    lines = ["| model | annotation R@1 | R@5 | R@10 | search R@1 | R@5 | R@10 | phrase queries R@1 | P@10 | mAP "
             "| mAP, held-out pairs | grounding |", "|---" * 12 + "|"]
    for name, summary in summaries.items():
        metrics = summary["test_metrics"]
        full = metrics["retrieval"]["full"]
        queries = metrics["phrase_queries"]
        grounding = metrics["grounding"]
        cells = [full[d][k] for d in ("annotation", "search") for k in ("r1", "r5", "r10")]
        cells += [queries["all"]["r1"], queries["all"]["p@10"], queries["all"]["map"],
                  queries.get("novel", {}).get("map", float("nan"))]
        accuracy = f"{100 * grounding['accuracy']:.1f}" if grounding.get("accuracy") is not None else "-"
        lines.append(f"| {name} | " + " | ".join(f"{value:.1f}" for value in cells) + f" | {accuracy} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quickstart")
    parser.add_argument("--quick", action="store_true", help="a tenth of the data and two epochs")
    parser.add_argument("--no-retrieval", action="store_true", help="leave out the HM-LSTM retrieval models")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE",
                        help="overrides for both runs (see examples/configs/quickstart.yaml)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    sizes = dict(num_train=400, num_val=50, num_test=50) if args.quick else dict(num_train=4000, num_val=250,
                                                                                   num_test=250)
    epochs = args.epochs or (2 if args.quick else None)
    start = time.perf_counter()
    steps = 3 if args.no_retrieval else 6
    print(f"1/{steps} generating {sum(sizes.values())} scenes and their region features in {out / 'data'}")
    data = prepare_quickstart_data(out / "data", **sizes)
    common = [f"data.captions={data['dataset_json']}", f"data.features={data['features']}",
              f"data.attributes={data['attributes_json']}",
              f"processor.region_extractor={json.dumps(data['region_extractor'])}"]
    if epochs:
        common.append(f"train.epochs={epochs}")
    summaries = {}
    for step, (name, switches) in enumerate((("glied", []), ("base", BASE_SWITCHES)), start=2):
        print(f"{step}/{steps} training {'GLIED' if name == 'glied' else 'the Base model'}")
        run_dir = fresh(out / "runs" / name)
        config = load_config(CONFIG, [f"output_dir={run_dir}", *common, *switches, *args.set])
        summaries[name] = train(config)
        summaries[name]["subsets"] = novel_split_scores(run_dir, data["dataset_json"])
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(run_dir / "best", target)

    if not args.no_retrieval:
        retrieval = {}
        for step, (name, switches) in enumerate((("hierarchical", []), ("flat", ["model.hierarchical=false"])),
                                                start=4):
            print(f"{step}/{steps} training the HM-LSTM retrieval model ({name})")
            folder = "hmlstm" if name == "hierarchical" else "hmlstm_flat"
            run_dir = fresh(out / "runs" / folder)
            config = load_config(RETRIEVAL_CONFIG, [f"output_dir={run_dir}", *common, *switches],
                                 RetrievalTask.defaults)
            retrieval[name] = train(config, RetrievalTask())
            shutil.rmtree(out / folder, ignore_errors=True)
            shutil.copytree(run_dir / "best", out / folder)
        print(f"6/{steps} captioning the test split with GLIED's beams re-ranked by the HM-LSTM")
        summaries["glied_reranked"] = reranked_test(out, data, CONFIG)

    metrics = list(summaries["glied"]["test_metrics"])
    names = {"glied": "GLIED", "base": "Base", "glied_reranked": "GLIED, 5 beams re-ranked by HM-LSTM"}
    print(f"\nheld-out test split ({sizes['num_test']} images; metrics x100, COCO caption evaluation)")
    print("| model | " + " | ".join(metrics) + " | CIDEr seen | CIDEr novel pairs |")
    print("|---" * (len(metrics) + 3) + "|")
    for name, summary in summaries.items():
        values = " | ".join(f"{100 * summary['test_metrics'][m]:.1f}" for m in metrics)
        subsets = summary["subsets"]
        print(f"| {names[name]} | {values} | {100 * subsets.get('seen', 0):.1f} | "
              f"{100 * subsets.get('novel', 0):.1f} |")
    if not args.no_retrieval:
        print(f"\nretrieval on the held-out test split ({sizes['num_test']} images, 5 captions each; x100; phrase "
              "queries: 'a [small|large] <colour> <shape>' against every test image)")
        print(retrieval_table(retrieval))
        summaries.update({f"hmlstm_{name}": summary for name, summary in retrieval.items()})

    test_images = sorted((Path(data["image_root"]) / "test").glob("*.png"))[:4]
    print("\ncaptions of held-out images, straight from the pixels:")
    references = {r["image_id"]: r["captions"][0] for r in load_captions(data["dataset_json"], split="test")}
    for path, caption in zip(test_images, caption_images(out / "glied", test_images)):
        print(f"  {path.name}: {caption!r}   (a reference: {references[path.stem]!r})")
    saved = ["glied", "base"] + ([] if args.no_retrieval else ["hmlstm", "hmlstm_flat"])
    print(f"\nsaved: {', '.join(str(out / name) for name in saved)} (model + processor); "
          f"training curves: {out / 'runs' / '<model>' / 'training_curve.png'}")
    print(f"total time {time.perf_counter() - start:.0f} s")
    return summaries


if __name__ == "__main__":
    main()
