"""Experiments: one module per experiment, each with ``default_config`` (every field it takes,
with its default; config files start from it), ``FIELDS[name]`` (those fields' types) and a
run function ``fn(config, workdir)``.

``EXPERIMENTS`` maps an experiment name (a config's ``experiment`` field) to
"module:function"; the module is imported only when its experiment runs."""

EXPERIMENTS = {
    "geometry_synthetic": "c3_jax.experiments.geometry_runs:run_synthetic",
    "geometry_mlp_collapse": "c3_jax.experiments.geometry_runs:run_mlp_collapse",
    "geometry_embeddings": "c3_jax.experiments.geometry_runs:run_embeddings",
    "embeddings_dataset": "c3_jax.experiments.datasets:run_embeddings_dataset",
    "coco_extract": "c3_jax.experiments.datasets:run_coco_extract",
    "coco_dryrun": "c3_jax.experiments.dryrun:run_coco_dryrun",
    "caption": "c3_jax.experiments.caption:run_caption",
    "caption_gap_sensitivity": "c3_jax.experiments.caption:run_gap_sensitivity",
    "caption_sweep": "c3_jax.experiments.caption:run_caption_sweep",
    "t2i": "c3_jax.experiments.t2i:run_t2i",
    "shapes_caption": "c3_jax.world.caption:run_shapes_caption",
    "shapes_t2i": "c3_jax.world.t2i:run_shapes_t2i",
    "shapes_connect_study": "c3_jax.world.connect_study:run_connect_study",
    "shapes_sigma_sweep": "c3_jax.world.sigma_sweep:run_shapes_sigma_sweep",
}
# Trainers that resume from the checkpoints in their workdir (a rerun must be of the same
# config) and composite runs whose cached stages decide what a changed config reuses.
RESUMABLE = {"caption", "caption_gap_sensitivity", "caption_sweep", "t2i"}
# Experiments that were renamed (old name -> new): a config with the old name is refused
# with one line naming the new one.
RENAMED = {"generate": "t2i"}
STAGED = {"coco_dryrun", "shapes_caption", "shapes_t2i", "shapes_connect_study",
          "shapes_sigma_sweep"}
