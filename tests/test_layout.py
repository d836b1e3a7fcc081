"""The package layout's rules, read from the source: stages import only downward, and no module
reaches into another facekp module's private names."""
import ast
import os


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "facekp")
# What each stage may import of facekp (itself always); data's face finding is open to eval and
# serve, which crop faces as the dataset was cropped and score the teacher.
FACE_FINDING = ("facekp.data.faces", "facekp.data.align", "facekp.data.face_mesh",
                "facekp.data.mediapipe_internals")
ALLOWED = {
    "core": ("facekp.core",),
    "data": ("facekp.core",),
    "input": ("facekp.core",),
    "models": ("facekp.core",),
    "train": ("facekp.core", "facekp.input", "facekp.models"),
    "eval": ("facekp.core", "facekp.input", "facekp.models") + FACE_FINDING,
    "serve": ("facekp.core", "facekp.input", "facekp.models") + FACE_FINDING,
    "configs": ("facekp.core", "facekp.train"),  # experiment configs start from the defaults
}


def modules():
  for folder, _, names in os.walk(PACKAGE):
    for name in sorted(names):
      if name.endswith(".py"):
        yield os.path.join(folder, name)


def imported_modules(path):
  """(line, dotted module) of every facekp import in a file, `from facekp.x import y` as
  facekp.x.y when y is a module."""
  tree = ast.parse(open(path, encoding="utf-8").read(), path)
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        candidate = f"{node.module}.{alias.name}"
        is_module = (os.path.isfile(os.path.join(ROOT, *candidate.split(".")) + ".py")
                     or os.path.isdir(os.path.join(ROOT, *candidate.split("."))))
        yield node.lineno, candidate if is_module else node.module


def stage_of(path):
  parts = os.path.relpath(path, PACKAGE).split(os.sep)
  return parts[0] if len(parts) > 1 else None


def layering_violations():
  found = []
  for path in modules():
    stage = stage_of(path)
    if stage is None:  # facekp/__init__.py, facekp/main.py: the top, may import any stage
      continue
    allowed = tuple(dict.fromkeys(ALLOWED[stage] + (f"facekp.{stage}",)))  # core: once
    for line, module in imported_modules(path):
      if module in ("tools", "configs") or module.startswith(("tools.", "configs.")):
        found.append(f"{os.path.relpath(path, ROOT)}:{line}: imports {module} (facekp never "
                     "imports tools/, which the wheel does not install; configs are facekp.configs)")
      elif module.startswith("facekp.") and not module.startswith(allowed):
        found.append(f"{os.path.relpath(path, ROOT)}:{line}: {stage} imports {module}; "
                     f"{stage} may import only {', '.join(allowed)}")
  return found


def private_name_uses(paths):
  """`from facekp.x import _y` and `alias._y` where alias is an imported facekp module."""
  found = []
  for path in paths:
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    facekp_aliases = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("facekp"):
        for alias in node.names:
          if alias.name.startswith("_"):
            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: imports {alias.name} "
                         f"from {node.module}")
          facekp_aliases.add(alias.asname or alias.name)
      elif isinstance(node, ast.Import):
        for alias in node.names:
          if alias.name.startswith("facekp"):
            facekp_aliases.add((alias.asname or alias.name).split(".")[0])
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
          and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
          and node.value.id in facekp_aliases):
        found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}: uses {node.value.id}."
                     f"{node.attr}")
  return found


def test_stages_import_only_downward():
  assert layering_violations() == []


def test_no_private_names_across_modules():
  code = [os.path.join(folder, name) for top in ("facekp", "tools", "tests")
          for folder, _, names in os.walk(os.path.join(ROOT, top)) for name in names
          if name.endswith(".py")]
  assert private_name_uses(code) == []


def test_the_layout_test_catches_a_forbidden_import(tmp_path, monkeypatch):
  """A core module that imports the train stage is reported with its file and line."""
  fake = tmp_path / "facekp"
  (fake / "core").mkdir(parents=True)
  (fake / "train").mkdir()
  (fake / "train" / "loop.py").write_text("")
  (fake / "core" / "bad.py").write_text("import os\nfrom facekp.train import loop\n")
  monkeypatch.setattr(__import__(__name__), "ROOT", str(tmp_path))
  monkeypatch.setattr(__import__(__name__), "PACKAGE", str(fake))
  assert layering_violations() == [
      "facekp/core/bad.py:2: core imports facekp.train.loop; core may import only facekp.core"]
  (fake / "core" / "private.py").write_text("from facekp.core import bad\nbad._hidden()\n")
  assert private_name_uses([str(fake / "core" / "private.py")]) == [
      "facekp/core/private.py:2: uses bad._hidden"]
