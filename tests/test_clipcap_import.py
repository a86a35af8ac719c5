"""Official ClipCap / CapDec / C3 captioner checkpoints read without torch: the torch.save
reader against torch.load, and a torch transcription of ClipCap's ClipCaptionModel
(rmokady/CLIP_prefix_caption train.py, MLP / transformer / linear mapper) saved with
torch.save, loaded into our ClipCap: the same logits and the same greedy captions as the
transcription decodes them (predict.py's generate2), the official file layouts, one clear
error for a file that does not fit, and the evaluation run from such a file."""
import argparse
import collections
import json
import os

import jax
import numpy as np
import pytest
import safetensors.torch
import torch
import transformers
from torch import nn
from torch.nn import functional as nnf

from c3_jax import runner
from c3_jax.data import builders
from c3_jax.experiments import caption
from c3_jax.models import clipcap, clipcap_import, decoding, gpt2, torch_pickle
from conftest import caption_config, cli

DIM = 16  # embedding width of the tiny tests


# ---------------------------------------------------------------------------
# A torch transcription of ClipCap's ClipCaptionModel (train.py), attribute names as there


class MLP(nn.Module):
    """train.py MLP: Linear layers with Tanh between them, as ``model``."""

    def __init__(self, sizes):
        super().__init__()
        layers = []
        for i in range(len(sizes) - 1):
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
            if i < len(sizes) - 2:
                layers.append(nn.Tanh())
        self.model = nn.Sequential(*layers)

    def forward(self, x):
        return self.model(x)


