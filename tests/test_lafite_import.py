"""LAFITE's network pickles into our Flax StyleGAN2: a torch transcription of drboog/Lafite
``training/networks.py`` (structure-2 synthesis layers, skip generator, resnet
discriminator with the feature head), written here at a tiny size with random weights and
pickled as LAFITE pickles them (``torch_utils.persistence`` objects), is read without torch
and draws the same images (and discriminator outputs) for the same inputs and noise."""
import pickle
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from c3_jax.models import lafite_import
from c3_jax.train import gan_sweep, generation
from c3_jax.workdir import Workdir
from conftest import t2i_config
from c3_jax.models import stylegan2 as sg

# LAFITE hard-codes 512 as the width of its condition layers (pre_1) and f_dim = 512; the
# transcription takes them as arguments so that it runs at a tiny size.
HIDDEN, F_DIM, W_DIM, Z_DIM, RES = 8, 16, 8, 8, 8  # conftest's t2i_config sizes
CFG = sg.GANConfig(resolution=RES, cond_dim=F_DIM, z_dim=Z_DIM, w_dim=W_DIM, mapping_layers=2,
                   cond_hidden=HIDDEN, channel_base=64, channel_max=8, conv_clamp=256.0)
SQRT2 = np.sqrt(2.0)


# ---------------------------------------------------------------------------
# torch_utils.persistence, as far as pickling goes


def _reconstruct_persistent_obj(meta):  # never called here: only its name is pickled
    raise AssertionError


persistence = types.ModuleType("torch_utils.persistence")
persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
sys.modules["torch_utils.persistence"] = persistence


class Persistent(torch.nn.Module):
    """persistence.persistent_class's __reduce__: the class name and module state."""

    def __reduce__(self):
        meta = dict(type="class", version=6, module_src="# networks.py source",
                    class_name=type(self).__name__, state=self.__getstate__())
        return (_reconstruct_persistent_obj, (meta,))


# ---------------------------------------------------------------------------
# torch_utils.ops (reference paths) and training/networks.py


def setup_filter():
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = f.ger(f)
    return f / f.sum()


def upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), gain=1):
    """upfirdn2d._upfirdn2d_ref."""
    b, c, h, w = x.shape
    px0, px1, py0, py1 = padding
    x = x.reshape([b, c, h, 1, w, 1])
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
    x = x.reshape([b, c, h * up, w * up])
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    f = (f * (gain ** (f.ndim / 2))).flip([0, 1])
    f = f[None, None].repeat([c, 1, 1, 1])
    x = F.conv2d(x, f, groups=c)
    return x[:, :, ::down, ::down]


def conv2d_wrapper(x, w, stride=1, padding=0, groups=1, transpose=False, flip_weight=True):
    if not flip_weight:
        w = w.flip([2, 3])
    op = F.conv_transpose2d if transpose else F.conv2d
    return op(x, w, stride=stride, padding=padding, groups=groups)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, groups=1, flip_weight=True):
    out_ch, in_ch, kh, kw = w.shape
    fw = fh = 4 if f is not None else 1
    px0 = px1 = py0 = py1 = padding
    if up > 1:
        px0 += (fw + up - 1) // 2
        px1 += (fw - up) // 2
        py0 += (fh + up - 1) // 2
        py1 += (fh - up) // 2
    if down > 1:
        px0 += (fw - down + 1) // 2
        px1 += (fw - down) // 2
        py0 += (fh - down + 1) // 2
        py1 += (fh - down) // 2
    if kw == 1 and kh == 1 and (down > 1 and up == 1):
        x = upfirdn2d(x, f, down=down, padding=[px0, px1, py0, py1])
        return conv2d_wrapper(x, w, groups=groups, flip_weight=flip_weight)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=[px0, px1, py0, py1])
        return conv2d_wrapper(x, w, stride=down, groups=groups, flip_weight=flip_weight)
    if up > 1:
        if groups == 1:
            w = w.transpose(0, 1)
        else:
            w = w.reshape(groups, out_ch // groups, in_ch, kh, kw).transpose(1, 2)
            w = w.reshape(groups * in_ch, out_ch // groups, kh, kw)
        px0 -= kw - 1
        px1 -= kw - up
        py0 -= kh - 1
        py1 -= kh - up
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = conv2d_wrapper(x, w, stride=up, padding=[pyt, pxt], groups=groups, transpose=True,
                           flip_weight=not flip_weight)
        return upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up ** 2)
    assert px0 == px1 == py0 == py1 >= 0
    return conv2d_wrapper(x, w, padding=[py0, px0], groups=groups, flip_weight=flip_weight)


def bias_act(x, b=None, act="linear", gain=None, clamp=None):
    """bias_act._bias_act_ref (linear / lrelu 0.2 with default gain 1 / sqrt(2))."""
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.ndim - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    gain = (SQRT2 if act == "lrelu" else 1.0) if gain is None else gain
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True):
    """The fused path (one grouped convolution), as in evaluation."""
    b = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    w = weight.unsqueeze(0) * styles.reshape(b, 1, -1, 1, 1)
    if demodulate:
        w = w * (w.square().sum(dim=[2, 3, 4]) + 1e-8).rsqrt().reshape(b, -1, 1, 1, 1)
    x = x.reshape(1, -1, *x.shape[2:])
    w = w.reshape(-1, in_ch, kh, kw)
    x = conv2d_resample(x, w, f=resample_filter, up=up, padding=padding, groups=b,
                        flip_weight=flip_weight)
    x = x.reshape(b, -1, *x.shape[2:])
    return x + noise if noise is not None else x


