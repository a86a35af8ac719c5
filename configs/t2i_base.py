"""The paper's COCO text-to-image setup: every field of the 'generate' experiment, with its
default. Config files start from it and change what differs."""
import ml_collections

from c3_jax import c3


def get_config():
    """The paper's COCO text-to-image setup (Appendix F); config files adjust it."""
    c = ml_collections.ConfigDict()
    c.experiment = "generate"
    # Frozen CLIP ViT-B/32 (Hugging Face directory) for LAFITE's itc term and CLIP-space FD.
    c.clip = "checkpoints/clip-vit-base-patch32"
    c.z_dim, c.w_dim, c.mapping_layers, c.cond_hidden = 512, 512, 8, 512
    c.channel_base, c.channel_max, c.mbstd_group = 32768, 512, 4
    c.architecture = "skip"  # the generator's RGB output: "skip" (StyleGAN2's) or "orig"
    # Data: rows with an image, its CLIP image embedding and its captions' text embeddings.
    c.dataset_dir = "data/coco_lafite_clip/1.0.0"
    c.train_split, c.test_split = "train", "test"
    c.image_field, c.train_field, c.eval_field = "image", "image_embedding", "text_embedding"
    c.caption_field = "caption"
    # Training: batch 16, Adam lr 2.5e-3, betas (0, 0.99), R1 gamma 10 every 16 steps,
    # contrastive terms at temperature 0.5, EMA over 10k images.
    c.variant, c.noise_sigma = "c3", c3.CLIP_SIGMA
    # variant: any of c3.METHODS but decap. The calibrated sigma and c3_aniso's noise model:
    # the residual of the first `calibration_pairs` (image, first caption) pairs of
    # `calibration_split`, its top `noise_rank` directions (0: all).
    c.calibration_split, c.calibration_pairs, c.noise_rank = "train", 500, 0
    c.sigma_from_calibration = False  # True: noise_sigma is ignored for the calibrated sigma
    c.batch_size, c.max_steps = 16, 750_000
    c.lr, c.beta1, c.beta2 = 2.5e-3, 0.0, 0.99
    c.r1_gamma, c.r1_every = 10.0, 16
    c.itd_weight, c.itc_weight, c.temperature = 10.0, 10.0, 0.5
    c.ema_kimg, c.ema_rampup = 10.0, 0.0
    c.fsdp, c.seed = 1, 0
    c.log_every, c.checkpoint_every, c.keep_checkpoints = 100, 5000, 2
    c.restore_from = ""
    c.skip_nonfinite = False  # True: a step with NaN/Inf losses or gradients is skipped
    # Evaluation: 30k samples from test captions; FID/IS when the Inception file is given.
    c.eval_max_examples, c.eval_batch_size = 30_000, 250
    c.inception_weights, c.num_samples = "", 16
    return c
