from setuptools import find_packages, setup

setup(
    name="c3-jax",
    version="0.1.0",
    description="Connect, Collapse, Corrupt (ICLR 2024) in JAX/Flax: cross-modal tasks from "
                "uni-modal data, and the geometry of contrastive spaces.",
    packages=find_packages(include=["c3_jax", "c3_jax.*", "configs"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.4.35",
        "flax",
        "optax",
        "ml_collections",
        "absl-py",
        "numpy",
        "matplotlib",
        "tqdm",
        "safetensors",
        "pillow",
        "tensorflow-datasets",  # array_record datasets, read without TensorFlow
        "grain",
        "array_record",
        "orbax-checkpoint",
        "transformers>=5",  # tokenizers only (AutoTokenizer from a local directory)
        "tokenizers",
        "pycocoevalcap>=1.2",  # caption metrics; needs a Java runtime
        "tensorboardX",  # TensorBoard event files without TensorFlow
    ],
    # torch (with transformers' models) is the independent reference the tests compare against.
    # Pin torch: this workplace serves a local CPU build of exactly 2.13.0.
    extras_require={"test": ["pytest", "pytest-xdist", "filelock", "scipy", "torch==2.13.0"]},
)