class FullyConnectedLayer(Persistent):
    def __init__(self, in_features, out_features, bias=True, activation="linear",
                 lr_multiplier=1, bias_init=0):
        super().__init__()
        self.activation = activation
        self.weight = torch.nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = torch.nn.Parameter(torch.full([out_features], np.float32(bias_init))
                                       + 0.1 * torch.randn([out_features])) if bias else None
        self.weight_gain = lr_multiplier / np.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x):
        w = self.weight * self.weight_gain
        b = self.bias * self.bias_gain if self.bias is not None else None
        if self.activation == "linear" and b is not None:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return bias_act(x.matmul(w.t()), b, act=self.activation)


class Conv2dLayer(Persistent):
    def __init__(self, in_channels, out_channels, kernel_size, bias=True, activation="linear",
                 up=1, down=1, conv_clamp=None):
        super().__init__()
        self.activation, self.up, self.down, self.conv_clamp = activation, up, down, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = kernel_size // 2
        self.weight_gain = 1 / np.sqrt(in_channels * kernel_size ** 2)
        self.act_gain = SQRT2 if activation == "lrelu" else 1.0
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, kernel_size,
                                                      kernel_size]))
        self.bias = torch.nn.Parameter(0.1 * torch.randn([out_channels])) if bias else None

    def forward(self, x, gain=1):
        w = self.weight * self.weight_gain
        x = conv2d_resample(x, w, f=self.resample_filter, up=self.up, down=self.down,
                            padding=self.padding, flip_weight=(self.up == 1))
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class MappingNetwork(Persistent):
    def __init__(self, z_dim, w_dim, num_ws, num_layers, lr_multiplier=0.01):
        super().__init__()
        self.num_ws, self.num_layers = num_ws, num_layers
        for idx in range(num_layers):
            setattr(self, f"fc{idx}", FullyConnectedLayer(z_dim if idx == 0 else w_dim, w_dim,
                                                          activation="lrelu",
                                                          lr_multiplier=lr_multiplier))
        self.register_buffer("w_avg", torch.zeros([w_dim]))

    def forward(self, z):
        x = normalize_2nd_moment(z)
        for idx in range(self.num_layers):
            x = getattr(self, f"fc{idx}")(x)
        return x.unsqueeze(1).repeat([1, self.num_ws, 1])


