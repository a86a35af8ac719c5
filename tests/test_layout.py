"""The package's layout holds: data/ and models/ import neither train/, experiments/ nor
world/; nothing in the library imports the built-in world (c3_jax/world/) or the config
files (configs/); and no module uses another module's private names (a leading underscore)."""
import ast
import importlib.util
import os
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "c3_jax")
CONFIGS = os.path.join(ROOT, "configs")


def _modules():
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                name = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
                with open(path) as fh:
                    yield name.removesuffix(".__init__"), ast.parse(fh.read(), path)


def _imports(tree) -> dict:
    """{local name: imported module or module.attribute} of every import in ``tree``."""
    out = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                out[a.asname or a.name.split(".")[0]] = a.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            for a in node.names:
                out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def test_data_and_models_import_neither_train_experiments_nor_world():
    bad = []
    for name, tree in _modules():
        if name.startswith(("c3_jax.data", "c3_jax.models")):
            bad += [(name, target) for target in _imports(tree).values()
                    if target.startswith(("c3_jax.train", "c3_jax.experiments", "c3_jax.world"))]
    assert not bad, bad


def test_nothing_outside_the_world_imports_it():
    bad = []
    for name, tree in _modules():
        if name != "c3_jax.world" and not name.startswith("c3_jax.world."):
            bad += [(name, target) for target in _imports(tree).values()
                    if target == "c3_jax.world" or target.startswith("c3_jax.world.")]
    assert not bad, bad


def test_nothing_in_the_package_imports_the_config_files():
    bad = [(name, target) for name, tree in _modules() for target in _imports(tree).values()
           if target == "configs" or target.startswith("configs.")]
    assert not bad, bad


def test_no_private_name_is_used_outside_its_module():
    modules = {name for name, _ in _modules()}
    bad = []
    for name, tree in _modules():
        imports = _imports(tree)
        for target in imports.values():  # from c3_jax.x import _private
            if target.startswith("c3_jax.") and target.rsplit(".", 1)[1].startswith("_") \
                    and target not in modules:
                bad.append((name, target))
        for node in ast.walk(tree):  # module._private
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and imports.get(node.value.id, "").startswith("c3_jax")):
                bad.append((name, f"{imports[node.value.id]}.{node.attr}"))
    assert not bad, bad


def test_config_files_load_from_any_path(tmp_path):
    """Each config file imports the library only (never another config file), so a copy of
    it elsewhere gives the same config."""
    from c3_jax.experiments import EXPERIMENTS
    for name in sorted(f for f in os.listdir(CONFIGS) if f.endswith(".py") and f[0] != "_"):
        with open(os.path.join(CONFIGS, name)) as fh:
            targets = _imports(ast.parse(fh.read())).values()
        assert not [t for t in targets if t.split(".")[0] == "configs"], name
        shutil.copy(os.path.join(CONFIGS, name), tmp_path / name)
        spec = importlib.util.spec_from_file_location(f"copied_{name[:-3]}", tmp_path / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert module.get_config().experiment in EXPERIMENTS, name
