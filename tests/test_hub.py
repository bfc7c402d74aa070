"""Hub layer: presets, Auto registration, head-only checkpoints, model cards, offline push, tokenizers."""

import json

import open_clip
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, CLIPModel, PretrainedConfig, PreTrainedModel

import vlplugins  # noqa: F401  (registers the plugins)
from vlplugins.hub import build_from_preset, list_presets, load_preset, preset_info, register_auto
from vlplugins.hub.cards import build_model_card
from vlplugins.hub.checkpoint import HeadOnlyMixin, load_reference_model
from vlplugins.hub.tokenizers import CLIP_VOCAB_SIZE, clip_tokenizer, word_tokenizer

REQUIRED = {"tiny-blip2-retrieval", "tiny-llava", "tiny-llava-next", "tiny-clip", "tiny-open-clip", "blip2-itm-vit-g",
            "llava-1.5-7b", "llava-v1.6-vicuna-7b", "clip-vit-base-patch16"}


# ------------------------------------------------------------------------------------------- presets
def test_all_required_presets_exist_and_declare_hub_ids():
    assert REQUIRED <= set(list_presets())
    assert preset_info("blip2-itm-vit-g")["hub_id"] == "Salesforce/blip2-itm-vit-g"
    assert preset_info("llava-1.5-7b")["hub_id"] == "llava-hf/llava-1.5-7b-hf"
    assert preset_info("llava-v1.6-vicuna-7b")["hub_id"] == "llava-hf/llava-v1.6-vicuna-7b-hf"
    assert preset_info("clip-vit-base-patch16")["hub_id"] == "openai/clip-vit-base-patch16"


@pytest.mark.parametrize("name,params", [
    ("clip-vit-base-patch16", 149_620_737),  # published size of openai/clip-vit-base-patch16
    ("llava-1.5-7b", 7_063_427_072),  # llava-hf/llava-1.5-7b-hf
    ("llava-v1.6-vicuna-7b", 7_063_431_168),  # + the 4096-d image_newline parameter
])
def test_real_architectures_have_published_sizes(name, params):
    model = build_from_preset(name, device="meta")
    assert sum(p.numel() for p in model.parameters()) == params


def test_real_blip2_preset_structure():
    cfg = load_preset("blip2-itm-vit-g")
    assert (cfg.vision_config.hidden_size, cfg.vision_config.num_hidden_layers) == (1408, 39)
    assert (cfg.qformer_config.hidden_size, cfg.qformer_config.num_hidden_layers) == (768, 12)
    assert (cfg.num_query_tokens, cfg.image_text_hidden_size) == (32, 256)


def test_tiny_presets_keep_real_structure():
    llava = load_preset("tiny-llava")
    assert llava.image_token_index == 32000 and llava.text_config.num_hidden_layers >= 4
    side = llava.vision_config.image_size // llava.vision_config.patch_size
    assert side * side == llava.image_seq_length == 36  # a few dozen image tokens
    assert llava.text_config.num_key_value_heads < llava.text_config.num_attention_heads  # GQA path exercised
    nxt = load_preset("tiny-llava-next")
    assert nxt.image_token_index == 32000 and len(nxt.image_grid_pinpoints) >= 2
    assert load_preset("tiny-clip").text_config.vocab_size == CLIP_VOCAB_SIZE
    oc = build_from_preset("tiny-open-clip")
    assert isinstance(oc, open_clip.CLIP)


def test_build_from_preset_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_from_preset("tiny-clip", seed=7)
    after = torch.rand(1)
    b = build_from_preset("tiny-clip", seed=7)
    assert torch.equal(before, after)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    c = build_from_preset("tiny-clip", seed=8)
    assert not torch.equal(a.visual_projection.weight, c.visual_projection.weight)


def test_build_from_preset_dtype_and_unknown_name():
    m = build_from_preset("tiny-llava", dtype=torch.bfloat16)
    assert next(m.parameters()).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="unknown preset"):
        load_preset("no-such-model")