class MultiHeadAttention(nn.Module):
    """train.py MultiHeadAttention (self-attention, bias=False as TransformerLayer builds it)."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, 2 * dim, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q = self.to_queries(x).reshape(b, n, self.heads, c // self.heads)
        kv = self.to_keys_values(x).reshape(b, n, 2, self.heads, c // self.heads)
        k, v = kv[:, :, 0], kv[:, :, 1]
        att = (torch.einsum("bnhd,bmhd->bnmh", q, k) * self.scale).softmax(dim=2)
        return self.project(torch.einsum("bnmh,bmhd->bnhd", att, v).reshape(b, n, c))


class MlpTransformer(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(nnf.relu(self.fc1(x)))


class TransformerLayer(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=2.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = MultiHeadAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MlpTransformer(dim, int(dim * mlp_ratio))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    def __init__(self, dim, heads, layers):
        super().__init__()
        self.layers = nn.ModuleList([TransformerLayer(dim, heads) for _ in range(layers)])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class TransformerMapper(nn.Module):
    def __init__(self, dim_clip, dim, prefix_length, clip_length, layers):
        super().__init__()
        self.clip_length = clip_length
        self.transformer = Transformer(dim, 8, layers)
        self.linear = nn.Linear(dim_clip, clip_length * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim))

    def forward(self, x):
        x = self.linear(x).view(x.shape[0], self.clip_length, -1)
        const = self.prefix_const.unsqueeze(0).expand(x.shape[0], *self.prefix_const.shape)
        return self.transformer(torch.cat((x, const), dim=1))[:, self.clip_length:]


class ClipCaptionModel(nn.Module):
    def __init__(self, gpt, prefix_length, kind="mlp", clip_length=None, layers=8,
                 prefix_size=DIM):
        super().__init__()
        self.prefix_length, self.gpt = prefix_length, gpt
        self.width = gpt.transformer.wte.weight.shape[1]
        if kind == "mlp":
            self.clip_project = MLP((prefix_size, (self.width * prefix_length) // 2,
                                     self.width * prefix_length))
        elif kind == "linear":  # predict.py for prefix_length > 10, C3's MappingType.Linear
            self.clip_project = nn.Linear(prefix_size, self.width * prefix_length)
        else:
            self.clip_project = TransformerMapper(prefix_size, self.width, prefix_length,
                                                  clip_length, layers)

    def prefix(self, embedding):
        return self.clip_project(embedding).view(-1, self.prefix_length, self.width)

    def forward(self, tokens, embedding, mask=None):
        cat = torch.cat((self.prefix(embedding), self.gpt.transformer.wte(tokens)), dim=1)
        return self.gpt(inputs_embeds=cat, attention_mask=mask).logits


def generate2(model, prefix, stop_ids, length):
    """predict.py generate2 with one prefix [1, P, width]: the argmax token (its top-p filter
    never removes the top token) until a stop token or ``length`` tokens."""
    tokens, generated = [], prefix
    with torch.no_grad():
        for _ in range(length):
            logits = model.gpt(inputs_embeds=generated).logits[:, -1]
            token = int(torch.argmax(logits, -1))
            tokens.append(token)
            embed = model.gpt.transformer.wte(torch.tensor([[token]]))
            generated = torch.cat((generated, embed), dim=1)
            if token in stop_ids:
                break
    return tokens


def tiny_gpt(vocab=50, seed=0, **kw):
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=vocab,
                                     n_positions=64, bos_token_id=0, eos_token_id=1,
                                     initializer_range=0.2, **kw)  # varied greedy captions
    return transformers.GPT2LMHeadModel(config).eval()


MAPPERS = {  # kind -> (our MapperConfig, the transcription's arguments)
    "mlp": (clipcap.MapperConfig("mlp", 10), dict(prefix_length=10)),
    "transformer": (clipcap.MapperConfig("transformer", 4, clip_length=3, depth=2),
                    dict(prefix_length=4, kind="transformer", clip_length=3, layers=2)),
    "linear": (clipcap.MapperConfig("linear", 2), dict(prefix_length=2, kind="linear")),
}


def reference(kind, seed=0):
    """(torch ClipCaptionModel, our ClipCap for the same shapes) with random weights."""
    gpt = tiny_gpt(seed=seed)
    torch.manual_seed(seed + 1)
    mapper, kwargs = MAPPERS[kind]
    model = ClipCaptionModel(gpt, **kwargs).eval()
    ours = clipcap.ClipCap(mapper, gpt2.GPT2Config.from_hf(gpt.config.to_dict()))
    return model, ours


def saved(model, path):
    torch.save(model.state_dict(), path)
    return str(path)


def assert_same_tree(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)
    assert jax.tree.structure(a) == jax.tree.structure(b)


# ---------------------------------------------------------------------------
# The torch.save reader


def test_reader_matches_torch_load_for_every_dtype_view_and_container(tmp_path):
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6) / 7
    obj = {"f32": base, "t": base.T, "slice": base[1:, 2:5], "row": base[2],
           "f64": torch.randn(3, dtype=torch.float64), "f16": torch.randn(5).half(),
           "bf16": torch.randn(2, 3).bfloat16(), "i64": torch.arange(-3, 3),
           "i32": torch.tensor([7, -8], dtype=torch.int32), "u8": torch.tensor([0, 255],
                                                                           dtype=torch.uint8),
           "bool": torch.tensor([True, False]), "scalar": torch.tensor(2.5),
           "empty": torch.zeros(0, 3), "param": nn.Parameter(torch.randn(2, 2)),
           "nested": collections.OrderedDict(a=[base[0], (1, "x")], b={"c": 3.0})}
    path = str(tmp_path / "all.pt")
    torch.save(obj, path)
    want = torch.load(path, weights_only=True)
    tree = torch_pickle.load_tree(path)
    assert tree["nested"]["a"][1] == (1, "x") and tree["nested"]["b"] == {"c": 3.0}
    assert isinstance(tree["nested"], collections.OrderedDict)
    assert tree["t"].storage == tree["f32"].storage  # one storage, read once
    refs = {k: v for k, v in tree.items() if isinstance(v, torch_pickle.TensorRef)}
    refs["nested.a.0"] = tree["nested"]["a"][0]
    got = torch_pickle.read_arrays(path, refs)
    for key, ref in refs.items():
        t = want["nested"]["a"][0] if key == "nested.a.0" else want[key]
        expect = t.detach().float().numpy() if t.dtype == torch.bfloat16 else t.detach().numpy()
        assert got[key].shape == tuple(t.shape), key
        np.testing.assert_array_equal(np.asarray(got[key], expect.dtype), expect, err_msg=key)
    assert str(got["bf16"].dtype) == "bfloat16" and got["f16"].dtype == np.float16


def test_reader_runs_no_code_from_the_file(tmp_path):
    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = str(tmp_path / "evil.pt")
    torch.save({"w": torch.ones(2), "x": Payload()}, path)
    tree = torch_pickle.load_tree(path)
    assert not marker.exists()
    assert isinstance(tree["x"], torch_pickle.Opaque)
    assert tree["x"].qualified_name.endswith("system")
    with pytest.raises(clipcap_import.OfficialCheckpointError, match="'x'.*not a tensor"):
        clipcap_import.state_dict_of(tree, path)


def test_reader_rejects_files_that_are_not_torch_zip_archives(tmp_path):
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(torch_pickle.TorchFileError, match="not a torch.save zip archive"):
        torch_pickle.load_tree(str(text))
    legacy = str(tmp_path / "legacy.pt")
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(torch_pickle.TorchFileError, match="re-save it"):
        torch_pickle.load_tree(legacy)


# ---------------------------------------------------------------------------
# ClipCaptionModel checkpoints into our ClipCap


@pytest.mark.parametrize("kind", list(MAPPERS))
@pytest.mark.slow
def test_checkpoint_gives_the_torch_models_logits_and_greedy_captions(tmp_path, kind):
    model, ours = reference(kind)
    params = clipcap_import.load_params(saved(model, tmp_path / "clipcap.pt"), ours, DIM)
    rng = np.random.default_rng(0)
    embedding = rng.normal(size=(3, DIM)).astype(np.float32)
    tokens = rng.integers(0, 50, size=(3, 7))
    mask = np.ones((3, 7), np.int32)
    mask[1, 5:] = 0  # a padded caption: compared where it is not padding
    prefix_mask = np.concatenate([np.ones((3, ours.mapper.prefix_length), np.int32), mask], 1)
    with torch.no_grad():
        want = model(torch.tensor(tokens), torch.tensor(embedding),
                     torch.tensor(prefix_mask)).numpy()
        prefix_ref = model.prefix(torch.tensor(embedding))
    got = np.asarray(ours.apply({"params": params}, embedding, tokens, mask))
    valid = prefix_mask.astype(bool)
    np.testing.assert_allclose(got[valid], want[valid], rtol=0, atol=1e-5)
    # Greedy captions: a stop token the reference meets after a few tokens in one row.
    length = 12
    first = generate2(model, prefix_ref[:1], (), length)
    at = next(i for i in range(2, length) if first[i] not in first[:i])
    stop = first[at]
    prefix = ours.apply({"params": params}, embedding, method="prefix")
    np.testing.assert_allclose(prefix, prefix_ref.numpy(), rtol=0, atol=1e-5)
    tokens = np.asarray(decoding.greedy(gpt2.GPT2(ours.gpt), params["gpt"], prompt_embeds=prefix,
                                        max_new_tokens=length, stop_ids=(stop,), pad_id=0))
    for row in range(3):
        want_row = generate2(model, prefix_ref[row:row + 1], (stop,), length)
        assert list(tokens[row, :len(want_row)]) == want_row, row
    assert list(tokens[0, :at + 1]) == first[:at + 1] and (tokens[0, at + 1:] == 0).all()


def c3_lightning(sd):
    """C3's ClipCaptionLightningModel.state_dict(): Decoder as 'model', GPT-2 inside it as
    'model', the mapper as 'clip_project' (image_captioning/src/models/decoder.py)."""
    return collections.OrderedDict(
        ("model." + ("model." + k[len("gpt."):] if k.startswith("gpt.") else k), v)
        for k, v in sd.items())


def test_official_file_layouts_give_the_same_params(tmp_path):
    model, ours = reference("mlp")
    sd = model.state_dict()
    want = clipcap_import.load_params(saved(model, tmp_path / "bare.pt"), ours, DIM)
    assert "gpt.lm_head.weight" in sd  # the tied head, in the file, checked and dropped
    old = collections.OrderedDict(sd)  # older transformers: attention buffers in the state dict
    for i in range(2):
        old[f"gpt.transformer.h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 64, 64))
        old[f"gpt.transformer.h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    lightning = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.0.0",
                 "state_dict": c3_lightning(sd), "loops": {"fit_loop": {"x": 1}},
                 "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0),
                                                     "exp_avg": torch.randn(3)}},
                                       "param_groups": [{"lr": 2e-5, "params": [0]}]}],
                 "callbacks": {"ModelCheckpoint{'monitor': 'val_loss_epoch'}":
                               {"best_model_score": torch.tensor(1.5), "dirpath": "/x"}},
                 "lr_schedulers": [{"last_epoch": 120}],
                 "hyper_parameters": argparse.Namespace(prefix_length=10, lr=2e-5)}
    files = {"old.pt": old, "c3.ckpt": lightning, "wrapped.pth": {"model": sd},
             "dataparallel.pt": collections.OrderedDict(("module." + k, v) for k, v in sd.items())}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
        assert_same_tree(clipcap_import.load_params(str(tmp_path / name), ours, DIM), want)
    st = str(tmp_path / "clipcap.safetensors")  # safetensors keeps one of two shared tensors
    safetensors.torch.save_file({k: v.contiguous() for k, v in sd.items()
                                 if k != "gpt.lm_head.weight"}, st)
    assert_same_tree(clipcap_import.load_params(st, ours, DIM), want)


def break_file(tmp_path, edit):
    model, _ = reference("mlp")
    sd = collections.OrderedDict(model.state_dict())
    edit(sd)
    return saved_dict(sd, tmp_path / "broken.pt")


def saved_dict(obj, path):
    torch.save(obj, path)
    return str(path)


MISMATCHES = {  # case -> (edit of the state dict, our captioner's mapper and dim, message)
    "prefix_length": (lambda sd: None, clipcap.MapperConfig("mlp", 5), DIM,
                      r"'clip_project.model.0.weight' has shape \[320, 16\] but the captioner "
                      r"of this config needs \[160, 16\] \(mlp mapper, prefix_length 5"),
    "embedding width": (lambda sd: None, clipcap.MapperConfig("mlp", 10), 32,
                        r"'clip_project.model.0.weight' has shape \[320, 16\] .* needs "
                        r"\[320, 32\]"),
    "mapper kind": (lambda sd: None, clipcap.MapperConfig("linear", 10), DIM,
                    "unexpected tensor 'clip_project.model.0.weight'"),
    "missing": (lambda sd: sd.pop("gpt.transformer.h.1.mlp.c_fc.bias"),
                clipcap.MapperConfig("mlp", 10), DIM,
                "tensor 'gpt.transformer.h.1.mlp.c_fc.bias' .* is missing"),
    "unexpected": (lambda sd: sd.update({"gpt.transformer.h.2.ln_1.weight": torch.ones(64)}),
                   clipcap.MapperConfig("mlp", 10), DIM,
                   "unexpected tensor 'gpt.transformer.h.2.ln_1.weight'"),
    "no mapper": (lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("clip_project")],
                  clipcap.MapperConfig("mlp", 10), DIM, "has no mapping network"),
}


@pytest.mark.parametrize("case", list(MISMATCHES))
def test_a_file_that_does_not_fit_is_named_by_its_first_mismatched_key_before_any_read(
        tmp_path, monkeypatch, case):
    edit, mapper, dim, message = MISMATCHES[case]
    path = break_file(tmp_path, edit)
    gpt = gpt2.GPT2Config.from_hf(tiny_gpt().config.to_dict())

    def no_read(*args):
        raise AssertionError("a tensor was read before the keys were checked")

    monkeypatch.setattr(torch_pickle, "read_arrays", no_read)
    with pytest.raises(clipcap_import.OfficialCheckpointError, match=message):
        clipcap_import.load_params(path, clipcap.ClipCap(mapper, gpt), dim)


def test_an_untied_head_or_a_whole_pickled_module_is_refused(tmp_path):
    model, ours = reference("mlp")
    sd = collections.OrderedDict(model.state_dict())
    sd["gpt.lm_head.weight"] = sd["gpt.lm_head.weight"].clone() + 1
    with pytest.raises(clipcap_import.OfficialCheckpointError, match="lm_head.weight' differs"):
        clipcap_import.load_params(saved_dict(sd, tmp_path / "untied.pt"), ours, DIM)
    torch.save(model, tmp_path / "module.pt")
    with pytest.raises(clipcap_import.OfficialCheckpointError, match="not a state dict"):
        clipcap_import.load_params(str(tmp_path / "module.pt"), ours, DIM)


# ---------------------------------------------------------------------------
# The evaluation run from an official file (configs/coco_caption.py:official)


def world_checkpoint(world, path, prefix_length=10):
    """A ClipCap (MLP mapper) on the world's GPT-2 config, with GPT-2 weights that differ
    from the world's (the run must take them from the file)."""
    gpt = transformers.GPT2LMHeadModel.from_pretrained(world["gpt2"]).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model = ClipCaptionModel(gpt, prefix_length).eval()
    return model, saved(model, path)


