"""The `t5pegasus` command: help, version, and user errors as one line with a non-zero exit."""

import subprocess
import sys

import t5pegasus


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "t5pegasus", *args], capture_output=True, text=True, timeout=300)


def test_version_and_help():
    r = run_cli("--version")
    assert r.returncode == 0 and t5pegasus.__version__ in r.stdout
    r = run_cli("--help")
    assert r.returncode == 0 and "pretrain" in r.stdout


def test_unknown_subcommand_is_an_error():
    r = run_cli("frobnicate")
    assert r.returncode != 0 and "invalid choice" in r.stderr and "Traceback" not in r.stderr


# The layers of t5pegasus, lowest first, by top-level name under t5pegasus/ (a package, or a module of the
# shared layer). A module may import its own package, the shared layer, and any package of a lower layer; never
# one of its own layer (they sit beside each other) or of a higher one. Derived from the imports as they are:
# text (tokenizers) and attention need nothing else; pretrain (corpora, examples, the dataset builder and
# loader) sits on text; training (mesh, optimiser, loop) reads pretrain's datasets; convert reads training runs;
# finetune drives training, decoding and convert; cli sits on everything.
LAYERS: list[set[str]] = [
    # shared: may import each other
    {"__init__", "config", "families", "errors", "fileio", "host_memory", "xla_options"},
    {"attention", "text"},
    {"models", "pretrain"},
    {"decoding", "training"},
    {"convert"},
    {"finetune"},
    {"cli"},
    {"__main__"},
]
# Existing imports against that order, each to be removed (report a new one, do not add it here):
ALLOWED_VIOLATIONS: set[tuple[str, str]] = set()


def _t5pegasus_imports(path, package_dir):
    """Every `t5pegasus.*` module `path` imports, at module level or inside functions."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "t5pegasus")
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            if node.module == "t5pegasus":  # `from t5pegasus import fileio` names a module; `__version__` not
                for a in node.names:
                    is_module = (package_dir / a.name).is_dir() or (package_dir / f"{a.name}.py").is_file()
                    found.add(f"t5pegasus.{a.name}" if is_module else "t5pegasus")
            elif node.module and node.module.split(".")[0] == "t5pegasus":
                found.add(node.module)
    return found


def test_no_module_imports_a_higher_layer():
    from pathlib import Path

    package_dir = Path(t5pegasus.__file__).parent
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    top = lambda dotted: (dotted.split(".") + ["__init__"])[1]  # t5pegasus.text.load -> text; t5pegasus -> __init__
    bad, seen = [], set()
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(package_dir.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)
        own = parts[1]
        assert own in rank, f"{module}: t5pegasus/{own} is in no layer of LAYERS; place it"
        for imported in sorted(_t5pegasus_imports(path, package_dir)):
            other = top(imported)
            assert other in rank, f"{module} imports {imported}, which is in no layer of LAYERS"
            if other == own or (rank[other] == rank[own] == 0):
                continue
            if rank[other] >= rank[own]:
                if (module, imported) in ALLOWED_VIOLATIONS:
                    seen.add((module, imported))
                    continue
                bad.append(f"{module} (layer {rank[own]}: {own}) imports {imported} (layer {rank[other]}: {other})")
    assert not bad, "imports against the layer order:\n" + "\n".join(bad)
    assert seen == ALLOWED_VIOLATIONS, f"allowed violations that are gone (drop them): {ALLOWED_VIOLATIONS - seen}"


def test_help_imports_no_heavy_library():
    code = ("import sys; from t5pegasus.cli import build_parser; build_parser().format_help(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'torch', 'tensorflow', 'flax', "
            "'transformers'}))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