# ------------------------------------------------------------------------------------------- tokenizers
def test_offline_clip_tokenizer_matches_open_clip():
    tok = clip_tokenizer()
    assert len(tok) == CLIP_VOCAB_SIZE
    texts = ["a small red circle left of a blue square.", "Hello, World!!  x-ray's 3.14 naïve café"]
    ours = tok(texts, padding="max_length", max_length=77, truncation=True)["input_ids"]
    ref = open_clip.tokenize(texts).tolist()
    for o, r in zip(ours, ref):
        n = r.index(49407) + 1
        assert o[:n] == r[:n]


def test_word_tokenizer_ids():
    tok = word_tokenizer(["a", "red", "circle"])
    assert len(tok) == 8
    assert tok("a red circle")["input_ids"] == [2, 5, 6, 7, 3]
    assert tok("a blue circle")["input_ids"] == [2, 5, 1, 7, 3]  # unknown word -> [UNK]


# ------------------------------------------------------------------------------------------- head-only plugin
class ProbeConfig(PretrainedConfig):
    model_type = "vlplugins_test_probe"

    def __init__(self, base_model_name_or_path="", base_model_revision=None, num_labels_out=3, **kwargs):
        super().__init__(**kwargs)
        self.base_model_name_or_path = base_model_name_or_path
        self.base_model_revision = base_model_revision
        self.num_labels_out = num_labels_out


class ProbeModel(HeadOnlyMixin, PreTrainedModel):
    """A linear probe on frozen CLIP image features: the smallest head-only plugin."""

    config_class = ProbeConfig
    base_attr = "base"

    def __init__(self, config, base_model=None):
        super().__init__(config)
        base = base_model if base_model is not None else self.load_base(config)
        self.head = torch.nn.Linear(base.config.projection_dim, config.num_labels_out)
        self.post_init()
        self.base = base.requires_grad_(False)

    @classmethod
    def load_base(cls, config, dtype=None):
        return load_reference_model(config.base_model_name_or_path, CLIPModel,
                                    revision=config.base_model_revision, dtype=dtype)

    @torch.no_grad()
    def _init_weights(self, module):
        if isinstance(module, torch.nn.Linear):
            module.weight.normal_(0, 0.02)
            module.bias.zero_()

    def forward(self, pixel_values):
        # transformers 5: get_image_features returns the vision output with the projected pooler_output
        return self.head(self.base.get_image_features(pixel_values=pixel_values).pooler_output)

    def model_card(self):
        return build_model_card(title="probe", summary="A test probe.", usage="AutoModel.from_pretrained(dir)",
                                tags=["test-probe"], base_model=self.config.base_model_name_or_path,
                                paper_url="https://arxiv.org/abs/0000.00000")


register_auto(ProbeConfig, ProbeModel)


@pytest.fixture()
def base_dir(tmp_path):
    base = build_from_preset("tiny-clip", seed=3)
    path = tmp_path / "base"
    base.save_pretrained(path)
    return path


