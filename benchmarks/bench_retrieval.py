"""HM-LSTM speed at the paper's size, and what re-ranking GLIED's beams with it costs.

Measured side by side in one run (read the ratios on a shared machine):
- embedding: images/s (36 regions x 2048) and sentences/s (12 words, 3 phrases), the hierarchical model against the
  flat baseline;
- training: forward + backward + Adam step, images/s with 5 captions each (the ranking losses included);
- re-ranking: GLIED's beam-3 captioning against 5 beams re-ranked by the HM-LSTM (`BeamReranker`), images/s.

    python benchmarks/bench_retrieval.py            # the tables (a few minutes on 2 cores)
    python benchmarks/bench_retrieval.py --quick    # a small size, one repeat
    python benchmarks/bench_retrieval.py --device cuda
"""
import argparse
import platform

import torch

from modeling_glied import GLIEDConfig, GLIEDForCaptioning, HMLSTMConfig, HMLSTMModel
from processing import BeamReranker, GLIEDProcessor, HMLSTMProcessor

from bench_inference import timed  # benchmarks/ is on sys.path when this script runs

WORDS, PHRASES, CAPTIONS = 12, 3, 5


def sizes(args):
    if args.quick:
        return dict(vocab=200, word=32, hidden=64, joint=64, regions=4, feature=32, batch=8, glied=32, heads=4)
    # GLIED (the captioner re-ranked) at the paper's size: d_model 512, 8 heads
    return dict(vocab=10000, word=300, hidden=1024, joint=1024, regions=36, feature=2048, batch=args.batch_size,
                glied=512, heads=8)


def text_inputs(count, vocab, device):
    g = torch.Generator().manual_seed(1)
    spans = torch.tensor([[0, 3], [4, 7], [8, 12]]).expand(count, -1, -1)
    return dict(input_ids=torch.randint(4, vocab, (count, WORDS), generator=g).to(device),
                attention_mask=torch.ones(count, WORDS, dtype=torch.long, device=device),
                phrase_spans=spans.to(device), phrase_mask=torch.ones(count, PHRASES, dtype=torch.long, device=device))


def image_inputs(count, s, device):
    g = torch.Generator().manual_seed(0)
    boxes = torch.rand(count, s["regions"], 4, generator=g).sort(dim=-1).values
    return dict(region_features=torch.randn(count, s["regions"], s["feature"], generator=g).to(device),
                region_mask=torch.ones(count, s["regions"], dtype=torch.long, device=device),
                region_boxes=boxes.to(device))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    s = sizes(args)
    repeats = 1 if args.quick else args.repeats
    batch, device = s["batch"], args.device
    print(f"machine: {platform.machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"device {device}, float32")
    print(f"HM-LSTM: vocabulary {s['vocab']}, word vectors {s['word']}, hidden {s['hidden']}, joint space "
          f"{s['joint']}; {s['regions']} regions x {s['feature']}; sentences of {WORDS} words, {PHRASES} phrases; "
          f"batch {batch} images x {CAPTIONS} captions; best of {repeats}\n")

    images = image_inputs(batch, s, device)
    texts = text_inputs(batch * CAPTIONS, s["vocab"], device)
    owner = torch.arange(batch, device=device).repeat_interleave(CAPTIONS)
    rows = []
    for hierarchical in (True, False):
        torch.manual_seed(0)
        model = HMLSTMModel(HMLSTMConfig(vocab_size=s["vocab"], word_embedding_size=s["word"],
                                         hidden_size=s["hidden"], embedding_size=s["joint"],
                                         region_feature_size=s["feature"], hierarchical=hierarchical)).to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        model.eval()
        with torch.no_grad():
            image_time = timed(lambda: model.embed_images(**images), repeats, device)
            text_time = timed(lambda: model.embed_sentences(**texts), repeats, device)
        model.train()

        def step():
            out = model(**images, **texts, sentence_image_index=owner)
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()

        train_time = timed(step, repeats, device)
        rows.append(("hierarchical" if hierarchical else "flat", batch / image_time, len(owner) / text_time,
                     batch / train_time))
    print("### HM-LSTM: embedding and training\n")
    print("| model | images/s (embed) | sentences/s (embed) | training images/s (5 captions each) |")
    print("|---|---|---|---|")
    for name, image_rate, text_rate, train_rate in rows:
        print(f"| {name} | {image_rate:.1f} | {text_rate:.1f} | {train_rate:.1f} |")
    print(f"\nsentences/s, flat / hierarchical: {rows[1][2] / rows[0][2]:.2f}x; training: "
          f"{rows[1][3] / rows[0][3]:.2f}x")

    # re-ranking: GLIED at the paper's size (hidden 512) on the same images, its vocabulary shared with the HM-LSTM
    words = [f"w{i}" for i in range(s["vocab"] - 4)]
    glied_processor = GLIEDProcessor.from_captions([" ".join(words)], count_threshold=0,
                                                   region_feature_size=s["feature"])
    hmlstm_processor = HMLSTMProcessor.from_captions([" ".join(words)], count_threshold=0,
                                                     region_feature_size=s["feature"], phrase_backend="rules")
    torch.manual_seed(0)
    captioner = GLIEDForCaptioning(GLIEDConfig(vocab_size=len(glied_processor.tokenizer), hidden_size=s["glied"],
                                               num_attention_heads=s["heads"], intermediate_size=4 * s["glied"],
                                               region_feature_size=s["feature"]))
    captioner = captioner.to(device).eval()
    reranker_model = HMLSTMModel(HMLSTMConfig(vocab_size=len(hmlstm_processor.tokenizer), word_embedding_size=s["word"],
                                              hidden_size=s["hidden"], embedding_size=s["joint"],
                                              region_feature_size=s["feature"])).to(device).eval()
    reranker = BeamReranker(reranker_model, hmlstm_processor, num_candidates=5)
    options = dict(max_new_tokens=16, min_new_tokens=16)
    with torch.no_grad():
        beam3 = timed(lambda: captioner.generate(**images, num_beams=3, **options), repeats, device)
        beam5 = timed(lambda: captioner.generate(**images, num_beams=5, **options), repeats, device)
        reranked = timed(lambda: reranker.generate(captioner, glied_processor, images, num_beams=3, **options),
                         repeats, device)
    print("\n### GLIED captioning with and without re-ranking (16 words per caption)\n")
    print("| decoding | images/s | time vs beam 3 |")
    print("|---|---|---|")
    for name, seconds in (("beam 3", beam3), ("beam 5", beam5), ("5 beams re-ranked by the HM-LSTM", reranked)):
        print(f"| {name} | {batch / seconds:.1f} | {seconds / beam3:.2f}x |")


if __name__ == "__main__":
    main()
