"""The paper's COCO captioning setup: every field of the 'caption' experiment, with its
default. Config files start from it and change what differs."""
import ml_collections

from c3_jax import c3


def get_config(experiment: str = "caption"):
    """The paper's COCO captioning setup; config files adjust it."""
    c = ml_collections.ConfigDict()
    c.experiment = experiment
    # Model: CLIP ViT-B/32 (512-d) -> MLP mapper -> 10-token prefix -> GPT-2 small, fine-tuned.
    c.gpt2, c.gpt2_from_scratch, c.freeze_gpt = "checkpoints/gpt2", False, False
    c.mapper, c.prefix_length, c.clip_length, c.mapper_depth = "mlp", 10, 10, 8
    c.dtype = "float32"
    # Data: a dataset written by c3_jax.embed.extract_coco (Karpathy split, restval in train).
    c.dataset_dir = "data/coco_karpathy_clip/1.0.0"
    c.train_split, c.val_split, c.test_split = "train", "val", "test"
    c.train_field, c.eval_field, c.caption_field = "text_embedding", "image_embedding", "caption"
    c.max_caption_tokens, c.truncate_captions, c.train_fraction = 40, True, 1.0
    # Training: AdamW lr 2e-5, 5000 warmup steps then linear decay, batch 40, 10 epochs.
    c.variant, c.noise_sigma = "c3", c3.CLIP_SIGMA  # variant: any of c3.METHODS
    # The calibrated sigma and c3_aniso's noise model: the residual of the first
    # `calibration_pairs` (eval_field, train_field) pairs of `calibration_split`; the noise
    # keeps its top `noise_rank` directions + a diagonal (0: the full covariance).
    c.calibration_split, c.calibration_pairs, c.noise_rank = "val", 500, 0
    c.sigma_from_calibration = False  # True: noise_sigma is ignored for the calibrated sigma
    # decap: the memory is the first `decap_memory` train_field embeddings of the training
    # split (0: all of them), projected onto at softmax temperature `decap_temperature`.
    c.decap_temperature, c.decap_memory = c3.DECAP_TEMPERATURE, 0
    c.batch_size, c.num_epochs, c.max_steps = 40, 10, 0
    c.lr, c.warmup_steps, c.weight_decay, c.grad_accum = 2e-5, 5000, 0.01, 1
    # 'warmup_linear_decay' (ClipCap's scheduler) or 'constant' (no scheduler).
    c.lr_schedule = "warmup_linear_decay"
    # True: warmup_steps * train_fraction warmup updates (the official stage-2 run.py).
    c.warmup_scales_with_fraction = False
    # False: no normalization after mean removal and noise (the official stage 2).
    c.renormalize = True
    c.fsdp, c.seed = 1, 0
    c.log_every, c.checkpoint_every, c.keep_checkpoints, c.val_batches = 100, 5000, 2, 50
    # best/ keeps the checkpoint of the lowest 'val_loss' (val_batches batches) or of the
    # highest 'val_rouge_l' (captions of the first val_decode_examples val rows).
    c.best_by, c.val_decode_examples = "val_loss", 1000
    c.init_from, c.restore_from = "", ""
    # Evaluation only, of an official ClipCap / CapDec / C3 captioner: its state-dict file
    # (.pt / .pth / .ckpt / .safetensors; c3_jax.models.clipcap_import); '': train one.
    c.official_checkpoint = ""
    c.skip_nonfinite = False  # True: a step with NaN/Inf loss or gradients is skipped
    # LM head over caption positions: all at once (0), or this many positions at a time,
    # recomputed in the backward pass (the [B, L, vocab] logits never exist whole).
    c.loss_chunk = 0
    # Evaluation: greedy decoding up to 67 tokens, stopping at EOS or '.', like the reference.
    c.decode, c.beam_size, c.max_decode_tokens, c.stop_at_period = "greedy", 5, 67, True
    c.eval_batch_size, c.eval_max_examples, c.spice = 256, 0, True
    c.meteor = True  # False: no METEOR (its JVM needs 2 GB and ~5 s to load its tables)
    if experiment == "caption_sweep":  # variants x sigmas x seeds trained as one program
        c.variants = "c1,c2_collapse,c2_corrupt,c3"  # 'supervised': c1 on eval_field
        c.sigmas = ""  # comma-separated noise sigmas of the noisy variants; '': noise_sigma
        c.seeds = 3  # seeds seed, seed + 1, ...
    if experiment == "caption_gap_sensitivity":
        c.variant = "c1"
        c.shift_norms = "0,0.2,0.4,0.6,0.8,1.0,1.5,2.0"  # Table 6
        c.shift_gamma = 0.99
    return c
