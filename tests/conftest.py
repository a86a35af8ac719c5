import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Eight host devices so tests can run sharded jitted steps on CPU.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the whole session, the test processes and the
# subprocesses they start (the same programs compile once): about 3x on the end-to-end
# tests. Its keys hold the program, the devices and the JAX version, so a stale entry is
# never used; C3_TEST_COMPILATION_CACHE= (empty) turns it off.
_CACHE = os.environ.get("C3_TEST_COMPILATION_CACHE", os.path.join(ROOT, ".cache", "jax"))
if _CACHE:
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