def test_head_only_round_trip_is_bit_exact(tmp_path, base_dir):
    base = CLIPModel.from_pretrained(base_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = ProbeModel(ProbeConfig(base_model_name_or_path=str(base_dir)), base_model=base)
    # Wrapping must not re-initialise the already loaded base.
    for k, v in model.base.state_dict().items():
        assert torch.equal(v, before[k]), k
    torch.nn.init.normal_(model.head.weight)  # make the head distinguishable from a fresh init
    out_dir = tmp_path / "probe"
    model.save_pretrained(out_dir)
    assert sorted(p.name for p in out_dir.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    saved = load_file(str(out_dir / "model.safetensors"))
    assert sorted(saved) == ["head.bias", "head.weight"]  # no base tensors
    assert (out_dir / "model.safetensors").stat().st_size < 10_000
    assert json.loads((out_dir / "config.json").read_text())["base_model_name_or_path"] == str(base_dir)

    reloaded = AutoModel.from_pretrained(out_dir)
    assert type(reloaded) is ProbeModel and not reloaded.training
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model.eval()
    assert torch.equal(model(x), reloaded(x))
    for k, v in model.state_dict().items():
        assert torch.equal(v, reloaded.state_dict()[k]), k


def test_head_only_rejects_mismatched_checkpoint(tmp_path, base_dir):
    model = ProbeModel(ProbeConfig(base_model_name_or_path=str(base_dir)))
    model.save_pretrained(tmp_path / "p")
    cfg = ProbeConfig.from_pretrained(tmp_path / "p")
    cfg.num_labels_out = 5
    with pytest.raises(ValueError, match=r"head\.(weight|bias) has shape"):
        ProbeModel.from_pretrained(tmp_path / "p", config=cfg)


def test_model_card_contents(tmp_path, base_dir):
    ProbeModel(ProbeConfig(base_model_name_or_path="openai/clip-vit-base-patch16"),
               base_model=CLIPModel.from_pretrained(base_dir)).save_pretrained(tmp_path / "p")
    card = (tmp_path / "p" / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: vlplugins" in header
    assert "base_model: openai/clip-vit-base-patch16" in header
    assert "- vlplugins" in header and "- test-probe" in header
    assert "https://arxiv.org/abs/0000.00000" in card
    assert "```python\nAutoModel.from_pretrained(dir)\n```" in card


def test_push_to_hub_offline_with_fake_api(fake_hub, base_dir):
    model = ProbeModel(ProbeConfig(base_model_name_or_path=str(base_dir)))
    assert model.push_to_hub("user/probe") == "commit-url"
    assert fake_hub.repo_id == "user/probe" and fake_hub.create_kwargs["exist_ok"] is True
    assert fake_hub.upload_repo_id == "user/probe"
    assert sorted(fake_hub.files) == ["README.md", "config.json", "model.safetensors"]
    assert "library_name: vlplugins" in fake_hub.text("README.md")
    assert json.loads(fake_hub.text("config.json"))["model_type"] == "vlplugins_test_probe"


def test_load_reference_model_preset():
    a = load_reference_model("preset:tiny-clip")
    b = build_from_preset("tiny-clip")
    assert torch.equal(a.text_projection.weight, b.text_projection.weight)
    with pytest.raises(ValueError, match="model_cls"):
        load_reference_model("org/model")


def test_autoconfig_resolves_registered_plugin(tmp_path):
    ProbeConfig(base_model_name_or_path="x").save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is ProbeConfig


def test_plain_import_registers_every_plugin_without_lavis():
    # A fresh interpreter: `import vlplugins` alone must register all four plugins with the Auto classes (the
    # test process has imported the sub-packages already, so it cannot show this), and must not import LAVIS.
    import subprocess
    import sys

    code = (
        "import sys, vlplugins\n"
        "from transformers import AutoConfig, AutoModel\n"
        "from transformers.models.auto.modeling_auto import MODEL_MAPPING\n"
        "for mt in ('hyperbolic_blip2', 'creal', 'hyperalign', 'contrastive_attention'):\n"
        "    cfg = AutoConfig.for_model(mt)\n"
        "    model_cls = MODEL_MAPPING[type(cfg)] if mt != 'contrastive_attention' else None\n"
        "    print(mt, type(cfg).__name__, getattr(model_cls, '__name__', '-'))\n"
        "print('lavis' in sys.modules)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.split("\n")
    assert lines[0] == "hyperbolic_blip2 HyperbolicBlip2Config HyperbolicBlip2ForImageTextRetrieval"
    assert lines[1] == "creal CReaLConfig CReaLForRelationPrediction"
    assert lines[2] == "hyperalign HyperAlignConfig HyperAlignModel"
    assert lines[3] == "contrastive_attention ContrastiveAttentionConfig -"
    assert lines[4] == "False"
