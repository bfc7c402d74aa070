"""Contrastive attention analysis tool, CLI, naive two-pass baseline module and demo inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlplugins.contrastive_attention import ContrastiveAttentionConfig, enable_contrastive_attention
from vlplugins.contrastive_attention.analysis import analyze_layers, default_config_for, prepare_inputs, save_report
from vlplugins.contrastive_attention.reference import synthetic_inputs, two_pass_generate, two_pass_scale
from vlplugins.hub import build_from_preset

IMAGE_TOKEN = 32000


@pytest.fixture(scope="module")
def tiny():
    return build_from_preset("tiny-llava")


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((60, 80, 3)) * 255).astype("uint8"))


def test_analyze_layers_numbers(tiny, image):
    cfg = ContrastiveAttentionConfig.from_preset("tiny-llava")
    inputs, _ = prepare_inputs(tiny, image, "what is left of the red square")
    ids = inputs["input_ids"]
    assert int((ids == IMAGE_TOKEN).sum()) == 36 and ids.shape == (1, 1 + 36 + 7)
    answer = torch.tensor([731, 969])
    res = analyze_layers(tiny, inputs, config=cfg, answer_ids=answer)
    assert res.num_layers == 6 and res.num_image_tokens == 36 and res.grid == [6, 6]
    # A(l) == head-mean eager attention of the last token over the image tokens, renormalised
    eager = build_from_preset("tiny-llava", attn_implementation="eager")
    with torch.no_grad():
        att = eager(**inputs, output_attentions=True).attentions
    img = (ids[0] == IMAGE_TOKEN).numpy()
    for layer in range(6):
        a = att[layer][0, :, -1, :].double().mean(0).numpy()[img]
        np.testing.assert_allclose(res.attention[layer], a / a.sum(), atol=2e-6)
    # Hellinger matrix: symmetric, zero diagonal, equal to the float64 formula on the maps
    A = np.array(res.attention)
    H = np.sqrt(0.5 * ((np.sqrt(A)[:, None] - np.sqrt(A)[None]) ** 2).sum(-1))
    np.testing.assert_allclose(np.array(res.hellinger), H, atol=1e-6)
    assert res.i_star == cfg.candidate_layers[int(np.argmax([H[i, 3] for i in cfg.candidate_layers]))]
    # the suppressed tokens are those the enabled plugin suppresses on the same prompt
    with torch.no_grad(), enable_contrastive_attention(tiny, cfg) as h:
        tiny(**inputs)
    assert res.suppressed == h.last["suppressed"][0][torch.from_numpy(img)].tolist()
    assert sum(res.suppressed) == int(np.ceil(0.2 * 35))
    # masking curve: zeroing the image states at the input of layer 0 == zeroing the image input embeddings
    full = torch.cat([ids, answer[None]], 1)
    with torch.no_grad():
        embeds = tiny.model(input_ids=full, pixel_values=inputs["pixel_values"], output_hidden_states=True
                            ).hidden_states[0].clone()
        embeds[0, : ids.shape[1]][torch.from_numpy(img)] = 0.0
        logits = tiny.lm_head(tiny.model.language_model(inputs_embeds=embeds).last_hidden_state)[0].double()
        base_logits = tiny(input_ids=full, pixel_values=inputs["pixel_values"]).logits[0].double()
    lp = torch.log_softmax(logits[-3:-1], -1).gather(-1, answer[:, None]).sum().item()
    base = torch.log_softmax(base_logits[-3:-1], -1).gather(-1, answer[:, None]).sum().item()
    assert res.base_logprob == pytest.approx(base, abs=1e-4)
    assert res.masking_logprob[0] == pytest.approx(lp, abs=1e-4)
    assert res.masking_delta[0] == pytest.approx(lp - base, abs=1e-4)
    assert len(res.masking_delta) == 6 and all(np.isfinite(res.masking_delta))
    paths = save_report(res, tmp := __import__("pathlib").Path(__import__("tempfile").mkdtemp()), image=image)
    assert json.loads(open(paths["json"]).read())["i_star"] == res.i_star
    assert Image.open(paths["png"]).size[0] > 500
    del tmp


def test_analysis_bad_inputs(tiny):
    with pytest.raises(ValueError, match="inputs"):
        analyze_layers(tiny, {"input_ids": torch.tensor([[1, 5, 6]])})
    with pytest.raises(ValueError, match="inputs"):
        analyze_layers(tiny, {"input_ids": torch.full((2, 40), IMAGE_TOKEN)})
    cfg = default_config_for(32)
    assert (cfg.post_integration_layer, cfg.review_layer, cfg.candidate_layers) == (28, 29, [2, 4, 8, 11, 12, 13])
    assert default_config_for(6).review_layer <= 5


def test_cli_analyze_writes_png_and_json(tmp_path, image):
    from vlplugins.cli import main

    image.save(tmp_path / "img.png")
    rc = main(["contrastive-attention", "analyze", "--model", "preset:tiny-llava-next", "--image",
               str(tmp_path / "img.png"), "--prompt", "is there a circle", "--out", str(tmp_path / "out")])
    assert rc == 0
    data = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert data["num_layers"] == 6 and data["i_star"] in data["candidate_layers"]
    assert data["num_image_tokens"] == len(data["ia"]) == len(data["suppressed"]) > 36  # anyres tiles
    assert len(data["hellinger"]) == 6 and all(len(r) == 6 for r in data["hellinger"])
    assert Image.open(tmp_path / "out" / "analysis.png").format == "PNG"


def test_two_pass_module_equals_one_pass_and_restores(tiny):
    for preset, model in (("tiny-llava", tiny), ("tiny-llava-next", build_from_preset("tiny-llava-next"))):
        cfg = ContrastiveAttentionConfig.from_preset(preset)
        inputs = synthetic_inputs(model, batch_size=3, text_len=6)
        assert inputs["attention_mask"].min() == 0  # rows are padded
        with torch.no_grad(), enable_contrastive_attention(model, cfg) as h:
            ids = model.generate(**inputs, max_new_tokens=4, do_sample=False)
        ref = two_pass_scale(model, inputs, cfg)
        assert torch.equal(ref["suppressed"], h.last["suppressed"])
        assert torch.equal(ref["i_star"], h.last["i_star"])
        assert torch.equal(two_pass_generate(model, inputs, cfg, max_new_tokens=4, do_sample=False), ids)
        assert model.config.text_config._attn_implementation == "sdpa"
