import pytest
import torch

from modeling_glied.modeling_hmlstm import HMLSTMConfig, HMLSTMModel, HMLSTMOutput

F_SIZE, E_SIZE = 6, 8


def tiny_config(**kwargs):
    values = dict(vocab_size=20, word_embedding_size=5, hidden_size=8, embedding_size=E_SIZE,
                  region_feature_size=F_SIZE, region_box_size=5)
    values.update(kwargs)
    return HMLSTMConfig(**values)


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    return HMLSTMModel(tiny_config(**kwargs)).eval().double()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(4, 20, (3, 6), generator=g)
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]])
    input_ids = input_ids * attention_mask
    spans = torch.tensor([[[0, 2], [3, 6]], [[1, 3], [0, 0]], [[0, 1], [0, 0]]])
    phrase_mask = torch.tensor([[1, 1], [1, 0], [1, 0]])
    features = torch.randn(3, 4, F_SIZE, generator=g, dtype=torch.float64)
    region_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]])
    boxes = torch.rand(3, 4, 4, generator=g, dtype=torch.float64).sort(dim=-1).values  # x1 <= x2, y1 <= y2
    return dict(input_ids=input_ids, attention_mask=attention_mask, phrase_spans=spans, phrase_mask=phrase_mask,
                region_features=features, region_mask=region_mask, region_boxes=boxes)


def test_shapes_and_normalisation():
    model, inputs = tiny_model(), batch()
    out = model(**inputs)
    assert isinstance(out, HMLSTMOutput)
    assert out.image_embeds.shape == (3, E_SIZE) and out.sentence_embeds.shape == (3, E_SIZE)
    assert out.region_embeds.shape == (3, 4, E_SIZE) and out.phrase_embeds.shape == (3, 2, E_SIZE)
    assert out.image_sentence_similarity.shape == (3, 3) and out.phrase_image_similarity.shape == (3, 2, 3)
    ones = torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), ones)
    torch.testing.assert_close(out.sentence_embeds.norm(dim=-1), ones)
    torch.testing.assert_close(out.region_embeds.norm(dim=-1), inputs["region_mask"].double())
    torch.testing.assert_close(out.phrase_embeds.norm(dim=-1), inputs["phrase_mask"].double())
    torch.testing.assert_close(out.image_sentence_similarity, out.image_embeds @ out.sentence_embeds.t())
    assert out.loss.ndim == 0 and out.loss > 0 and out.phrase_loss > 0
    out.loss.backward()


def test_padding_invariance_both_sides():
    model, inputs = tiny_model(), batch()
    images, regions = model.embed_images(inputs["region_features"], inputs["region_mask"], inputs["region_boxes"])
    sentences, phrases = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"], inputs["phrase_spans"],
                                               inputs["phrase_mask"])
    for i in range(3):
        n = int(inputs["region_mask"][i].sum())
        alone_image, alone_regions = model.embed_images(inputs["region_features"][i:i + 1, :n], None,
                                                        inputs["region_boxes"][i:i + 1, :n])
        torch.testing.assert_close(images[i:i + 1], alone_image)
        torch.testing.assert_close(regions[i:i + 1, :n], alone_regions)
        t, p = int(inputs["attention_mask"][i].sum()), int(inputs["phrase_mask"][i].sum())
        alone_sentence, alone_phrases = model.embed_sentences(inputs["input_ids"][i:i + 1, :t], None,
                                                              inputs["phrase_spans"][i:i + 1, :p])
        torch.testing.assert_close(sentences[i:i + 1], alone_sentence)
        torch.testing.assert_close(phrases[i:i + 1, :p], alone_phrases)
    # padded region content does not matter
    changed = inputs["region_features"].clone()
    changed[~inputs["region_mask"].bool()] = 1e3
    torch.testing.assert_close(model.embed_images(changed, inputs["region_mask"], inputs["region_boxes"])[0], images)


