"""Shapes world: determinism, predicate rules, long tail, caption levels, graded alignment; tiny CLIP fixture."""

import collections

import numpy as np
import pytest

from vlplugins.data import (CAPTION_LEVELS, OBJECT_CLASSES, PREDICATES, VOCABULARY, ShapeObject, ShapesWorld,
                            images_to_tensor, relation_of, render)


def test_same_seed_same_bytes_and_order_independence():
    a, b = ShapesWorld(32, seed=5), ShapesWorld(32, seed=5)
    assert render(a.scene(17, 3)).tobytes() == render(b.scene(17, 3)).tobytes()
    b.scene(3)  # drawing other items first must not change item 17
    assert render(a.scene(17, 3)).tobytes() == render(b.scene(17, 3)).tobytes()
    assert render(a.scene(17, 3)).tobytes() != render(ShapesWorld(32, seed=6).scene(17, 3)).tobytes()


def obj(box, shape="square", color="red", size="small"):
    return ShapeObject(shape, color, size, box)


@pytest.mark.parametrize("a,b,expected", [
    ((2, 2, 6, 6), (0, 0, 20, 20), "inside"),
    ((0, 0, 10, 10), (5, 5, 15, 15), "overlapping"),
    ((0, 0, 4, 4), (6, 0, 10, 4), "near"),  # centres 6 px apart < 0.3 * 32
    ((0, 10, 4, 14), (25, 12, 29, 16), "left of"),
    ((25, 12, 29, 16), (0, 10, 4, 14), "right of"),
    ((10, 0, 14, 4), (11, 25, 15, 29), "above"),
    ((11, 25, 15, 29), (10, 0, 14, 4), "below"),
])
def test_relation_rules(a, b, expected):
    assert PREDICATES[relation_of(obj(a), obj(b), 32)] == expected


def test_annotated_relations_match_geometry_and_are_long_tailed():
    w = ShapesWorld(32, seed=0)
    counts = collections.Counter()
    for i in range(300):
        s = w.scene(i, num_objects=3)
        assert len(s.relations) == 2
        for si, oi, p in s.relations:
            assert relation_of(s.objects[si], s.objects[oi], 32) == p
            counts[p] += 1
    freq = [counts[p] for p in range(1, len(PREDICATES))]
    assert freq[0] == max(freq) and freq[-1] == min(freq)  # head "left of", tail "inside"
    assert freq[0] > 4 * freq[-1]


def test_scene_graph_format():
    img, gt = ShapesWorld(32, seed=1).scene_graph(4, num_objects=3)
    assert img.size == (32, 32)
    assert gt["boxes"].shape == (3, 4) and gt["boxes"].dtype == np.float32
    assert (gt["boxes"][:, 2] > gt["boxes"][:, 0]).all() and (gt["boxes"] >= 0).all() and (gt["boxes"] <= 32).all()
    assert gt["labels"].min() >= 1 and gt["labels"].max() < len(OBJECT_CLASSES)
    assert gt["relations"].shape == (2, 3) and (gt["relations"][:, 2] >= 1).all()


def test_caption_levels_grow_in_detail_and_use_the_vocabulary():
    w = ShapesWorld(32, seed=2)
    s = w.scene(9)
    caps = dict(w.captions(s))
    assert sorted(caps) == list(CAPTION_LEVELS)
    assert caps[0] == "a shape"
    lengths = [len(caps[level].split()) for level in CAPTION_LEVELS]
    assert lengths == sorted(lengths) and lengths[-1] > lengths[1]
    first = s.objects[0]
    assert caps[3] == f"a {first.size} {first.color} {first.shape}"
    vocab = set(VOCABULARY)
    for c in caps.values():
        assert set(c.split()) <= vocab


def test_alignment_pairs_are_graded():
    w = ShapesWorld(32, seed=3)
    seen = set()
    for i in range(60):
        d = w.alignment_pair(i, num_prompts=8)
        assert d["score"] == d["k"] / d["n"] and d["n"] == 5
        assert d["prompt_id"] == i % 8
        seen.add(d["k"])
        if d["k"] == 5:  # a perfectly aligned image renders exactly what the prompt says
            a = d["prompt"].split()
            assert a[1] in ("small", "large")
    assert seen == set(range(6))
    # same prompt id -> same prompt text
    assert w.alignment_pair(3, 8)["prompt"] == w.alignment_pair(11, 8)["prompt"]


def test_images_to_tensor_normalises():
    t = images_to_tensor([render(ShapesWorld(32).scene(0))], mean=(0, 0, 0), std=(1, 1, 1))
    assert t.shape == (1, 3, 32, 32) and float(t.min()) >= 0 and float(t.max()) <= 1
    # background pixel (245/255) at a corner not covered by shapes in most scenes
    assert np.isclose(t[0, :, 0, 0].max().item(), 245 / 255, atol=1e-6) or t[0, :, 0, 0].max() < 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="image_size"):
        ShapesWorld(8)
    with pytest.raises(ValueError, match="level"):
        ShapesWorld(32).caption(ShapesWorld(32).scene(0), 7)
    with pytest.raises(ValueError, match="num_objects"):
        ShapesWorld(32).scene(0, num_objects=1)


@pytest.mark.slow
def test_pretrained_tiny_clip_learns_the_shapes_world():
    from vlplugins.data.pretrain import clip_retrieval_accuracy, pretrained_tiny_clip
    from vlplugins.hub import build_from_preset

    w = ShapesWorld(32, seed=0)
    trained = pretrained_tiny_clip()
    assert not any(p.requires_grad for p in trained.parameters())
    random_model = build_from_preset("tiny-clip", seed=0)
    # Level 2 ("a red circle"): 12 distinct captions, so chance is ~1/12 on held-out scenes.
    acc = clip_retrieval_accuracy(trained, w, level=2)
    assert acc > 2.0 / 12
    assert acc > 1.8 * clip_retrieval_accuracy(random_model, w, level=2)
    # The cache returns the same weights.
    again = pretrained_tiny_clip()
    for (k, v), (_, u) in zip(trained.state_dict().items(), again.state_dict().items()):
        assert np.array_equal(v.numpy(), u.numpy()), k