@pytest.mark.slow
def test_official_run_decodes_and_scores_the_torch_models_captions(caption_world, tmp_path):
    model, path = world_checkpoint(caption_world, tmp_path / "capdec.pt")
    config = caption_config(caption_world, "official,c1", eval=dict(official_checkpoint=path))
    results = runner.run(config, str(tmp_path / "run"))
    assert results["official_checkpoint"] == path and "steps" not in results
    assert np.isfinite(results["metrics"]["CIDEr"])
    got = [r["prediction"] for r in
           json.loads((tmp_path / "run" / "captions_test.json").read_text())]
    # CapDec's inference: the normalized image embedding into the mapper; greedy decoding
    # up to max_decode_tokens, stopping at '.' (kept) or EOS (dropped).
    tokenizer = transformers.AutoTokenizer.from_pretrained(caption_world["gpt2"])
    period, eos = tokenizer.convert_tokens_to_ids("."), tokenizer.eos_token_id
    source = builders.data_source(caption_world["dataset"], "test")
    want = []
    for i in range(len(source)):
        e = torch.tensor(np.asarray(source[i]["image_embedding"], np.float32))[None]
        tokens = generate2(model, model.prefix(e / e.norm(dim=-1, keepdim=True)),
                           (period, eos), config.eval.max_decode_tokens)
        want.append(tokenizer.decode([t for t in tokens if t != eos],
                                     skip_special_tokens=True).strip())
    assert got == want and all(got)


@pytest.mark.slow
def test_official_checkpoint_is_for_evaluation_alone(caption_world, tmp_path):
    _, path = world_checkpoint(caption_world, tmp_path / "capdec.pt")
    config = caption_config(caption_world, "official,c1", eval=dict(official_checkpoint=path),
                            captioner=dict(restore_from=str(tmp_path)))
    with pytest.raises(ValueError,
                       match="'eval.official_checkpoint' and 'captioner.restore_from'"):
        caption.check_official(config)


@pytest.mark.slow
def test_official_run_with_a_file_that_does_not_fit_writes_nothing(caption_world, tmp_path):
    _, path = world_checkpoint(caption_world, tmp_path / "p5.pt", prefix_length=5)
    workdir = tmp_path / "run"
    out = cli("--config=configs/coco_caption.py:official,c1", f"--workdir={workdir}",
              f"--config.eval.official_checkpoint={path}",
              f"--config.data.dataset_dir={caption_world['dataset']}",
              f"--config.captioner.gpt2={caption_world['gpt2']}")
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "'clip_project.model.0.weight' has shape [80, 16]" in lines[0]
    assert "prefix_length 10" in lines[0]
    assert not workdir.exists()