def test_phrases_change_the_sentence_and_zero_phrases_work():
    model, inputs = tiny_model(), batch()
    with_phrases, _ = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"], inputs["phrase_spans"],
                                            inputs["phrase_mask"])
    without, none = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"])
    assert none is None and not torch.allclose(with_phrases, without)
    empty, phrases = model.embed_sentences(inputs["input_ids"], inputs["attention_mask"],
                                           torch.zeros(3, 0, 2, dtype=torch.long), torch.zeros(3, 0, dtype=torch.long))
    assert phrases.shape == (3, 0, E_SIZE)
    torch.testing.assert_close(empty, without)  # no phrase: the root runs over the words
    masked = dict(inputs, phrase_mask=torch.zeros(3, 2, dtype=torch.long))
    out = model(**masked)
    assert out.phrase_loss == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.sentence_embeds, without)


def naive_losses(S, PI, phrase_mask, margin, hardest):
    """Loops over queries: the definitions of the sentence and phrase ranking losses."""
    agg = max if hardest else sum
    B = S.shape[0]
    annotation = sum(agg([max(0.0, margin - S[i, i] + S[i, j]) for j in range(B) if j != i]) for i in range(B)) / B
    search = sum(agg([max(0.0, margin - S[j, j] + S[i, j]) for i in range(B) if i != j]) for j in range(B)) / B
    queries = [(b, p) for b in range(B) for p in range(PI.shape[1]) if phrase_mask[b, p]]
    to_images = sum(agg([max(0.0, margin - PI[b, p, b] + PI[b, p, k]) for k in range(B) if k != b])
                    for b, p in queries) / len(queries)
    to_phrases = sum(agg([max(0.0, margin - PI[b, p, b] + PI[b2, p2, b]) for b2, p2 in queries if b2 != b])
                     for b, p in queries) / len(queries)
    return annotation + search, to_images + to_phrases


@pytest.mark.parametrize("hardest", [False, True])
def test_loss_equals_naive_loops(hardest):
    model, inputs = tiny_model(hardest_negative=hardest, margin=0.5, phrase_loss_weight=0.7), batch()
    with torch.no_grad():
        out = model(**inputs)
    S, PI = out.image_sentence_similarity, out.phrase_image_similarity
    # phrase-image scores against a direct max over regions
    for b in range(3):
        for p in range(2):
            for k in range(3):
                if inputs["phrase_mask"][b, p]:
                    best = max(float(out.phrase_embeds[b, p] @ out.region_embeds[k, n])
                               for n in range(4) if inputs["region_mask"][k, n])
                    assert PI[b, p, k].item() == pytest.approx(best)
    sentence, phrase = naive_losses(S, PI, inputs["phrase_mask"], 0.5, hardest)
    assert out.sentence_loss.item() == pytest.approx(float(sentence))
    assert out.phrase_loss.item() == pytest.approx(float(phrase))
    assert out.loss.item() == pytest.approx(float(sentence) + 0.7 * float(phrase))


def naive_shared_losses(S, PI, phrase_mask, owner, margin, hardest):
    """The losses with several sentences per image, pair by pair: S (B, S), PI (S, P, B), owner (S,)."""
    agg = max if hardest else sum
    n_images, n_sentences = S.shape
    search = annotation = 0.0
    for s in range(n_sentences):
        i = int(owner[s])
        pos = float(S[i, s])
        search += agg([max(0.0, margin - pos + float(S[k, s])) for k in range(n_images) if k != i] or [0.0])
        annotation += agg([max(0.0, margin - pos + float(S[i, t])) for t in range(n_sentences)
                           if int(owner[t]) != i] or [0.0])
    queries = [(b, p) for b in range(n_sentences) for p in range(PI.shape[1]) if phrase_mask[b, p]]
    to_images = to_phrases = 0.0
    for b, p in queries:
        i = int(owner[b])
        pos = float(PI[b, p, i])
        to_images += agg([max(0.0, margin - pos + float(PI[b, p, k])) for k in range(n_images) if k != i] or [0.0])
        to_phrases += agg([max(0.0, margin - pos + float(PI[c, q, i])) for c, q in queries
                           if int(owner[c]) != i] or [0.0])
    return (search + annotation) / n_sentences, (to_images + to_phrases) / len(queries)