class StyleMixin:
    def make_style(self, w_dim, in_channels, f_dim):
        _f_dim = (f_dim + HIDDEN) // 2
        self.pre_0 = FullyConnectedLayer(f_dim, _f_dim, activation="lrelu", lr_multiplier=0.01)
        self.pre_1 = FullyConnectedLayer(_f_dim, HIDDEN, activation="lrelu", lr_multiplier=0.01)
        self.affine_0 = FullyConnectedLayer(w_dim + HIDDEN, in_channels, bias_init=1)

    def style(self, w, fts):
        return self.affine_0(torch.cat([self.pre_1(self.pre_0(fts)), w], dim=-1))


class SynthesisLayer(Persistent, StyleMixin):
    """structure = 2."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, up=1, conv_clamp=None,
                 f_dim=F_DIM):
        super().__init__()
        self.resolution, self.up, self.conv_clamp = resolution, up, conv_clamp
        self.register_buffer("resample_filter", setup_filter())
        self.padding = 1
        self.make_style(w_dim, in_channels, f_dim)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 3, 3]))
        self.register_buffer("noise_const", torch.randn([resolution, resolution]))
        self.noise_strength = torch.nn.Parameter(torch.randn([]))
        self.bias = torch.nn.Parameter(0.1 * torch.randn([out_channels]))

    def forward(self, x, w, fts, noise):
        styles = self.style(w, fts)
        noise = noise * self.noise_strength if noise is not None else None
        x = modulated_conv2d(x, self.weight, styles, noise=noise, up=self.up,
                             padding=self.padding, resample_filter=self.resample_filter,
                             flip_weight=(self.up == 1))
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(Persistent, StyleMixin):
    def __init__(self, in_channels, out_channels, w_dim, conv_clamp=None, f_dim=F_DIM):
        super().__init__()
        self.conv_clamp = conv_clamp
        self.make_style(w_dim, in_channels, f_dim)
        self.weight = torch.nn.Parameter(torch.randn([out_channels, in_channels, 1, 1]))
        self.bias = torch.nn.Parameter(0.1 * torch.randn([out_channels]))
        self.weight_gain = 1 / np.sqrt(in_channels)

    def forward(self, x, w, fts):
        styles = self.style(w, fts) * self.weight_gain
        x = modulated_conv2d(x, self.weight, styles, demodulate=False)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(Persistent):
    """architecture 'skip'."""

    def __init__(self, in_channels, out_channels, w_dim, resolution, conv_clamp):
        super().__init__()
        self.in_channels, self.resolution = in_channels, resolution
        self.register_buffer("resample_filter", setup_filter())
        self.num_conv, self.num_torgb = 0, 1
        if in_channels == 0:
            self.const = torch.nn.Parameter(torch.randn([out_channels, resolution, resolution]))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, resolution, up=2,
                                        conv_clamp=conv_clamp)
            self.num_conv += 1
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution,
                                    conv_clamp=conv_clamp)
        self.num_conv += 1
        self.torgb = ToRGBLayer(out_channels, 3, w_dim, conv_clamp=conv_clamp)

    def forward(self, x, img, ws, fts, noises):
        w_iter = iter(ws.unbind(dim=1))
        if self.in_channels == 0:
            x = self.const.unsqueeze(0).repeat([ws.shape[0], 1, 1, 1])
            x = self.conv1(x, next(w_iter), fts, noises.pop(0))
        else:
            x = self.conv0(x, next(w_iter), fts, noises.pop(0))
            x = self.conv1(x, next(w_iter), fts, noises.pop(0))
        if img is not None:
            img = upfirdn2d(img, self.resample_filter, up=2, padding=[2, 1, 2, 1], gain=4)
        y = self.torgb(x, next(w_iter), fts)
        return x, (img + y if img is not None else y)


class SynthesisNetwork(Persistent):
    def __init__(self, w_dim, img_resolution, channel_base, channel_max, conv_clamp):
        super().__init__()
        self.block_resolutions = [2 ** i for i in range(2, int(np.log2(img_resolution)) + 1)]
        ch = {res: min(channel_base // res, channel_max) for res in self.block_resolutions}
        self.num_ws = 0
        for res in self.block_resolutions:
            block = SynthesisBlock(ch[res // 2] if res > 4 else 0, ch[res], w_dim, res,
                                   conv_clamp)
            self.num_ws += block.num_conv
            setattr(self, f"b{res}", block)
        self.num_ws += 1

    def forward(self, ws, fts, noises):
        noises = list(noises)
        x = img = None
        w_idx = 0
        for res in self.block_resolutions:
            block = getattr(self, f"b{res}")
            cur = ws.narrow(1, w_idx, block.num_conv + block.num_torgb)
            w_idx += block.num_conv
            x, img = block(x, img, cur, fts, noises)
        return img


class Generator(Persistent):
    def __init__(self):
        super().__init__()
        self.synthesis = SynthesisNetwork(W_DIM, RES, CFG.channel_base, CFG.channel_max, 256)
        self.mapping = MappingNetwork(Z_DIM, W_DIM, self.synthesis.num_ws, CFG.mapping_layers)

    def forward(self, z, fts, noises):
        return self.synthesis(self.mapping(z), fts, noises)


class DiscriminatorBlock(Persistent):
    """architecture 'resnet'."""

    def __init__(self, in_channels, tmp_channels, out_channels, conv_clamp):
        super().__init__()
        self.in_channels = in_channels
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(3, tmp_channels, 1, activation="lrelu",
                                       conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, activation="lrelu",
                                 conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, activation="lrelu", down=2,
                                 conv_clamp=conv_clamp)
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2)

    def forward(self, x, img):
        if self.in_channels == 0:
            x = self.fromrgb(img)
        y = self.skip(x, gain=np.sqrt(0.5))
        x = self.conv0(x)
        x = self.conv1(x, gain=np.sqrt(0.5))
        return y + x


class MinibatchStdLayer(Persistent):
    def __init__(self, group_size):
        super().__init__()
        self.group_size = group_size

    def forward(self, x):
        n, c, h, w = x.shape
        g = min(self.group_size, n)
        y = x.reshape(g, -1, 1, c, h, w)
        y = y - y.mean(dim=0)
        y = y.square().mean(dim=0)
        y = (y + 1e-8).sqrt()
        y = y.mean(dim=[2, 3, 4])
        y = y.reshape(-1, 1, 1, 1)
        y = y.repeat(g, 1, h, w)
        return torch.cat([x, y], dim=1)


class DiscriminatorEpilogue(Persistent):
    def __init__(self, in_channels, conv_clamp, f_dim=F_DIM):
        super().__init__()
        self.mbstd = MinibatchStdLayer(4)
        self.conv = Conv2dLayer(in_channels + 1, in_channels, 3, activation="lrelu",
                                conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(in_channels * 16, in_channels, activation="lrelu")
        self.fts = FullyConnectedLayer(in_channels, f_dim)
        self.out = FullyConnectedLayer(in_channels, 1)

    def forward(self, x, fts):
        x = self.conv(self.mbstd(x))
        fc = self.fc(x.flatten(1))
        x = self.out(fc)
        d_fts = self.fts(fc)  # use_norm False
        return x + (d_fts * fts).sum(), d_fts


class Discriminator(Persistent):
    def __init__(self):
        super().__init__()
        self.block_resolutions = [2 ** i for i in range(int(np.log2(RES)), 2, -1)]
        ch = {res: min(CFG.channel_base // res, CFG.channel_max)
              for res in self.block_resolutions + [4]}
        for res in self.block_resolutions:
            setattr(self, f"b{res}", DiscriminatorBlock(ch[res] if res < RES else 0, ch[res],
                                                        ch[res // 2], 256))
        self.b4 = DiscriminatorEpilogue(ch[4], 256)

    def forward(self, img, fts):
        x = None
        for res in self.block_resolutions:
            x = getattr(self, f"b{res}")(x, img)
        return self.b4(x, fts)


# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lafite_file(tmp_path_factory):
    torch.manual_seed(0)
    nets = {"G": Generator().eval(), "D": Discriminator().eval(), "G_ema": Generator().eval()}
    path = tmp_path_factory.mktemp("lafite") / "network-snapshot.pkl"
    with open(path, "wb") as f:
        pickle.dump({**nets, "augment_pipe": None, "training_set_kwargs": {"resolution": RES}},
                    f)
    return path, nets


def _nchw(x):
    return torch.tensor(np.asarray(x)).permute(0, 3, 1, 2)


@pytest.mark.slow
def test_a_lafite_pickle_draws_the_same_images_and_d_outputs(lafite_file):
    path, nets = lafite_file
    params = lafite_import.load(str(path), CFG)
    rng = np.random.default_rng(0)
    b = 4
    z = rng.normal(size=(b, Z_DIM)).astype(np.float32)
    cond = rng.normal(size=(b, F_DIM)).astype(np.float32)
    key = jax.random.key(5)
    for name in ("G", "G_ema"):
        ours = np.asarray(sg.Generator(CFG).apply({"params": params[name]}, jnp.asarray(z),
                                                  jnp.asarray(cond), key))
        noises = [_nchw(sg.layer_noise(key, i, b, res))
                  for i, res in enumerate([4] + [r for r in CFG.resolutions for _ in (0, 1)])]
        with torch.no_grad():
            want = nets[name](torch.tensor(z), torch.tensor(cond), noises)
        np.testing.assert_allclose(ours.transpose(0, 3, 1, 2), want.numpy(), rtol=1e-4,
                                   atol=1e-4)
    img = rng.uniform(-1, 1, size=(b, RES, RES, 3)).astype(np.float32)
    logits, feats = sg.Discriminator(CFG).apply({"params": params["D"]}, jnp.asarray(img),
                                                jnp.asarray(cond))
    with torch.no_grad():
        want_logits, want_feats = nets["D"](_nchw(img), torch.tensor(cond))
    np.testing.assert_allclose(np.asarray(feats), want_feats.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(logits), want_logits[:, 0].numpy(), rtol=1e-4,
                               atol=1e-4)


def test_read_pickle_names_networks_and_flat_keys_without_torch_classes(lafite_file):
    path, nets = lafite_file
    flat = lafite_import.read_pickle(str(path))
    assert sorted(flat) == ["D", "G", "G_ema"]
    want = {k: v.numpy() for k, v in nets["D"].state_dict().items()}
    assert sorted(flat["D"]) == sorted(want)
    for k in want:
        np.testing.assert_array_equal(flat["D"][k], want[k])
    assert "synthesis.b8.conv0.affine_0.weight" in flat["G"]


def test_bad_files_get_one_error_naming_the_first_mismatched_key(lafite_file, tmp_path):
    path, _ = lafite_file
    wrong = sg.GANConfig(**{**CFG.__dict__, "w_dim": 16})
    with pytest.raises(ValueError, match=r"generator G_ema's 'mapping\.fc0\.bias' has shape"):
        lafite_import.load(str(path), wrong)
    flat = lafite_import.read_pickle(str(path))
    del flat["G_ema"]["synthesis.b8.torgb.bias"]
    with pytest.raises(ValueError, match=r"no 'synthesis\.b8\.torgb\.bias'"):
        lafite_import.generator_params(flat["G_ema"], CFG)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match="not a LAFITE network pickle"):
        lafite_import.read_pickle(str(junk))


@pytest.mark.slow
def test_init_from_starts_a_run_from_the_pickle_and_checks_it_first(lafite_file, t2i_world,
                                                                     tmp_path):
    path, _ = lafite_file
    config = t2i_config(t2i_world, generator=dict(init_from=str(path)))
    generation.check_init_from(config)
    sweep = gan_sweep.GanSweep(config, [gan_sweep.config_member(config)],
                               Workdir(str(tmp_path / "run")))
    state = jax.tree.map(lambda a: np.asarray(a)[0],
                         sweep.initial_state(sweep.abstract_state()[1]))
    want = lafite_import.load(str(path), CFG)
    for ours, theirs in ((state.g_params, want["G"]), (state.ema, want["G_ema"]),
                         (state.d_params, want["D"])):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
            np.testing.assert_array_equal(a, np.asarray(b))
    assert generation.StepConfig.from_config(config).ema_rampup == 0.0
    with pytest.raises(ValueError, match=r"'mapping\.fc0\.bias' has shape"):
        generation.check_init_from(t2i_config(t2i_world,
                                              generator=dict(init_from=str(path), w_dim=16)))