@pytest.mark.parametrize("hardest", [False, True])
def test_several_sentences_per_image_loss_equals_naive_pairs(hardest):
    model, inputs = tiny_model(hardest_negative=hardest, margin=0.5), batch()
    owner = torch.tensor([0, 2, 0])  # sentences 0 and 2 describe image 0, sentence 1 image 2; image 1 has none
    with torch.no_grad():
        out = model(**inputs, sentence_image_index=owner)
        identity = model(**inputs, sentence_image_index=torch.arange(3))
        default = model(**inputs)
    torch.testing.assert_close(identity.loss, default.loss)
    assert out.image_sentence_similarity.shape == (3, 3) and out.phrase_image_similarity.shape == (3, 2, 3)
    sentence, phrase = naive_shared_losses(out.image_sentence_similarity, out.phrase_image_similarity,
                                           inputs["phrase_mask"], owner, 0.5, hardest)
    assert out.sentence_loss.item() == pytest.approx(sentence)
    assert out.phrase_loss.item() == pytest.approx(phrase)
    assert abs(out.loss.item() - default.loss.item()) > 1e-6  # sentence 2's positive really moved to image 0


def test_more_sentences_than_images_and_index_errors():
    model, inputs = tiny_model(), batch()
    two_images = {k: inputs[k][:2] for k in ("region_features", "region_mask", "region_boxes")}
    text = {k: inputs[k] for k in ("input_ids", "attention_mask", "phrase_spans", "phrase_mask")}
    out = model(**two_images, **text, sentence_image_index=torch.tensor([0, 0, 1]))
    assert out.image_sentence_similarity.shape == (2, 3) and out.phrase_image_similarity.shape == (3, 2, 2)
    out.loss.backward()
    with pytest.raises(ValueError, match="sentence_image_index"):
        model(**two_images, **text)
    with pytest.raises(ValueError, match=r"lie in \[0, 2\)"):
        model(**two_images, **text, sentence_image_index=torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="shape"):
        model(**two_images, **text, sentence_image_index=torch.tensor([0, 1]))


def test_flat_switch_removes_the_phrase_term():
    model, inputs = tiny_model(hierarchical=False), batch()
    out = model(**inputs)
    assert out.phrase_embeds is None and out.phrase_image_similarity is None
    assert out.phrase_loss == 0
    torch.testing.assert_close(out.loss, out.sentence_loss)
    plain = model(**dict(inputs, phrase_spans=None, phrase_mask=None))
    torch.testing.assert_close(out.loss, plain.loss)
    assert not hasattr(model, "phrase_lstm")


def synthetic(n, g, concepts=10, per_image=3, noise=0.1, prototypes=None):
    """Images = sets of noisy prototype regions; sentences = the concept words; phrases = single-word spans."""
    sets = [torch.randperm(concepts, generator=g)[:per_image] for _ in range(n)]
    features = torch.stack([prototypes[s] for s in sets]) + noise * torch.randn(n, per_image, F_SIZE, generator=g)
    order = [s[torch.randperm(per_image, generator=g)] for s in sets]
    input_ids = torch.stack(order) + 4
    spans = torch.stack([torch.arange(per_image), torch.arange(1, per_image + 1)], dim=-1).expand(n, -1, -1)
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), region_features=features,
                phrase_spans=spans, phrase_mask=torch.ones(n, per_image, dtype=torch.long)), sets


def test_tiny_synthetic_problem_trains_to_high_recall():
    g = torch.Generator().manual_seed(0)
    prototypes = torch.randn(10, F_SIZE, generator=g)
    torch.manual_seed(0)
    model = HMLSTMModel(tiny_config(vocab_size=14, word_embedding_size=16, hidden_size=32, embedding_size=32,
                                    region_box_size=0, initializer_range=0.1, phrase_loss_weight=0.3))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        inputs, _ = synthetic(32, g, prototypes=prototypes)
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test, sets = synthetic(100, g, prototypes=prototypes)
    keys = [tuple(sorted(s.tolist())) for s in sets]
    keep = [i for i in range(100) if keys.index(keys[i]) == i][:50]  # distinct concept sets only
    test = {k: v[keep] for k, v in test.items()}
    with torch.no_grad():
        out = model(**test)
    S = out.image_sentence_similarity
    target = torch.arange(len(keep))
    annotation = (S.argmax(dim=1) == target).float().mean().item()  # R@1, image -> sentence
    search = (S.argmax(dim=0) == target).float().mean().item()  # R@1, sentence -> image
    assert annotation > 0.8 and search > 0.8, (annotation, search)
    # without region labels, each phrase (a concept word) finds the region of its concept in its own image
    words = test["input_ids"] - 4
    regions = torch.stack([sets[i] for i in keep])  # concept of each region
    best = torch.einsum("bpe,bne->bpn", out.phrase_embeds, out.region_embeds).argmax(dim=-1)
    grounding = (regions.gather(1, best) == words).float().mean().item()
    assert grounding > 0.45, grounding  # chance is 1/3


def test_save_load_round_trip(tmp_path):
    model, inputs = tiny_model(), batch()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = HMLSTMModel.from_pretrained(tmp_path).eval().double()
    assert loaded.config.model_type == "hmlstm" and loaded.config.hierarchical is True
    a, b = model(**inputs), loaded(**inputs)
    torch.testing.assert_close(a.loss, b.loss)
    torch.testing.assert_close(a.phrase_embeds, b.phrase_embeds)


@pytest.mark.parametrize("kwargs, message", [
    (dict(hidden_size=7), "hidden_size must be even"),
    (dict(embedding_size=0), "embedding_size must be a positive integer"),
    (dict(region_box_size=3), "region_box_size"),
    (dict(margin=-0.1), "margin"),
    (dict(hardest_negative=1), "hardest_negative is a switch"),
    (dict(hierarchical="yes"), "hierarchical is a switch"),
    (dict(phrase_loss_weight=-1), "phrase_loss_weight"),
    (dict(dropout=1.0), "dropout"),
    (dict(pad_token_id=20), "pad_token_id"),
    (dict(initializer_range=0), "HMLSTMConfig.initializer_range must be a positive number"),
])
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_bad_inputs_raise_clear_errors():
    model, inputs = tiny_model(), batch()
    full = dict(inputs, attention_mask=torch.ones(3, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="overlap"):
        model(**dict(full, phrase_spans=torch.tensor([[[0, 3], [2, 5]]] * 3)))
    with pytest.raises(ValueError, match="span"):
        model(**dict(full, phrase_spans=torch.tensor([[[0, 7], [0, 1]]] * 3)))
    with pytest.raises(ValueError, match="right-padded"):
        model(**dict(inputs, attention_mask=torch.tensor([[0, 1, 1, 1, 1, 1]] * 3)))
    with pytest.raises(ValueError, match="valid region"):
        model(**dict(inputs, region_mask=torch.zeros(3, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match="region_feature_size"):
        model(**dict(inputs, region_features=torch.zeros(3, 4, F_SIZE + 1, dtype=torch.float64)))


def test_auto_classes_load_a_saved_hmlstm(tmp_path):
    import transformers

    from modeling_glied import HMLSTMConfig, HMLSTMModel

    config = HMLSTMConfig(vocab_size=30, word_embedding_size=8, hidden_size=16, embedding_size=8,
                          region_feature_size=6)
    HMLSTMModel(config).save_pretrained(tmp_path)
    assert type(transformers.AutoModel.from_pretrained(tmp_path)) is HMLSTMModel
    assert transformers.AutoConfig.from_pretrained(tmp_path).model_type == "hmlstm"
